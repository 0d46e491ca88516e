"""`summary`'s memory questions: which batch `--data.batch_size auto` would choose, and "will it fit?" for
the configured model (and, for a GPT-2, each published GPT-2 size) on a card of `--memory_gb` GB (or the
visible GPU), with the run's other settings.

    python -m lit_lora.cli summary --config conf/gpt2/lora.yaml --trainer.accelerator gpu --memory_gb 8
"""

from __future__ import annotations

from typing import Any, Optional

from lit_lora.constants import MB
from lit_lora.errors import LitLoraError
from lit_lora.estimate.budget import MAX_BATCH, batch_fit, free_bytes, headroom_text, no_batch_fits, usable_bytes
from lit_lora.estimate.memory import estimate_training_memory
from lit_lora.objectives.base import StepShape

# The published GPT-2 shapes (their config.json files: n_embd, n_layer, n_head; all 1,024 positions).
GPT2_SIZES = {
    "gpt2": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}


def memory_budget(device: str, memory_bytes: Optional[int]) -> Optional[tuple[int, str]]:
    """(usable bytes, where they come from): `--memory_gb`, else the visible GPU's or this machine's free
    memory; None for a GPU run on a machine without one and no size in GB."""
    import torch

    if memory_bytes is not None:
        return usable_bytes(memory_bytes), f"{memory_bytes / 2**30:g} GB of device memory"
    if device == "cuda" and not torch.cuda.is_available():
        return None
    free = free_bytes(torch.device(device))
    return usable_bytes(free), f"{free / MB:,.0f} MB free on {device}"


def auto_batch_line(model: Any, block: int, precision: str, gc: bool, device: str,
                    budget: Optional[tuple[int, str]], limit: Optional[int],
                    shape: StepShape = StepShape()) -> tuple[int, str]:
    """The batch `fit` would choose for `--data.batch_size auto` here, and the line saying so. `limit`: fit's
    cap from the training data (`auto_batch.batch_limit`), None where the data could not be read; `shape`:
    what the objective runs per batch row."""
    if budget is None:
        raise LitLoraError("--trainer.accelerator gpu with no GPU here: give the card's size (e.g. --memory_gb 8) for "
                           "data.batch_size auto or --memory_gb gpu")
    fit = batch_fit(model, block, precision, gc, device, budget[0], min(limit or MAX_BATCH, MAX_BATCH), shape)
    if not fit.largest:
        raise no_batch_fits(fit.peaks[1], f"{budget[0] / MB:,.0f} MB usable of {budget[1]} ({headroom_text()})")
    batch = fit.power_of_two()
    capped = (f"; at most {limit}, as the training data allows" if limit is not None else
              "; the training files were not read, so fit may choose less for a small data set")
    return batch, (f"data.batch_size auto: {batch} (the largest power of two that fits {budget[0] / MB:,.0f} MB "
                   f"usable of {budget[1]}, {headroom_text()}{capped}"
                   + (f"; {shape.description})" if shape.description else ")"))


def fit_table(models: list[tuple[str, Any]], batch: int, block: int, precision: str, gc: bool, device: str,
              budget: tuple[int, str], shape: StepShape = StepShape()) -> list[str]:
    """For each (name, LoRA model): its estimated peak at this batch, whether it fits, and the largest batch
    that does."""
    lines = [f"will it fit on {budget[1]} ({budget[0] / MB:,.0f} MB usable, {headroom_text()}), "
             f"block {block}, {precision}, gradient checkpointing {'on' if gc else 'off'}:"]
    width = max(12, *(len(name) for name, _ in models))
    for name, model in models:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        peak = estimate_training_memory(model, batch, block, precision, gc, device, shape).total
        fit = batch_fit(model, block, precision, gc, device, budget[0], shape=shape)
        verdict = "fits" if peak <= budget[0] else "does not fit"
        largest = f"largest batch {fit.largest}" if fit.largest else "not even batch 1"
        lines.append(f"  {name:<{width}} {params:>6,.0f}M parameters: batch {batch} needs {peak / MB:>8,.1f} MB, "
                     f"{verdict}; {largest}")
    return lines
