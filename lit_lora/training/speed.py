"""GPU speed-ups that are not the model's maths: TF32 matmuls and an opt-in `torch.compile` that leaves
parameter names (and so checkpoint keys) unchanged."""

from __future__ import annotations

from typing import Any, Optional

import torch

from lit_lora.errors import LitLoraError
from lit_lora.objectives.nll import output_head


def enable_tf32(device: torch.device) -> bool:
    """Let float32 matmuls use TensorFloat-32 on CUDA GPUs that have it (compute capability 8.0, Ampere, and
    newer): several times the float32 matmul speed for a 10-bit mantissa inside the product, which
    fine-tuning does not notice. Leaves a precision the user already chose alone, and CPUs untouched
    (the setting only acts on CUDA). Returns whether TF32 is on for `device`."""
    if device.type != "cuda":
        return False
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False
    if torch.get_float32_matmul_precision() == "highest":
        torch.set_float32_matmul_precision("high")
    return torch.get_float32_matmul_precision() != "highest"


def check_compile_options(options: Optional[dict[str, Any]]) -> None:
    """Bad `torch.compile` options fail here, in a line, not after the model has been loaded."""
    try:
        torch.compile(_identity, **(options or {}))
    except (TypeError, ValueError, RuntimeError) as err:
        raise LitLoraError(f"model.compile_options={options!r} rejected by torch.compile: {err}") from err


def compile_in_place(model: torch.nn.Module, options: Optional[dict[str, Any]] = None) -> torch.nn.Module:
    """`model.compile(**options)`: compiles the module's forward in place. `torch.compile(model)` would
    instead wrap it in an OptimizedModule whose state-dict keys all start with `_orig_mod.`, so its
    checkpoints would not load into an uncompiled model (or into PEFT) without renaming."""
    model.compile(**(options or {}))
    return model


def compile_target(model: torch.nn.Module) -> torch.nn.Module:
    """What `--model.compile` compiles: the backbone, which the chunked loss calls (`lit_lora.objectives.nll`) and so
    does the model's own forward; the whole model where the loss runs the full head."""
    parts = output_head(model)[0]
    return parts.backbone if parts is not None else model


def _identity(x: Any) -> Any:
    return x


def is_compiled(model: torch.nn.Module) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


def speed_up(model: torch.nn.Module, device: torch.device, tf32: bool, compile: bool,
             compile_options: Optional[dict[str, Any]] = None) -> None:
    """The module's speed settings on `device`: TF32 matmuls when `tf32`, and, when `compile`, the model
    compiled in place (once) with `compile_options` (None: torch's defaults)."""
    if tf32:
        enable_tf32(device)
    target = compile_target(model)
    if compile and not is_compiled(target):
        compile_in_place(target, compile_options)
