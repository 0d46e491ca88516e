"""How many optimizer steps a run takes in all, for the learning-rate schedule and the progress bar."""

from __future__ import annotations

import math
from typing import Any


def planned_steps(trainer: Any) -> float:
    """Optimizer steps of the whole run, those done included (inf when it has no end).

    Lightning's estimate multiplies the first epoch's batch count by max_epochs. An epoch resumed with
    another batch size or number of devices counts differently from the epochs after it, so the data
    module counts that run itself (`steps_left`), unless limit_train_batches (a debugging option) cuts epochs.
    """
    estimate = trainer.estimated_stepping_batches
    steps_left = getattr(trainer.datamodule, "steps_left", None)
    limited = trainer.limit_train_batches not in (1, 1.0, None)
    if steps_left is None or limited or trainer.max_epochs in (None, -1) or not math.isfinite(estimate):
        return estimate
    left = steps_left(trainer.current_epoch, trainer.accumulate_grad_batches, trainer.max_epochs)
    if left is None:
        return estimate
    total = trainer.global_step + left
    return min(total, trainer.max_steps) if trainer.max_steps != -1 else total
