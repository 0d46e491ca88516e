"""Reading JSON Lines files (data, prompts), with errors that name the file, the line and what was
expected: bad UTF-8, a byte-order mark, a JSON array where one object per line was expected."""

from __future__ import annotations

import json
from typing import Any, Iterator

from lit_lora.errors import LitLoraError

BOM = b"\xef\xbb\xbf"
_ARRAY_HINT = "this is a JSON array; JSON Lines is expected (one object per line: `jq -c '.[]' FILE`)"


def decode_line(raw: bytes, path: str, lineno: int) -> str:
    """One line as text; a UTF-8 byte-order mark at the start of the file is dropped."""
    if lineno == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LitLoraError(
            f"{path}:{lineno}: not UTF-8: invalid byte 0x{raw[err.start]:02x} at column {err.start + 1}; "
            "save the file as UTF-8"
        ) from None


def read_jsonl(path: str, lists: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, record) for every non-blank line of a JSON Lines file. `lists`: a line may hold a JSON
    list (a conversation's messages); else a list on the first line is taken for a whole-file JSON array."""
    seen_record = False
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            text = decode_line(raw, path, lineno)
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                if not seen_record and text.lstrip().startswith("["):
                    raise LitLoraError(f"{path}:{lineno}: {_ARRAY_HINT}") from None
                raise LitLoraError(f"{path}:{lineno}: line is not valid JSON ({err.msg}, column {err.colno})") from None
            if isinstance(record, list) and not seen_record and not lists:
                raise LitLoraError(f"{path}:{lineno}: {_ARRAY_HINT}")
            seen_record = True
            yield lineno, record
