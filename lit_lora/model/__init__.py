"""The LightningModule (`LitLora`) and the pure parts of training it: loss, learning-rate schedule, RNG
state, the model build and the checkpoint's own section.

`lit_lora.model.LitLora` (a `class_path` in users' configs) is imported on first use, so importing
`lit_lora.model.schedule` does not load Lightning.
"""

from typing import Any

__all__ = ["LitLora", "token_nll"]


def __getattr__(name: str) -> Any:
    if name == "LitLora":
        # lazy re-export: importing the package must not load Lightning
        from lit_lora.model.module import LitLora

        return LitLora
    if name == "token_nll":
        # lazy re-export: importing the package must not load Lightning
        from lit_lora.nll import token_nll

        return token_nll
    raise AttributeError(f"module 'lit_lora.model' has no attribute {name!r}")
