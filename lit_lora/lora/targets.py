"""Default LoRA targets per model family: what `model.lora.target_modules` means when it is not given.

Our own table, not PEFT's: PEFT's mapping gives GPT-2 only `c_attn` (294,912 trainable parameters for GPT-2
small instead of the 811,008 of attention + projections) and lacks several of these families. Outside GPT-2
the table adapts every linear layer of the decoder blocks (attention and MLP), which is what QLoRA and the
peer tools recommend; the output head is never a target.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from lit_lora.lora.settings import LoraSettings

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],  # fused q/k/v, and both output projections (attention and MLP)
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],  # fused q/k/v and gate/up
}


def resolve_targets(lora: LoraSettings, model: Any) -> tuple[LoraSettings, Optional[str]]:
    """`lora` with its targets filled in for `model`'s family when none were given, and a line to print
    when the family is not in the table (None otherwise)."""
    if lora.target_modules is not None:
        return lora, None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = DEFAULT_TARGETS.get(model_type)
    if targets is None:
        note = (f"lit_lora: no default LoRA targets for model type {model_type!r}; adapting all-linear (every "
                "linear layer but the output head). Set --model.lora.target_modules to choose")
        return replace(lora, target_modules="all-linear"), note
    return replace(lora, target_modules=list(targets)), None
