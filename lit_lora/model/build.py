"""Building the model `LitLora` trains: the base causal LM, wrapped with new LoRA adapters or an existing
PEFT adapter, LoRA weights in float32, activation checkpointing if asked for."""

from __future__ import annotations

from typing import Any, Mapping

from lightning.pytorch.utilities import rank_zero_only

from lit_lora.hub import load_base_model
from lit_lora.lora.settings import LoraSettings
from lit_lora.lora.targets import resolve_targets
from lit_lora.lora.wrap import apply_lora, enable_checkpointing, load_adapter_for_training
from lit_lora.measure.host import host_memory_mb
from lit_lora.nll import output_head


def build_peft_model(hp: Mapping[str, Any]) -> tuple[Any, LoraSettings, dict[str, float]]:
    """(PEFT model in train mode, the LoRA settings it has, host RSS in MB after loading and after LoRA).

    `hp` holds `LitLora`'s hyperparameters. With `adapter_path` the adapter's own settings replace `lora`.
    """
    base = load_base_model(
        hp["model_name_or_path"], hp["model_config"], hp["base_dtype"], hp["attn_implementation"],
        hp["trust_remote_code"],
    )
    memory_marks = {"after_model_load": host_memory_mb()[0]}
    if hp["adapter_path"]:
        model = load_adapter_for_training(base, hp["adapter_path"])
        lora = LoraSettings.from_peft_config(model.peft_config["default"])
    else:
        lora, note = resolve_targets(LoraSettings.coerce(hp["lora"]), base)
        if note and rank_zero_only.rank == 0:
            print(note)
        model = apply_lora(base, lora)
    # LoRA weights and optimizer state stay float32 even when the frozen base is bf16/fp16.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    head_note = output_head(model)[1]
    if head_note and rank_zero_only.rank == 0:
        print(head_note)
    if hp["gradient_checkpointing"]:
        enable_checkpointing(model)
    memory_marks["after_lora"] = host_memory_mb()[0]
    # from_pretrained returns eval mode, and Lightning keeps each module's mode: without this the base
    # model's dropout would silently stay off during training.
    return model.train(), lora, memory_marks
