"""`AutoBatchSize`: `--data.batch_size auto`, the micro-batch chosen from the device's free memory and the
model's memory estimate (estimate/budget.py), once the data is set up (every rank, after the processes have
started). A callback because it decides for the trainer (the accumulation) from the model and the data;
the data module only receives the number.

It is the largest power of two whose estimated peak fits the free memory less a stated headroom, the
same on every rank (the smallest rank's choice). Resuming, the global batch (devices x micro-batch x
accumulation) stays the checkpoint's: the checkpoint's micro-batch when it fits, else the largest that fits
and divides it, with the accumulation that makes up the rest.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.callbacks.reference_logps import run_step_shape
from lit_lora.constants import MB
from lit_lora.estimate.budget import MAX_BATCH, batch_fit, free_bytes, headroom_text, no_batch_fits, usable_bytes
from lit_lora.estimate.memory import estimate_training_memory
from lit_lora.notes import print_note

AUTO = "auto"


class AutoBatchSize(Callback):
    """Chooses the batch of a data module whose `batch_size` is "auto" (it has `wants_batch_size()` and
    `use_batch_size(n)`), before any loader is built.

    Args:
        saved_layout: The data state of the checkpoint `fit` resumes from (its batch size, world size and
            accumulation), handed over by the CLI, which reads the checkpoint once.
    """

    def __init__(self, saved_layout: Optional[dict[str, int]] = None) -> None:
        self.saved_layout = saved_layout

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        data = trainer.datamodule
        if data is None or not getattr(data, "wants_batch_size", lambda: False)():
            return
        saved = self.saved_layout if stage == "fit" else None
        limit = batch_limit(data.rows(stage), trainer.world_size, trainer.val_check_interval)
        data.use_batch_size(choose_batch_size(trainer, pl_module, data.hparams.block_size, saved, limit))


def batch_limit(rows: int, world_size: int, val_check_interval: Any) -> int:
    """The largest batch `auto` may choose for `rows` rows: no batch larger than a rank's share of the data,
    nor so large that an epoch is shorter than an integer val_check_interval (`summary` applies it too)."""
    interval = val_check_interval if isinstance(val_check_interval, int) else 1
    return max(1, rows // world_size // max(1, interval))


def choose_batch_size(trainer: Any, module: Any, block_size: int, saved: Optional[dict[str, int]], limit: int) -> int:
    """The micro-batch for this run, at most `limit` (setting `trainer.accumulate_grad_batches` when resuming
    needs it); prints what it chose and why. `saved`: the checkpoint's data state when resuming."""
    device = trainer.strategy.root_device
    precision, gc = str(trainer.precision), bool(getattr(module, "gradient_checkpointing", False))
    shape = run_step_shape(trainer, module)
    free = free_bytes(device)
    usable = usable_bytes(free)
    fit = batch_fit(module.model, block_size, precision, gc, device.type, usable, min(limit, MAX_BATCH), shape)
    where = (f"{usable / MB:,.0f} MB usable of {free / MB:,.0f} MB free on {device} ({headroom_text()}), "
             f"block {block_size}, {precision}" + (f"; {shape.description}" if shape.description else ""))
    if not fit.largest:
        raise no_batch_fits(fit.peaks[1], where)
    world = trainer.world_size
    batch, why, global_batch = fit.power_of_two(), "the largest power of two that fits", None
    if saved and saved.get("batch_size"):
        old_batch, old_world = int(saved["batch_size"]), int(saved.get("world_size", 1))
        global_batch = old_world * old_batch * int(saved.get("accumulate", trainer.accumulate_grad_batches))
        sizes = [b for b in range(1, fit.largest + 1) if global_batch % (world * b) == 0] or [1]
        batch = old_batch if old_batch in sizes else max(sizes)
        why = ("the checkpoint's micro-batch, which fits" if batch == old_batch else
               f"the checkpoint's {old_batch} does not fit") + f"; the global batch stays {global_batch}"
    batch = _smallest_over_ranks(trainer, batch)
    if global_batch is not None:
        trainer.accumulate_grad_batches = max(1, global_batch // (world * batch))
        why += f" with accumulation {trainer.accumulate_grad_batches}"
    if trainer.is_global_zero:
        peak = estimate_training_memory(module.model, batch, block_size, precision, gc, device.type, shape).total
        print_note(f"data.batch_size auto: {batch} ({why}; estimated peak {peak / MB:,.1f} MB of {where})")
    return batch


def _smallest_over_ranks(trainer: Any, batch: int) -> int:
    if trainer.world_size == 1:
        return batch
    gathered = trainer.strategy.all_gather(torch.tensor(batch, device=trainer.strategy.root_device))
    return int(gathered.min())
