"""An early look at the learning rate: one line if the training loss rises over the first logging
intervals. A warning, not a stop (a non-finite loss stops the run, with the rate in use: callbacks.graceful_stop)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.notes import print_note
from lit_lora.settings import check_number
from lit_lora.training.schedule import current_lr

# A rise smaller than this fraction of the first interval's mean is noise, not a learning rate too high.
RISE = 0.01


class LossTrend(Callback):
    """Averages `train_loss` over each of the first `intervals` logging intervals (log_every_n_steps
    optimizer steps) of this process and says, once, if the last mean is above the first.

    The sums stay on the device; they are read once per interval, at the logging steps that read it anyway.

    Args:
        intervals: Logging intervals to compare (the first against the last); 0 turns the check off.
    """

    def __init__(self, intervals: int = 3) -> None:
        check_number("loss_trend.intervals", intervals, at_least=0, integer=True)
        self.intervals = intervals
        self._means: list[float] = []
        self._sum: Optional[torch.Tensor] = None
        self._count = 0
        self._last_step = 0
        self._watching = False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_step = trainer.global_step
        # Not a resumed run (its first intervals were checked when it started), rank zero only.
        self._watching = self.intervals > 0 and trainer.global_step == 0 and trainer.is_global_zero

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._watching or trainer.global_step == self._last_step:
            return  # done, or a micro-batch inside an accumulated step
        self._last_step = trainer.global_step
        loss = trainer.callback_metrics.get("train_loss")
        if loss is None:
            return
        self._sum = loss.detach() if self._sum is None else self._sum + loss.detach()
        self._count += 1
        if trainer.global_step % trainer.log_every_n_steps:
            return
        self._means.append(float(self._sum) / self._count)
        self._sum, self._count = None, 0
        if len(self._means) == self.intervals:
            self._watching = False
            peak = pl_module.hparams.get("learning_rate")
            note = rising_note(self._means, trainer.global_step, current_lr(trainer), peak)
            if note:
                print_note(note)


def rising_note(means: list[float], step: int, lr: Optional[float], peak: Optional[float]) -> Optional[str]:
    """The warning for the interval means `means` (the first against the last), or None."""
    first, last = means[0], means[-1]
    if not last > first * (1 + RISE):
        return None
    rate = f"learning rate {lr:.3g}" if lr is not None else "the learning rate in use"
    if peak is not None and lr is not None and abs(lr - peak) > 1e-12 * peak:
        rate += f" (peak {peak:.3g})"
    return (f"lit_lora: the training loss rose over the first {step} steps ({first:.4f} -> {last:.4f}, first "
            f"and last of {len(means)} logging intervals) at {rate}; if it keeps rising, lower --model.learning_rate")

