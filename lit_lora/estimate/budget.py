"""Will it fit: a device's memory budget, and the largest batch whose estimated peak (estimate/memory.py)
fits it. `--data.batch_size auto` and `summary --memory_gb` read these.

We compute the batch before training; HF Trainer's `auto_find_batch_size` instead retries after each
out-of-memory error, which costs a failed step per try and leaves the allocator fragmented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from lit_lora.constants import MB
from lit_lora.errors import LitLoraError
from lit_lora.estimate.memory import estimate_training_memory
from lit_lora.objectives.base import StepShape

# Kept free of the device's free memory: the estimate counts live tensors only, not the allocator's rounding
# and fragmentation, cuBLAS/NCCL workspaces or kernels loaded on first use.
HEADROOM_FRACTION = 0.10
HEADROOM_BYTES = 512 * MB
# The largest batch `auto` tries: beyond it a step is long and accumulation is the better tool.
MAX_BATCH = 4096


def headroom_text() -> str:
    return f"{HEADROOM_FRACTION:.0%} + {HEADROOM_BYTES / MB:,.0f} MB kept free"


def usable_bytes(free: int) -> int:
    """What a run may plan to use of `free` bytes."""
    return max(0, int(free * (1 - HEADROOM_FRACTION)) - HEADROOM_BYTES)


def free_bytes(device: torch.device) -> int:
    """Free memory of `device`: the CUDA driver's count on a GPU, the OS's available RAM on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    raise LitLoraError(f"data.batch_size auto reads the free memory of CUDA GPUs and CPUs, not of device "
                       f"{device.type!r}; give data.batch_size a number")


@dataclass(frozen=True)
class BatchFit:
    largest: int  # the largest batch whose estimate fits; 0 if batch 1 does not
    peaks: dict[int, int]  # estimated peak bytes of every batch size tried

    def power_of_two(self) -> int:
        """The largest power of two that fits (0 if none): kernels and the global batch like them."""
        return 1 << (self.largest.bit_length() - 1) if self.largest else 0


def largest_batch(peak: Callable[[int], int], budget: int, limit: int = MAX_BATCH) -> BatchFit:
    """The largest batch b <= `limit` with `peak(b) <= budget`, for a `peak` that grows with b.

    Beyond a few samples the peak is linear in b (activations per sample on top of weights and one loss
    chunk), so the line through batches 4 and 8 lands next to the answer and a few estimates settle it
    exactly; each estimate of a large batch takes longer (more loss chunks), so few are made.
    """
    peaks: dict[int, int] = {}

    def fits(b: int) -> bool:
        if b not in peaks:
            peaks[b] = peak(b)
        return peaks[b] <= budget

    fit, fail = 0, limit + 1  # the largest batch known to fit, the smallest known not to
    for b in (1, 4, 8):
        b = min(b, limit)
        if fits(b):
            fit = b
        else:
            fail = b
            break
    while fail - fit > 1:
        known = sorted(b for b in peaks if peaks[b] <= budget)[-2:]
        guess = (fit + fail) // 2
        if len(known) == 2 and fail == limit + 1:  # still unbounded above: follow the line, then step past it
            b, slope = known[1], max(1, (peaks[known[1]] - peaks[known[0]]) / (known[1] - known[0]))
            guess = min(limit, b + max(1, int((budget - peaks[b]) / slope)))
        elif fail <= limit and fit >= 1:  # bracketed: interpolate inside (fit, fail)
            slope = max(1, (peaks[fail] - peaks[fit]) / (fail - fit))
            guess = min(fail - 1, max(fit + 1, fit + int((budget - peaks[fit]) / slope)))
        if fits(guess):
            fit = guess
            if guess == limit:
                break
        else:
            fail = guess
    return BatchFit(fit, peaks)


def batch_fit(model: Any, block: int, precision: str, gradient_checkpointing: bool, device_type: str, budget: int,
              limit: int = MAX_BATCH, shape: StepShape = StepShape()) -> BatchFit:
    """`largest_batch` for training `model` (the PEFT model) at this block, precision and checkpointing, with
    `shape` the objective's sequences per row (`Objective.step_shape()`)."""
    def peak(batch: int) -> int:
        return estimate_training_memory(model, batch, block, precision, gradient_checkpointing, device_type,
                                        shape).total

    return largest_batch(peak, budget, limit)


def no_batch_fits(peak_of_one: int, where: str) -> LitLoraError:
    """The error of `--data.batch_size auto` when even batch 1 is estimated above the budget `where`."""
    return LitLoraError(
        f"data.batch_size auto: even batch 1 needs an estimated {peak_of_one / MB:,.0f} MB, more than the {where}; "
        "turn on --model.gradient_checkpointing, hold the base in --model.base_dtype bfloat16, or lower "
        "--data.block_size")


def parse_memory_gb(value: Optional[str]) -> Optional[int]:
    """`--memory_gb` in bytes (GiB, as nvidia-smi's MiB count them: an 8 GB card is 8), None for none or for
    "gpu" (the visible GPU's free memory); a line if it is neither."""
    if value is None or value == "gpu":
        return None
    try:
        gb = float(value)
    except ValueError:
        gb = float("nan")
    if not 0 < gb < 100_000:
        raise LitLoraError(f"--memory_gb must be a number of GB above 0 (an 8 GB card: 8) or gpu, got {value!r}")
    return int(gb * 2**30)
