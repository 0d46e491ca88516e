"""The old path of `LitLora`, kept so old configs keep working: a YAML whose `class_path` names
`lit_lora.model.LitLora` still loads. The module is `lit_lora.training.module`; nothing in the package
imports this one. Names load on first use, so importing it loads no Lightning.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "LitLora": "lit_lora.training.module",
    "token_nll": "lit_lora.objectives.nll",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lit_lora.model' has no attribute {name!r}")
