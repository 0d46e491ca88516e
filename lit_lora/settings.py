"""Settings dataclasses given as themselves, as mappings (a config file, a checkpoint's hyperparameters)
or not at all."""

from __future__ import annotations

from typing import Any, Optional, TypeVar

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


def check_number(
    option: str, value: Any, *, at_least: Optional[float] = None, above: Optional[float] = None,
    below: Optional[float] = None, at_most: Optional[float] = None, integer: bool = False,
) -> None:
    """A one-line error unless `value` is a finite number (an integer if `integer`) in the given range; the
    message names `option` and the range. NaN and infinities never pass."""
    import math

    bounds = [f">= {at_least:g}" if at_least is not None else "", f"> {above:g}" if above is not None else "",
              f"< {below:g}" if below is not None else "", f"<= {at_most:g}" if at_most is not None else ""]
    wanted = f"{'an integer' if integer else 'a finite number'} {' and '.join(b for b in bounds if b)}".rstrip()
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    ok = ok and (at_least is None or value >= at_least) and (above is None or value > above)
    ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        raise LitLoraError(f"{option} must be {wanted}, got {value!r}")
