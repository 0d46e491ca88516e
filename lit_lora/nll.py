"""The next-token negative log-likelihood: the loss training computes (model/loss.py) and the one the
memory estimate's dry run replays (measure/dry_run.py), so both run the same kernels."""

from __future__ import annotations

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
