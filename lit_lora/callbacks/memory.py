"""`MemoryMonitor`: host and CUDA memory in the logger, and the measured peak beside the estimate."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.callbacks.intervals import batch_step, log_metrics, should_log
from lit_lora.callbacks.reference_logps import run_step_shape
from lit_lora.constants import MB
from lit_lora.estimate.memory import estimate_training_memory
from lit_lora.host_memory import device_memory_mb, memory_metrics
from lit_lora.notes import print_note
from lit_lora.settings import check_number
from lit_lora.training.contracts import TrainedModule, TrainingData


class MemoryMonitor(Callback):
    """Logs memory to the logger: host resident and peak resident memory everywhere; on CUDA also allocated,
    reserved, peak allocated (reset every epoch) and free/total device memory.

    Also logged once: host RSS after the base model loaded and after LoRA was applied (the model is built on
    the host), device memory after the first training forward, and the `summary` estimate of peak memory;
    on CUDA the measured peak is printed next to the estimate after the first logged steps.
    """

    def __init__(self, log_every_n_steps: Optional[int] = None) -> None:
        """
        Args:
            log_every_n_steps: Log every this many optimizer steps; default: the trainer's log_every_n_steps.
        """
        if log_every_n_steps is not None:
            check_number("memory.log_every_n_steps", log_every_n_steps, at_least=1, integer=True)
        self.log_every_n_steps = log_every_n_steps
        self._last = -1
        self._forward_seen = False
        self._compared = False
        self.estimate_mb: Optional[float] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Here, not in on_fit_start: a resumed run knows its global step only now.
        self._forward_seen = self._compared = False
        step = trainer.global_step
        marks = pl_module.memory_marks if isinstance(pl_module, TrainedModule) else {}
        metrics = {f"memory/{name}_mb": value for name, value in marks.items()}
        metrics["memory/at_train_start_mb"] = device_memory_mb(pl_module.device)
        estimate = _estimate(trainer, pl_module)
        if estimate is not None:
            self.estimate_mb = estimate.total / MB
            metrics["memory/estimated_peak_mb"] = self.estimate_mb
            metrics["memory/estimated_static_mb"] = estimate.static / MB
        log_metrics(trainer, metrics, step)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        if not self._forward_seen:  # activations of the first step are all alive now
            self._forward_seen = True
            metrics = {"memory/after_first_forward_mb": device_memory_mb(pl_module.device)}
            log_metrics(trainer, metrics, trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not should_log(trainer, self.log_every_n_steps, self._last):
            return
        self._last = trainer.global_step
        metrics = memory_metrics(pl_module.device)
        log_metrics(trainer, metrics, batch_step(trainer))
        if not self._compared and "memory/peak_allocated_mb" in metrics and self.estimate_mb and trainer.is_global_zero:
            self._compared = True
            print_note(f"peak GPU memory {metrics['memory/peak_allocated_mb']:,.0f} MB allocated "
                       f"(estimated {self.estimate_mb:,.0f} MB; reserved {metrics['memory/reserved_mb']:,.0f} MB)")


def _estimate(trainer: Any, pl_module: Any) -> Any:
    """`summary`'s estimate for this run, or None when the module or data module is not one of ours."""
    data = trainer.datamodule
    if not isinstance(pl_module, TrainedModule) or not isinstance(data, TrainingData):
        return None
    try:
        return estimate_training_memory(
            pl_module.model,
            batch_size=data.batch_size,
            block_size=pl_module.block_size,
            precision=str(trainer.precision),
            gradient_checkpointing=pl_module.gradient_checkpointing,
            device_type=pl_module.device.type,
            shape=run_step_shape(trainer, pl_module),
        )
    except Exception:  # the summary already said the dry run failed; nothing to compare against
        return None
