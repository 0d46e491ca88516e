"""Helpers for distributed strategies: is a module FSDP-wrapped, and parameter names without the wrappers'
prefixes."""

from __future__ import annotations

from typing import Any

import torch

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
