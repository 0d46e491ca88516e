"""The one exception type users see, and how the CLI prints it."""

from __future__ import annotations

import os

VERBOSE_ENV = "LIT_LORA_VERBOSE"


class LitLoraError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""


def verbose_requested(argv: list[str] | None = None) -> bool:
    """Tracebacks are shown only when asked for: `--verbose` on the command line or LIT_LORA_VERBOSE=1."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0") or bool(argv and "--verbose" in argv)


def one_line(message: str) -> str:
    return " ".join(str(message).split())
