"""Stopping safely when asked: SIGTERM/SIGINT save a resumable checkpoint at the end of the current batch."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from lit_lora.notes import print_note


class GracefulStop(Callback):
    """SIGTERM (Lightning's handler notices it) or SIGINT/Ctrl-C (ours) ends the run within the current
    training or validation batch with a resumable `last.ckpt` and no further validation. Ctrl-C says so at
    once; a second Ctrl-C interrupts at once, without saving.

    In one process, both signals set Lightning's own stop flag: its loops then raise SIGTERMException after
    the current batch (training or validation), and this callback saves `last.ckpt` from `on_exception`. A
    validation that would start after the signal is not started. The checkpoint holds the training state
    after the last completed step; a run resumed from it skips the interrupted validation, as Lightning does
    for any checkpoint saved at a step's end.

    With several processes, the ranks may notice a signal at different batches, and saving is collective:
    one rank saving while another starts the next step would hang both. There Lightning decides: before
    each batch it broadcasts rank 0's SIGTERM flag and raises SIGTERMException on every rank together; this
    callback saves `last.ckpt` then, from `on_exception`. Ctrl-C on rank 0 is turned into that SIGTERM
    (Lightning's launcher passes it on to the other ranks); the other ranks leave Ctrl-C to rank 0.
    """

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: Any = None
        self._outside: Any = None  # the SIGINT handler from before the last fit
        self._previous_term: Any = None
        self._distributed = False
        self._rank = 0
        self._trainer: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.signal_name = None
        self._distributed = trainer.world_size > 1
        self._rank = trainer.global_rank
        self._trainer = trainer
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # After Lightning has installed its SIGTERM handler (it does so after on_fit_start).
        main = threading.current_thread() is threading.main_thread()
        if main and self._distributed and hasattr(trainer, "_signal_connector"):
            self._previous_term = signal.signal(signal.SIGTERM, self._sigterm_flag_only(trainer))

    @staticmethod
    def _sigterm_flag_only(trainer: Any) -> Any:
        """Lightning 2.6's own SIGTERM handler runs a broadcast inside the handler, wherever each rank happens
        to be; a rank that gets SIGTERM twice (from `kill` on the process group and again from Lightning's
        launcher) runs two, and every rank hangs. This one only records the signal, once, and passes it on
        to the launcher's child ranks; the broadcast Lightning makes before each batch does the rest."""

        def handler(signum: int, frame: Any) -> None:
            connector = trainer._signal_connector
            if connector.received_sigterm:
                return
            connector.received_sigterm = True
            launcher = trainer.strategy.launcher
            if launcher is not None and hasattr(launcher, "kill"):
                launcher.kill(signum)

        return handler

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._trainer is None:  # the fit is over (see _restore): Ctrl-C means what it meant before it
            outside = self._outside if callable(self._outside) else signal.default_int_handler
            signal.signal(signal.SIGINT, outside)
            outside(signum, frame)
            return
        if self._distributed and self._rank != 0:
            return  # rank 0 stops every rank (see the class docstring)
        self.signal_name = "SIGINT"
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._distributed:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # Lightning's loops check this flag after every training and validation batch.
        self._trainer._signal_connector.received_sigterm = True
        _say("lit_lora: received SIGINT; stopping after the current batch "
             "(Ctrl-C again stops at once, without saving)")

    def _noticed(self, trainer: Any) -> bool:
        if self.signal_name is None and trainer.received_sigterm:
            self.signal_name = "SIGTERM"
        return self.signal_name is not None

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._distributed and self._noticed(trainer):
            _stop()  # not a validation the run no longer needs: saved in on_exception

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and ((self._distributed and trainer.training)
                                                        or (not self._distributed and self._noticed(trainer))):
            self.signal_name = self.signal_name or "SIGTERM"
            self._save(trainer)
        self._restore()

    def _save(self, trainer: Any) -> None:
        callback = trainer.checkpoint_callback
        if trainer.sanity_checking or trainer.global_step == 0:
            if trainer.is_global_zero:
                print_note(f"received {self.signal_name} before the first training step; stopped, nothing to save")
            return
        if callback is not None and callback.dirpath:
            path = f"{callback.dirpath}/last.ckpt"
            if callback._last_global_step_saved < trainer.global_step:
                # weights_only=False: a resumable checkpoint (and Lightning does not log that it defaulted).
                trainer.save_checkpoint(path, weights_only=False)
                callback._last_global_step_saved = trainer.global_step
            if trainer.is_global_zero:
                print_note(f"received {self.signal_name}; saved {path} at step {trainer.global_step}. "
                           "Resume with --ckpt_path last")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            # Lightning's teardown, which runs after on_exception, puts back the handlers it found when the
            # fit started, this one among them: it then hands a later Ctrl-C to the handler from before.
            self._outside, self._previous, self._trainer = self._previous, None, None
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)
            self._previous_term = None


def _stop() -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    raise SIGTERMException()


def _say(line: str) -> None:
    """A note from a signal handler: the main thread may be inside a write to the same stream."""
    try:
        print_note(line)
    except RuntimeError:  # "reentrant call": write past the stream's buffer instead
        os.write(2, (line + "\n").encode())
