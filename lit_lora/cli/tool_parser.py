"""The option parser of the tool commands (export, merge, generate): jsonargparse, which LightningCLI uses for
`fit`, so an option taken from a settings class gets its type, default and help text from the class and its
docstring, written once. Parse errors are raised as `jsonargparse.ArgumentError` (no exit, no usage block)
and `lit_lora.cli.main` prints them as one line; `--help` prints the help and exits 0."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from jsonargparse import ArgumentParser, Namespace

from lit_lora.settings import build_settings

T = TypeVar("T")


def tool_parser(name: str, description: str) -> ArgumentParser:
    """The parser of `python -m lit_lora.cli NAME`."""
    return ArgumentParser(prog=f"python -m lit_lora.cli {name}", description=description, exit_on_error=False)


def add_settings_options(parser: ArgumentParser, cls: type) -> None:
    """A settings dataclass's fields as top-level options (`--max_new_tokens`), in a group titled by its
    docstring's first line, each helped by its `Args:` entry."""
    parser.add_class_arguments(cls, nested_key=None, as_group=True)


def settings_from_options(cls: type[T], cfg: Namespace) -> T:
    """`cls` built from the options `add_settings_options` added; its own checks run, their errors name the
    option (`--temperature must be >= 0 ...`)."""
    values: dict[str, Any] = {f.name: cfg[f.name] for f in fields(cls)}  # type: ignore[arg-type]
    return build_settings(cls, "--", values)
