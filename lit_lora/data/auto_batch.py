"""`--data.batch_size auto`: the micro-batch chosen from the device's free memory and the model's memory
estimate (measure/fit.py), when the data module is set up (every rank, after the processes have started).

It is the largest power of two whose estimated peak fits the free memory less a stated headroom, the
same on every rank (the smallest rank's choice). Resuming, the global batch (devices x micro-batch x
accumulation) stays the checkpoint's: the checkpoint's micro-batch when it fits, else the largest that fits
and divides it, with the accumulation that makes up the rest.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lit_lora.constants import MB
from lit_lora.errors import LitLoraError
from lit_lora.measure.fit import MAX_BATCH, batch_fit, free_bytes, headroom_text, no_batch_fits, usable_bytes
from lit_lora.measure.memory import estimate_training_memory
from lit_lora.notes import print_note

AUTO = "auto"


def batch_size_for(trainer: Any, rows: int, block_size: int, resume_checkpoint: Optional[str], key: str) -> int:
    """The data module's `auto` batch for `rows` training (or evaluation) rows; `key`: its section in the
    checkpoint `resume_checkpoint` that fit resumes from."""
    if trainer is None:
        raise LitLoraError("data.batch_size auto needs the trainer (run it through the CLI or Trainer.fit)")
    saved = saved_data_state(resume_checkpoint, key) if trainer.state.fn == "fit" else None
    return choose_batch_size(trainer, block_size, saved, batch_limit(rows, trainer.world_size,
                                                                     trainer.val_check_interval))


def batch_limit(rows: int, world_size: int, val_check_interval: Any) -> int:
    """The largest batch `auto` may choose for `rows` rows: no batch larger than a rank's share of the data,
    nor so large that an epoch is shorter than an integer val_check_interval (`summary` applies it too)."""
    interval = val_check_interval if isinstance(val_check_interval, int) else 1
    return max(1, rows // world_size // max(1, interval))


def choose_batch_size(trainer: Any, block_size: int, saved: Optional[dict[str, int]], limit: int) -> int:
    """The micro-batch for this run, at most `limit` (setting `trainer.accumulate_grad_batches` when resuming
    needs it); prints what it chose and why. `saved`: the checkpoint's data state when resuming."""
    module = trainer.lightning_module
    device = trainer.strategy.root_device
    precision, gc = str(trainer.precision), bool(getattr(module, "gradient_checkpointing", False))
    free = free_bytes(device)
    usable = usable_bytes(free)
    fit = batch_fit(module.model, block_size, precision, gc, device.type, usable, min(limit, MAX_BATCH))
    where = (f"{usable / MB:,.0f} MB usable of {free / MB:,.0f} MB free on {device} ({headroom_text()}), "
             f"block {block_size}, {precision}")
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
        peak = estimate_training_memory(module.model, batch, block_size, precision, gc, device.type).total
        print_note(f"data.batch_size auto: {batch} ({why}; estimated peak {peak / MB:,.1f} MB of {where})")
    return batch


def _smallest_over_ranks(trainer: Any, batch: int) -> int:
    if trainer.world_size == 1:
        return batch
    gathered = trainer.strategy.all_gather(torch.tensor(batch, device=trainer.strategy.root_device))
    return int(gathered.min())


def saved_data_state(ckpt_path: Optional[str], key: str) -> Optional[dict[str, int]]:
    """The data module's state in the checkpoint `fit` resumes from (None when it starts fresh)."""
    if not ckpt_path:
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return checkpoint.get(key) or None
