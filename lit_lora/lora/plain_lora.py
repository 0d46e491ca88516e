"""Rewriting a saved PEFT adapter as plain LoRA, the form every engine reads the same: one rank, one
`lora_alpha` and scale `lora_alpha / r` for every module, no rsLoRA, no rank or alpha patterns, no init
that changed the base. PEFT gives the same outputs before and after; vLLM scales every module by
`lora_alpha / r` (ignoring rsLoRA's sqrt only when told, and the patterns always), llama.cpp by
`lora_alpha / (each tensor's rank)` (ignoring rsLoRA and alpha_pattern), so only this form is exact in both.

- rsLoRA's scale alpha / sqrt(r) is folded into alpha: `lora_alpha = alpha * sqrt(r)`.
- Modules whose rank or scale differ (rank_pattern, alpha_pattern) get zero rows and columns up to the
  largest rank (the product B @ A is unchanged) and their scale's ratio to the common one folded into B.
- PiSSA and OLoRA train on a base whose weights they changed (W_res = W - s B0 A0). PEFT converts such an
  adapter for the original base from the initial A0, B0 (`save_pretrained(...,
  path_initial_model_for_weight_conversion=...)`): delta W = s (B A - B0 A0) = s [B | -B0] [A ; A0], rank 2r.
  `subtract_initial` does the same from the initial weights kept in memory.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch

from lit_lora.lora.parts import is_lora_layer

ADAPTER = "default"
# Base-changing inits whose adapters convert for the original base from their initial weights (PEFT's
# conversion covers these; CorDA and LoRA-GA need data lit_lora does not prepare).
CONVERTIBLE_INITS = ("pissa", "olora")


def module_of(key: str) -> str:
    """The module a saved LoRA tensor belongs to ("...q_proj.lora_A.weight" -> "...q_proj")."""
    return key.split(".lora_")[0]


def _is_a(key: str) -> bool:
    return ".lora_A." in key or ".lora_embedding_A" in key


def _is_b(key: str) -> bool:
    return ".lora_B." in key or ".lora_embedding_B" in key


def lora_scales(peft_model: Any) -> dict[str, float]:
    """Each LoRA module's scale as PEFT computes it (alpha / r or alpha / sqrt(r), patterns applied), by the
    module name its saved tensors start with."""
    return {name: float(module.scaling[ADAPTER]) for name, module in peft_model.named_modules()
            if is_lora_layer(module) and ADAPTER in module.scaling}


def initial_lora_weights(peft_model: Any) -> dict[str, torch.Tensor]:
    """A copy of the LoRA A and B weights as initialised, under their saved names (no adapter name)."""
    return {name.replace(f".{ADAPTER}.", "."): p.detach().to("cpu", copy=True)
            for name, p in peft_model.named_parameters() if _is_a(name) or _is_b(name)}


def subtract_initial(weights: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter of delta W = s (B A - B0 A0) on the original base: A stacked over A0, B beside -B0."""
    out = dict(weights)
    for key, value in weights.items():
        if _is_a(key):
            out[key] = torch.cat([value, initial[key].to(value.dtype)], dim=0)
        elif _is_b(key):
            out[key] = torch.cat([value, -initial[key].to(value.dtype)], dim=1)
    return out


def uniform(weights: dict[str, torch.Tensor], scales: dict[str, float]) -> tuple[dict[str, torch.Tensor], int, float]:
    """(weights with one rank and one scale, that rank, that scale). Modules below the largest rank get zero
    rows of A and columns of B; a module's scale other than the most common one is folded into its B."""
    ranks = {module_of(k): v.shape[0] for k, v in weights.items() if _is_a(k)}
    rank = max(ranks.values())
    scale = Counter(scales[m] for m in ranks).most_common(1)[0][0]
    out = dict(weights)
    for key, value in weights.items():
        module = module_of(key)
        if module not in ranks:
            continue  # DoRA's magnitudes, modules_to_save, biases: not per-rank
        pad = rank - ranks[module]
        if _is_a(key) and pad:
            out[key] = torch.cat([value, value.new_zeros(pad, *value.shape[1:])], dim=0)
        elif _is_b(key):
            if scales[module] != scale:
                value = value * (scales[module] / scale)
            out[key] = torch.cat([value, value.new_zeros(value.shape[0], pad, *value.shape[2:])], dim=1) if pad else value
    return out, rank, scale


def rewrite_as_plain_lora(folder: Path, scales: dict[str, float],
                          initial: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Rewrite the adapter PEFT saved in `folder` in place: plain LoRA with the same outputs (on the original
    base when `initial`, the weights a base-changing init started from, is given)."""
    from safetensors.torch import load_file, save_file

    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if initial is None and not (config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern")):
        return  # plain LoRA already
    weights = load_file(weights_path)
    if initial is not None:
        weights = subtract_initial(weights, initial)
        config["init_lora_weights"] = True  # loading must not change the base again
    weights, rank, scale = uniform(weights, scales)
    alpha = round(scale * rank, 9)  # alpha * sqrt(r) for rsLoRA; 16.0 -> 16
    config.update(r=rank, lora_alpha=int(alpha) if alpha.is_integer() else alpha, use_rslora=False,
                  rank_pattern={}, alpha_pattern={})
    save_file({k: v.contiguous() for k, v in weights.items()}, weights_path, metadata={"format": "pt"})
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
