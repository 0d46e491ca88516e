"""Building the model `LitLora` trains: the base causal LM, wrapped with new LoRA adapters or an existing
PEFT adapter, LoRA weights in float32, activation checkpointing if asked for."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping, Optional

import torch

from lightning.pytorch.utilities import rank_zero_only

from lit_lora.errors import LitLoraError
from lit_lora.host_memory import host_memory_mb
from lit_lora.lora.plain_lora import CONVERTIBLE_INITS, initial_lora_weights
from lit_lora.lora.settings import LoraSettings
from lit_lora.lora.targets import resolve_targets
from lit_lora.lora.wrap import (apply_lora, enable_checkpointing, load_adapter_for_training, load_reference_adapter,
                                read_adapter_config)
from lit_lora.notes import print_note
from lit_lora.objectives.nll import output_head
from lit_lora.pretrained.hub import load_base_model
from lit_lora.pretrained.quantization import bnb_config, check_quantization


_WITHOUT_WEIGHTS: ContextVar[bool] = ContextVar("lit_lora_without_weights", default=False)


@contextmanager
def without_weights() -> Iterator[None]:
    """Models built inside are on the meta device, from their config alone: shapes and counts, no weights
    read or allocated (`summary` of a 1.5B model in seconds)."""
    token = _WITHOUT_WEIGHTS.set(True)
    try:
        with torch.device("meta"):  # LoRA's new weights too
            yield
    finally:
        _WITHOUT_WEIGHTS.reset(token)


@dataclass(frozen=True)
class ModelSettings:
    """The options of `LitLora` that decide the network it trains (their defaults and `--help` text are
    its own), typed, for `build_peft_model`."""

    model_name_or_path: str
    model_config: Optional[dict[str, Any]]
    base_dtype: Optional[str]
    attn_implementation: Optional[str]
    trust_remote_code: bool
    quantization: Optional[str]
    quantization_options: Optional[dict[str, Any]]
    adapter_path: Optional[str]
    gradient_checkpointing: bool
    lora: LoraSettings
    base_dropout: Optional[float] = None

    tokenizer_name_or_path: Optional[str] = None

    def __post_init__(self) -> None:
        check_quantization(self.quantization, self.quantization_options)
        if self.model_config is not None and not self.tokenizer_name_or_path:
            raise LitLoraError("model.model_config builds a model without downloading it, so model.tokenizer_"
                               "name_or_path must name a local tokenizer directory too (nothing falls back to the hub)")

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "ModelSettings":
        values = {f.name: hp.get(f.name) for f in fields(cls)}
        return cls(**{**values, "lora": LoraSettings.coerce(values["lora"])})


def build_peft_model(hp: ModelSettings) -> tuple[Any, LoraSettings, dict[str, float], Optional[dict[str, Any]]]:
    """(PEFT model in train mode, the LoRA settings it has, host RSS in MB after loading and after LoRA,
    the initial LoRA weights of an init that changed the base weights, else None: export converts the
    adapter for the original base with them). With `adapter_path` the adapter's own settings replace `lora`."""
    weights = not _WITHOUT_WEIGHTS.get()
    method = hp.quantization
    base = load_base_model(
        hp.model_name_or_path, hp.model_config, hp.base_dtype, hp.attn_implementation,
        hp.trust_remote_code, weights=weights,
        quantization=bnb_config(method, hp.quantization_options, hp.base_dtype) if method else None,
        dropout=hp.base_dropout,
    )
    memory_marks = {"after_model_load": host_memory_mb()[0]}
    initial = None
    if hp.adapter_path and not weights:  # its settings, not its weights: the same shapes
        lora = LoraSettings.from_peft_config(read_adapter_config(hp.adapter_path))
        model = apply_lora(base, lora)
    elif hp.adapter_path:
        model = load_adapter_for_training(base, hp.adapter_path)
        lora = LoraSettings.from_peft_config(model.peft_config["default"])
    else:
        lora, note = resolve_targets(hp.lora, base)
        if note and rank_zero_only.rank == 0:
            print_note(note)
        model = apply_lora(base, lora)
        if weights and str(lora.init_lora_weights).lower().startswith(CONVERTIBLE_INITS):
            initial = initial_lora_weights(model)
    # LoRA weights and optimizer state stay float32 even when the frozen base is bf16/fp16. A quantized base
    # needs nothing more: this is PEFT's prepare_model_for_kbit_training but for its upcast of every
    # unquantized weight to float32 (with base_dtype bfloat16, GPT-2 XL's embeddings would take 164 MB more
    # and its residual stream twice the activations). Those layers are frozen and their sums run in float32
    # anyway (autocast's layer_norm, RMSNorm's own upcast, lit_lora.objectives.nll's log-softmax); get_peft_model
    # froze the base, and checkpointing is ours (non-reentrant, enable_checkpointing).
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    head_note = output_head(model)[1]
    if head_note and rank_zero_only.rank == 0:
        print_note(head_note)
    if hp.gradient_checkpointing:
        enable_checkpointing(model)
    memory_marks["after_lora"] = host_memory_mb()[0]
    # from_pretrained returns eval mode, and Lightning keeps each module's mode: without this the base
    # model's dropout would silently stay off during training.
    return model.train(), lora, memory_marks, initial


def add_reference(model: Any, adapter_path: Optional[str]) -> str:
    """Give a preference run its reference policy, the model training starts from, and say what it is: a
    frozen copy of the starting adapter (`adapter_path`) beside the one that trains, or, without one, the base
    with the adapter switched off. Never a second copy of the base weights."""
    if not adapter_path:
        return "reference: the base model with the adapter switched off (no extra weights)"
    count = load_reference_adapter(model, adapter_path, weights=not _WITHOUT_WEIGHTS.get())
    return f"reference: a frozen copy of adapter {adapter_path} ({count:,} parameters, not trained)"
