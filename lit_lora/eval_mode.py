"""`evaluating`: a model in eval mode for a while, then each of its modules back in its own mode.

`model.train(previous)` would not do: a training run keeps some modules in eval mode on purpose (frozen parts,
quantized layers), and one flag for the whole model would switch them back to training.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Inside: `model.eval()` (no dropout). After, even on an error: every module in the mode it had."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
