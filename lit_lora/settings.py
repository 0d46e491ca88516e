"""Settings dataclasses given as themselves, as mappings (a config file, a checkpoint's hyperparameters)
or not at all."""

from __future__ import annotations

from typing import Any, TypeVar

from lit_lora.errors import LitLoraError

T = TypeVar("T")


def coerce_settings(cls: type[T], value: Any, what: str) -> T:
    """`cls()` for None, `value` itself, or `cls(**value)` for a mapping; anything else is a one-line error
    naming `what`."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise LitLoraError(f"{what} must be a mapping, got {value!r}")
