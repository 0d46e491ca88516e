"""Wrapping a base model with LoRA (new adapters, or an existing PEFT adapter to train further) and
turning on activation checkpointing for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_lora.errors import LitLoraError
from lit_lora.lora.parts import base_model, linear_module_names
from lit_lora.lora.settings import LoraSettings
from lit_lora.lora.targets import resolve_targets
from lit_lora.objectives.logps import REFERENCE_ADAPTER


def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap `model` in a PEFT LoRA model; only LoRA (and modules_to_save) parameters stay trainable. Without
    target_modules, the family's defaults (lora/targets.py)."""
    from peft import get_peft_model

    settings, _ = resolve_targets(settings, model)
    config = settings.to_peft_config(model)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        if "not found in the base model" in str(err) or "Target modules" in str(err):
            raise LitLoraError(
                f"model.lora.target_modules {settings.target_modules!r} match no module of the model; "
                f"its linear/Conv1D module names are {linear_module_names(model)}"
            ) from err
        raise


def check_adapter_dir(adapter_dir: str, option: str) -> Path:
    """The folder, if it holds a PEFT adapter; else a one-line error naming `option`."""
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise LitLoraError(f"{option} {adapter_dir!r} is not a PEFT adapter directory (no adapter_config.json)")
    return folder


def read_adapter_config(adapter_dir: str, option: str = "model.adapter_path") -> Any:
    """The adapter's PEFT `LoraConfig`, without its weights."""
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(check_adapter_dir(adapter_dir, option)))


def load_adapter_for_training(base: Any, adapter_dir: str, option: str = "model.adapter_path") -> Any:
    """Wrap `base` with an existing PEFT LoRA adapter (ours or anyone's), its weights trainable."""
    from peft import PeftModel

    check_adapter_dir(adapter_dir, option)
    try:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as err:
        raise LitLoraError(f"{option} {adapter_dir!r} does not fit the base model: {err}") from err


def load_reference_adapter(model: Any, adapter_dir: str, weights: bool = True) -> int:
    """Load the adapter in `adapter_dir` a second time into the PEFT `model`, frozen, under the name the
    reference policy switches to (`objectives.logps.REFERENCE_ADAPTER`): the policy a preference run starts
    from, kept while the first copy trains. Without `weights`, its shapes only (a model on the meta device).
    Returns its parameter count."""
    check_adapter_dir(adapter_dir, "model.adapter_path")
    if weights:
        model.load_adapter(adapter_dir, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    else:
        model.add_adapter(REFERENCE_ADAPTER, read_adapter_config(adapter_dir))
    reference = [p for name, p in model.named_parameters() if f".{REFERENCE_ADAPTER}." in name]
    for p in reference:
        p.requires_grad_(False)
        # The same dtype as the trained copy (float32, lora.build), so at step 0 both give the same numbers.
        p.data = p.data.float()
    return sum(p.numel() for p in reference)


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing that also trains adapters over a frozen base."""
    base = base_model(model)
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # With reentrant checkpointing a frozen embedding output would cut the graph; harmless otherwise.
    base.enable_input_require_grads()
