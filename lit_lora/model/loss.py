"""The training loss: summed next-token NLL over the real target tokens (`lit_lora.nll`: chunked, and what
the memory estimate's dry run computes too), and its normalisation over the tokens of the whole optimizer
step (not a mean of micro-batch means, which would weigh a short micro-batch's tokens more than a long one's)."""

from __future__ import annotations

from typing import Optional

import torch

from lit_lora.nll import model_nll, token_nll

__all__ = ["model_nll", "step_loss", "token_nll"]


def step_loss(
    nll: torch.Tensor, n_tokens: torch.Tensor, step_tokens: Optional[int], accumulate: int, world: int
) -> torch.Tensor:
    """The loss to backpropagate for one micro-batch whose summed NLL over `n_tokens` targets is `nll`.

    Without `step_tokens`: the mean over this micro-batch's target tokens. With it (the target tokens of the
    whole optimizer step, every micro-batch of every process): the micro-batch's share of the step's token
    mean. Lightning divides each micro-batch's loss by `accumulate` and DDP averages the gradients over the
    processes, so this scales back by both.
    """
    if step_tokens is None:
        return nll / n_tokens.clamp(min=1)
    return nll * (accumulate * world / max(step_tokens, 1))
