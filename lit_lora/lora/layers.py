"""What a (PEFT-wrapped) causal LM is made of: its base model, its LoRA layers, its context length and a
fingerprint of its frozen weights. Plain functions over an `nn.Module`."""

from __future__ import annotations

import hashlib
from typing import Any, Optional


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


def frozen_weights_fingerprint(model: Any) -> str:
    """A cheap fingerprint of the frozen base weights (first values and sums of a few tensors) of a PEFT
    model whose LoRA weights are trainable. Checkpoints and exported adapters record it."""
    h = hashlib.sha256()
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    if any(p.is_meta for _, p in frozen):
        return "meta"  # a model built without weights (`model.build.without_weights`) has nothing to hash
    for n, p in frozen[:4] + frozen[-4:]:
        flat = p.detach().flatten()
        h.update(n.replace(".base_layer", "").encode())
        h.update(repr([round(float(x), 6) for x in flat[:16]]).encode())
        h.update(repr(round(float(flat.double().sum()), 3)).encode())
    return h.hexdigest()[:16]
