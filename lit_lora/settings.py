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


def build_settings(cls: type[T], option_prefix: str, values: dict[str, Any]) -> T:
    """`cls(**values)`, its own checks run, their one-line errors naming the option as the user spells it
    (`option_prefix` "samples." gives `samples.top_k ...`, "--" gives `--top_k ...`)."""
    try:
        return cls(**values)
    except LitLoraError as err:
        raise LitLoraError(f"{option_prefix}{err}") from None
