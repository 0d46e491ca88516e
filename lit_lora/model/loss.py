"""The training loss: summed next-token NLL over the real target tokens, and its normalisation over the
tokens of the whole optimizer step (pitfall 8: not a mean of micro-batch means)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lit_lora.constants import IGNORE_INDEX


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood and the number of predicted tokens.

    logits: (B, T, V); labels: (B, T), -100 where nothing is predicted (prompt, padding).
    """
    # Shift the labels, not the logits: slicing the (B, T, V) logits copies them, and their gradient, on
    # every step. Position t predicts labels[:, t + 1]; the last position predicts nothing (-100).
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    nll = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll, (targets != IGNORE_INDEX).sum()


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
