"""Which device a run or a command uses, decided in one place from the user's `accelerator`/`--device`."""

from __future__ import annotations

from typing import Any

import torch

from lit_lora.errors import LitLoraError


def accelerator_device(accelerator: Any) -> str:
    """The device type a Trainer `accelerator` setting means: "cuda" for gpu/cuda (or auto with a GPU
    visible), "cpu" for cpu (or auto without one), any other name as given (e.g. "mps")."""
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu" if name in ("auto", "cpu") else name


def resolve_device(device: str) -> torch.device:
    """`--device cpu|cuda|auto` as a torch.device; asking for CUDA where there is none is a one-line error."""
    if device not in ("cpu", "cuda", "auto"):
        raise LitLoraError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise LitLoraError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return torch.device(accelerator_device(device))


def default_precision(accelerator: Any) -> str:
    """bf16-mixed where a CUDA GPU supports it (half the activation memory, tensor cores), else fp32."""
    on_gpu = accelerator_device(accelerator) == "cuda" and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
