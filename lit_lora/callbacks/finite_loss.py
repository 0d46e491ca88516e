"""`FiniteLossStop`: a run whose training loss turns NaN/Inf stops before anything poisoned is saved."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.errors import LitLoraError
from lit_lora.training.schedule import current_lr


class FiniteLossGuard:
    """Stops a run whose training loss turns NaN/Inf before anything poisoned is saved.

    On the CPU the loss is read at once, before backward(): reading a CPU tensor costs nothing, and the
    weights are never updated. On a GPU, reading it every step would make the host wait for each step's
    kernels before queueing the next step; there the check stays on the device (no synchronisation) and
    is read at every logging step, before every checkpoint and at the end of training. The weights in
    memory may then have taken a few bad steps, but no checkpoint ever holds them.
    """

    def __init__(self) -> None:
        # None: decide from the loss's device (CPU: at once); True with several processes, which check
        # together. Tests set True to run the GPU path on a CPU.
        self.defer: Optional[bool] = None
        self._first_bad: Optional[torch.Tensor] = None  # step index of the first bad loss, -1 while none
        self._bad_value: Optional[torch.Tensor] = None
        # The learning rate in use, named in the error (set by the module that owns the optimizer).
        self.rate: Callable[[], Optional[float]] = lambda: None

    def observe(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach()
        defer = self.defer if self.defer is not None else loss.device.type != "cpu"
        if not defer:
            if not bool(torch.isfinite(loss)):
                raise _non_finite(float(loss), step, "stopped before updating weights", self.rate())
            return
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        first_now = (self._first_bad < 0) & ~torch.isfinite(loss)
        self._first_bad = torch.where(first_now, step, self._first_bad)
        self._bad_value = torch.where(first_now, loss, self._bad_value)

    def check(self, steps_done: int) -> None:
        """Raise if a loss seen so far was non-finite (when deferred: one read from the device)."""
        if self._first_bad is None:
            return
        first = int(self._first_bad)
        if first >= 0:
            when = f"noticed after step {steps_done} and stopped before saving a checkpoint"
            raise _non_finite(float(self._bad_value), first, when, self.rate())

    def check_everywhere(self, strategy: Any, steps_done: int) -> None:
        """`check` in every process together: one whose loss was non-finite tells the others (one collective),
        instead of raising alone while they wait for it in the next gradient all-reduce."""
        try:
            self.check(steps_done)
            error = None
        except LitLoraError as err:
            error = err
        if strategy.reduce_boolean_decision(error is not None, all=False) and error is None:
            error = LitLoraError(
                f"non-finite training loss in another process, noticed after step {steps_done}; stopped "
                "before saving a checkpoint. The last checkpoint written before it is intact"
            )
        if error is not None:
            raise error


def _non_finite(value: float, step: int, when: str, lr: Optional[float]) -> LitLoraError:
    rate = f" (learning rate {lr:.3g})" if lr is not None else ""
    return LitLoraError(
        f"non-finite training loss ({value}) at step {step + 1}{rate}; {when}. "
        "The last checkpoint written before it is intact; lower --model.learning_rate or check the data"
    )


class FiniteLossStop(Callback):
    """Watches the loss of every training step (`FiniteLossGuard`): before its backward pass, at each logging
    step, before each checkpoint and at the end of training."""

    def __init__(self) -> None:
        self.guard = FiniteLossGuard()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.guard.rate = lambda: current_lr(trainer)
        if trainer.world_size > 1 and self.guard.defer is None:
            # Checked at the points where all processes check together (FiniteLossGuard.check_everywhere).
            self.guard.defer = True

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self.guard.observe(loss, trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self.guard.check_everywhere(trainer.strategy, trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.guard.check_everywhere(trainer.strategy, trainer.global_step)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if trainer.training:  # never save weights a non-finite loss has updated
            self.guard.check_everywhere(trainer.strategy, trainer.global_step)
