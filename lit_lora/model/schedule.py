"""The learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math
from typing import Optional


def warmup_cosine(step: int, warmup_steps: int, total_steps: Optional[int], min_lr_ratio: float) -> float:
    """The factor on the peak learning rate at optimizer step `step` (0-based).

    Warm-up: (step + 1) / (warmup_steps + 1), as nanoGPT does. Then a cosine from 1 to `min_lr_ratio` over the
    remaining steps. With no known total (an unbounded run), it stays at 1 after the warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
