"""Stopping safely: SIGTERM/SIGINT save a resumable checkpoint at the end of the current batch; a
non-finite loss stops the run before anything poisoned is saved."""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.errors import LitLoraError


def check_finite_loss(loss: torch.Tensor, step: int) -> None:
    """Raise before backward() on NaN/Inf, so no optimizer step and no checkpoint sees the bad state."""
    if not bool(torch.isfinite(loss)):
        raise LitLoraError(
            f"non-finite training loss ({float(loss)}) at step {step + 1}; stopped before updating weights. "
            "The last checkpoint written before it is intact; lower --model.learning_rate or check the data"
        )


class GracefulStop(Callback):
    """SIGTERM (Lightning's handler notices it) or SIGINT/Ctrl-C (ours) ends the run after the current
    training batch with a resumable `last.ckpt`. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.signal_name = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.signal_name = "SIGINT"
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.signal_name is None and trainer.received_sigterm:
            self.signal_name = "SIGTERM"
        if self.signal_name is None:
            return
        callback = trainer.checkpoint_callback
        if callback is not None and callback.dirpath:
            path = f"{callback.dirpath}/last.ckpt"
            if callback._last_global_step_saved < trainer.global_step:
                trainer.save_checkpoint(path)
                callback._last_global_step_saved = trainer.global_step
            if trainer.is_global_zero:
                print(
                    f"lit_lora: received {self.signal_name}; saved {path} at step {trainer.global_step}. "
                    "Resume with --ckpt_path last",
                    flush=True,
                )
        # Ends the loop cleanly after this batch (for SIGTERM Lightning then raises SIGTERMException).
        trainer.should_stop = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
