"""lit_lora's notes (what a run chose, did or found) go to stderr, as Lightning's own messages do. stdout keeps a
command's output alone: generate's text, summary's and preview's report, so `generate ... > out.txt` holds
only the completion and `generate ... | head -1` gets its first line."""

from __future__ import annotations

import sys

PREFIX = "lit_lora: "


def print_note(message: str) -> None:
    """`message` on stderr, led by `lit_lora: ` (once: some notes are built with it)."""
    print(message if message.startswith(PREFIX) else PREFIX + message, file=sys.stderr, flush=True)
