"""The optimizer and its learning-rate schedule: AdamW, a linear warm-up, then a cosine decay to a floor."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional

import torch

from lit_lora.errors import LitLoraError
from lit_lora.pretrained.quantization import require_bitsandbytes
from lit_lora.settings import check_number

# The warm-up when neither model.warmup_steps nor model.warmup_ratio is set: a fraction of the run, so a
# 100-step run does not spend its budget warming up (benchmarks/quality.py; docs/models-and-training.md).
DEFAULT_WARMUP_RATIO = 0.05


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer and schedule options of `LitLora` (their defaults and `--help` text are its own), typed,
    for the builders here. Checked when made: one line for a value out of range."""

    learning_rate: float
    weight_decay: float
    betas: tuple[float, float]
    optimizer: str
    warmup_steps: Optional[int]
    warmup_ratio: Optional[float]
    min_lr_ratio: float

    def __post_init__(self) -> None:
        check_number("model.learning_rate", self.learning_rate, above=0)
        check_number("model.weight_decay", self.weight_decay, at_least=0)
        for beta in self.betas:
            check_number("model.betas", beta, at_least=0, below=1)
        check_warmup(self.warmup_steps, self.warmup_ratio)
        check_number("model.min_lr_ratio", self.min_lr_ratio, at_least=0, at_most=1)

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "OptimizerSettings":
        values = {f.name: hp[f.name] for f in fields(cls)}
        return cls(**{**values, "betas": tuple(values["betas"])})


def check_optimizer_device(name: str, device_type: str) -> None:
    """Paged AdamW pages its state between a CUDA GPU and host memory: one line anywhere else."""
    if name != "paged_adamw":
        return
    if device_type != "cuda":
        raise LitLoraError(f"model.optimizer='paged_adamw' pages optimizer state between a CUDA GPU and host "
                           f"memory; this run is on {device_type!r}: use model.optimizer adamw")
    require_bitsandbytes("paged_adamw", "model.optimizer")


def check_warmup(warmup_steps: Optional[int], warmup_ratio: Optional[float]) -> None:
    if warmup_steps is not None:
        check_number("model.warmup_steps", warmup_steps, at_least=0, integer=True)
    if warmup_ratio is not None:
        check_number("model.warmup_ratio", warmup_ratio, at_least=0, below=1)
    if warmup_steps is not None and warmup_ratio is not None:
        raise LitLoraError(f"model.warmup_steps={warmup_steps} and model.warmup_ratio={warmup_ratio} are both "
                           "set; set one of them (steps, or a fraction of the run's steps)")


def warmup_length(warmup_steps: Optional[int], warmup_ratio: Optional[float], total_steps: Optional[int]) -> int:
    """Warm-up steps: `warmup_steps` if set, else the ratio (default DEFAULT_WARMUP_RATIO) of the run's
    steps, rounded up as Hugging Face's `get_warmup_steps` does; none for a run with no known end."""
    if warmup_steps is not None:
        return warmup_steps
    ratio = DEFAULT_WARMUP_RATIO if warmup_ratio is None else warmup_ratio
    return math.ceil(ratio * total_steps) if total_steps else 0


def kept_length(planned: Optional[int], started_with: Optional[int]) -> tuple[Optional[int], Optional[str]]:
    """The schedule's total steps for a run that plans `planned` and resumes one whose schedule had
    `started_with` (None: a fresh run, or a checkpoint that did not record it), and a note if they differ.
    Keeping the first length keeps the learning rate of every step already taken and the same decay."""
    if started_with is None or started_with == planned:
        return planned, None
    return started_with, (f"lit_lora: the learning-rate schedule keeps the {started_with} steps the run started with "
                          f"(these settings plan {planned if planned is not None else 'an unbounded run'})")


def warmup_cosine(step: int, warmup_steps: int, total_steps: Optional[int], min_lr_ratio: float) -> float:
    """The factor on the peak learning rate at optimizer step `step` (0-based).

    Warm-up: (step + 1) / (warmup_steps + 1), as nanoGPT does. Then a cosine from 1 to `min_lr_ratio` over the
    remaining steps. With no known total (an unbounded run), it stays at 1 after the warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def current_lr(trainer: Any) -> Optional[float]:
    """The learning rate the trainer's (first) optimizer is using now, or None before it has one."""
    optimizers = getattr(trainer, "optimizers", None) if trainer is not None else None
    return float(optimizers[0].param_groups[0]["lr"]) if optimizers else None


def optimizer_and_schedule(params: list[torch.nn.Parameter], hp: OptimizerSettings,
                           total_steps: Callable[[], Optional[int]]) -> dict:
    """AdamW over `params` with the settings `hp`, stepped every optimizer step by the schedule.
    `total_steps()` is read when the schedule runs: the run's length is known only once training starts."""
    # PyTorch's fused AdamW (CUDA, and CPU since torch 2.4) updates all LoRA tensors in one kernel
    # instead of ~10 Python-level ops per tensor: GPT-2 small's 72 LoRA tensors on this CPU,
    # 10.3 ms -> 1.6 ms per step.
    fused = bool(params) and all(p.device.type in ("cuda", "cpu") for p in params)
    try:
        if hp.optimizer == "paged_adamw":  # QLoRA's: state pages to host memory when the GPU is short
            import bitsandbytes

            optimizer = bitsandbytes.optim.PagedAdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay,
                                                      betas=tuple(hp.betas))
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay,
                                          betas=tuple(hp.betas), fused=fused or None)
    except (ValueError, TypeError) as err:  # our checks come first; this names what torch still refuses
        raise LitLoraError(f"model.learning_rate/weight_decay/betas rejected by torch.optim.AdamW: {err}") from err

    def factor(step: int) -> float:
        total = total_steps()
        warmup = warmup_length(hp.warmup_steps, hp.warmup_ratio, total)
        return warmup_cosine(step, warmup, total, hp.min_lr_ratio)

    optimizer.register_load_state_dict_post_hook(lambda opt: _settings_in_use(opt, hp))
    scheduler = SettingsSchedule(optimizer, factor, lambda: hp.learning_rate)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _settings_in_use(optimizer: torch.optim.Optimizer, hp: OptimizerSettings) -> None:
    """After a checkpoint's optimizer state loads: its parameter groups take this run's weight decay and
    betas (torch restores the saved ones), so a resumed run uses what its hparams.yaml records."""
    for group in optimizer.param_groups:
        group["weight_decay"] = hp.weight_decay
        group["betas"] = tuple(hp.betas)


class SettingsSchedule(torch.optim.lr_scheduler.LambdaLR):
    """The warm-up/cosine LambdaLR whose peak is the run's `model.learning_rate`, also after a resume: the
    restored state keeps its step count and the new peak replaces the saved one. The warm-up and floor are
    read from the settings at every step, so they follow a resumed run's settings as they are."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float],
                 peak: Callable[[], float]) -> None:
        self._peak = peak
        self._recompute = False
        super().__init__(optimizer, factor)
        optimizer.register_step_pre_hook(lambda *_: self._rate_in_use())

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in ("_peak", "_recompute"):  # this run's settings, not state: a checkpoint holds plain values
            state.pop(key, None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        peak = float(self._peak())
        for group, saved_peak in zip(self.optimizer.param_groups, self.base_lrs):
            # The restored rate is the saved peak times this step's factor: the same point at the new peak
            # (exact once the run's length is known, at the first step: `_rate_in_use`).
            group["lr"] = group["lr"] * peak / saved_peak if saved_peak else peak
            group["initial_lr"] = peak
        self.base_lrs = [peak] * len(self.optimizer.param_groups)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self._recompute = True

    def _rate_in_use(self) -> None:
        """Before the first step after a restore: this step's rate from this run's settings."""
        if not self._recompute:
            return
        self._recompute = False
        for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
