"""The global RNG states a checkpoint keeps, so dropout masks after a resume are the ones the uninterrupted
run would have drawn (Lightning's checkpoints save none, so a resumed run would draw other masks)."""

from __future__ import annotations

import random
from typing import Any, Optional

import torch


def capture_rng() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (no numpy state: it breaks weights_only loading)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[dict[str, Any]]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
