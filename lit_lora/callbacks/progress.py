"""The progress bar: Lightning's own (tqdm or rich), showing the loss and tok/s as of the last logging step
and the whole run's ETA."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Optional

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from lit_lora.callbacks.throughput import TokenThroughput
from lit_lora.training.steps import planned_steps


class RunBarMixin:
    """Progress-bar mixin: `train_loss` and `tok/s` as of the last logging step, the time left for the whole
    run (`eta`, from the measured step rate; validation time not included) and no version number.

    The loss is read from the device once per logging step, not at every refresh: Lightning reads
    `prog_bar=True` values after every step, which on a GPU makes the host wait for each step to finish.
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)  # type: ignore[misc]
        # The training data is set up by now, so this does not reload the dataloader.
        self._total_steps = planned_steps(trainer)
        self._loss_read_at: Optional[int] = None
        self._loss: Optional[float] = None

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        items.pop("v_num", None)
        step = trainer.global_step
        logging_step = step % trainer.log_every_n_steps == 0 or not trainer.training
        if logging_step and getattr(self, "_loss_read_at", None) != step:
            loss = trainer.callback_metrics.get("train_loss")
            self._loss_read_at, self._loss = step, (float(loss) if loss is not None else None)
        if getattr(self, "_loss", None) is not None:
            items["train_loss"] = round(self._loss, 4)
        throughput = next((c for c in trainer.callbacks if isinstance(c, TokenThroughput)), None)
        if throughput is not None and throughput.prog_bar and throughput.tokens_per_sec:
            items["tok/s"] = round(throughput.tokens_per_sec)
        rate = throughput.steps_per_sec if throughput is not None else None
        total = getattr(self, "_total_steps", None)
        if rate and total is not None and math.isfinite(total):
            items["eta"] = str(timedelta(seconds=int(max(0.0, total - trainer.global_step) / rate)))
        return items


class RunProgressBar(RunBarMixin, TQDMProgressBar):
    """Lightning's tqdm bar with the run's `eta`."""


class RunRichProgressBar(RunBarMixin, RichProgressBar):
    """Lightning's rich bar (its default when `rich` is installed) with the run's `eta`."""


def with_run_eta(bar: Any) -> Any:
    """The same bar with the run's ETA added, or None for a bar class the user chose themselves."""
    for plain, ours in ((TQDMProgressBar, RunProgressBar), (RichProgressBar, RunRichProgressBar)):
        if type(bar) is plain:
            # Not yet attached to a run: copying its state keeps every setting Lightning or the user gave it.
            new = ours.__new__(ours)
            new.__dict__.update(bar.__dict__)
            return new
    return None
