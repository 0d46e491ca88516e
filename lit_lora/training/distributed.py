"""Helpers for distributed strategies: is a module FSDP-wrapped, parameter names without the wrappers'
prefixes, and the FSDP policy that makes each decoder layer of any family one unit."""

from __future__ import annotations

from typing import Any, Optional

import torch

from lit_lora.errors import LitLoraError

# Module-name prefixes FSDP and its activation-checkpoint wrapper insert (torch.distributed.fsdp).
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def is_fsdp(module: Any) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def unwrapped_name(name: str) -> str:
    """A parameter name as the state dicts FSDP gathers spell it (wrapper prefixes removed)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class DecoderLayerPolicy:
    """FSDP auto-wrap policy: each decoder layer of the model is one FSDP unit, whatever the family.

    The layer classes are the model's own `_no_split_modules` (transformers' list of the blocks that must
    stay whole on one device: GPT2Block, LlamaDecoderLayer, ...), read at the first call, which FSDP makes
    with the root module. Give it as `trainer.strategy.init_args.auto_wrap_policy` (conf/gpt2/fsdp.yaml)."""

    def __init__(self) -> None:
        self.layer_names: Optional[set[str]] = None

    def __call__(self, module: Any, recurse: bool, nonwrapped_numel: int) -> bool:
        if self.layer_names is None:
            self.layer_names = decoder_layer_names(module)
        return True if recurse else type(module).__name__ in self.layer_names


def decoder_layer_names(root: Any) -> set[str]:
    """Class names of the decoder layers inside `root` (a LightningModule, PEFT or transformers model)."""
    names: set[str] = set()
    for module in root.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    if not names:
        raise LitLoraError(
            "FSDP: the model names no decoder layer class (transformers' _no_split_modules); give "
            "trainer.strategy.init_args.auto_wrap_policy as a list of its layer classes"
        )
    return names


def clip_gradients(module: Any, optimizer: Any, value: Optional[float], algorithm: Optional[str]) -> None:
    """`configure_gradient_clipping` of a LightningModule. Lightning's FSDP refuses norm clipping
    (torch.nn.utils.clip_grad_norm_ would see only this rank's shards); the root FSDP module's
    clip_grad_norm_ reduces the norm across ranks."""
    if value and algorithm in (None, "norm") and is_fsdp(module.trainer.model):
        module.trainer.model.clip_grad_norm_(value)
        return
    module.clip_gradients(optimizer, value, algorithm)
