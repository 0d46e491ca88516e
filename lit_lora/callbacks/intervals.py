"""When the monitoring callbacks log, and at which step: shared so every `*/` tag lines up with
`train_loss` and `lr-AdamW` on TensorBoard's x axis."""

from __future__ import annotations

from typing import Any, Optional


def log_metrics(trainer: Any, metrics: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def batch_step(trainer: Any) -> int:
    """The x of a batch's metrics after its optimizer step: the step Lightning logs train_loss and lr-AdamW at."""
    return max(0, trainer.global_step - 1)


def should_log(trainer: Any, every: Optional[int], last: int) -> bool:
    """Whether this optimizer step is a logging step (every `every` steps, or the trainer's interval)."""
    every = every or trainer.log_every_n_steps or 1
    step = trainer.global_step
    return step != last and step > 0 and (step % every == 0 or trainer.should_stop)
