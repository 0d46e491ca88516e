"""What a (PEFT-wrapped) causal LM is made of: its base model, its LoRA layers, its context length and a
fingerprint of its frozen weights. Plain functions over an `nn.Module`."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from lit_lora.errors import LitLoraError


def base_model(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or `model` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_lora_layer(module: Any) -> bool:
    """A layer PEFT wrapped with LoRA branches (its frozen original is `get_base_layer()`)."""
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer")


def context_length(model: Any) -> Optional[int]:
    """The longest sequence the model's positions allow (GPT-2 `n_positions`, others `max_position_embeddings`)."""
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_context(model: Any, block_size: int) -> None:
    """One line when `block_size` is longer than the model's context."""
    n_ctx = context_length(model)
    if n_ctx is not None and block_size > n_ctx:
        raise LitLoraError(f"data.block_size={block_size} is larger than the model's context of {n_ctx} tokens")


def uses_conv1d(model: Any) -> bool:
    """GPT-2 stores its projections as transformers' Conv1D (weight is in x out)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def linear_module_names(model: Any) -> list[str]:
    """The last name part of every Linear/Conv1D module: what `target_modules` can name."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def frozen_weights_fingerprint(model: Any, linear_weights: bool = True) -> str:
    """A cheap fingerprint of the frozen base weights (first values and sums of a few tensors) of a PEFT
    model whose LoRA weights are trainable (a frozen adapter beside them is left out too). Checkpoints and exported adapters record it.

    `linear_weights=False` leaves out the weights of linear layers (an embedding tied to the head stays in):
    the fingerprint of a quantized base, which its full-precision original has too (merge reloads it)."""
    h = hashlib.sha256()
    # Adapter weights are never the base's, trained or not (a preference run's frozen reference adapter).
    frozen = [(n, p) for n, p in model.named_parameters()
              if not p.requires_grad and "lora_" not in n and "modules_to_save" not in n]
    if not linear_weights:
        skipped = _linear_weights(model)
        frozen = [(n, p) for n, p in frozen if id(p) not in skipped]
    if any(p.is_meta for _, p in frozen):
        return "meta"  # a model built without weights (`lora.build.without_weights`) has nothing to hash
    for n, p in frozen[:4] + frozen[-4:]:
        flat = p.detach().flatten()
        h.update(n.replace(".base_layer", "").encode())
        h.update(repr([round(float(x), 6) for x in flat[:16]]).encode())
        h.update(repr(round(float(flat.double().sum()), 3)).encode())
    return h.hexdigest()[:16]


def _linear_weights(model: Any) -> set[int]:
    """ids of the weights of Linear/Conv1D layers (bitsandbytes' layers are Linear), less those another
    module owns too (GPT-2's head is its token embedding)."""
    import torch

    linear, other = set(), set()
    for module in model.modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        for name, p in module.named_parameters(recurse=False):
            (linear if is_linear and name == "weight" else other).add(id(p))
    return linear - other
