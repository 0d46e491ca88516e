"""Reading data files: expanding globs, detecting the format, and streaming rows out of text files (in
~256 KB chunks cut where the tokenizer cannot join tokens across the cut) and JSONL files, with errors that
name the file and line."""

from __future__ import annotations

import glob
import os
from typing import Any, Iterable, Iterator, Optional

from lit_lora.data.conversations import is_conversational, record_format, record_tools, to_messages
from lit_lora.data.cuts import choose_cut
from lit_lora.data.preference_records import preference_format
from lit_lora.errors import LitLoraError
from lit_lora.jsonl import BOM, read_jsonl

CHUNK_BYTES = 256 * 1024
# A row never grows past this: a file with no cut the tokenizer accepts (no newline or space for megabytes)
# is cut anyway, so memory stays flat for any file.
MAX_ROW_BYTES = 4 * CHUNK_BYTES


def resolve_files(patterns: Iterable[str], option: str) -> list[str]:
    """Expand files and globs in order; each pattern must match at least one readable file."""
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(os.path.expanduser(pattern)):
            raise LitLoraError(
                f"{option}: {pattern!r} is a folder; give files or a glob such as {os.path.join(pattern, '*.txt')!r}"
            )
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise LitLoraError(f"{option}: no file matches {pattern!r}")
        for m in matches:
            if not os.access(m, os.R_OK):
                raise LitLoraError(f"{option}: file {m!r} is not readable")
        files.extend(matches)
    return files


def detect_format(files: list[str], text_field: str = "text") -> str:
    """'text' for plain files; for .jsonl/.json, the format of the first record's fields: a preference form
    (`preference_records.preference_format`, asked first: a KTO record also has `prompt` and `completion`),
    else `conversations.record_format`."""
    if not all(f.endswith((".jsonl", ".json")) for f in files):
        if any(f.endswith((".jsonl", ".json")) for f in files):
            raise LitLoraError(f"cannot mix JSONL and plain-text files in one split: {files}")
        return "text"
    for lineno, record in read_jsonl(files[0]):
        fmt = preference_format(record) or record_format(record, text_field)
        if fmt is None:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise LitLoraError(
                f"{files[0]}:{lineno}: cannot tell the format from fields {fields}; expected 'messages', "
                f"'conversations' (ShareGPT), 'instruction' + 'output' (Alpaca), 'prompt' + 'completion', "
                f"{text_field!r}, or 'chosen' + 'rejected' (preference), or give --data.format")
        return fmt
    raise LitLoraError(f"{files[0]} is empty")


def first_record(files: list[str]) -> Any:
    for _, record in read_jsonl(files[0]):
        return record
    return None


def conversational_files(files: list[str], fmt: str) -> bool:
    """Whether records of format `fmt` in `files` are read as conversations (prompt/completion ones when their
    `prompt` is a message list)."""
    return fmt in ("messages", "sharegpt", "alpaca") or (fmt == "prompt_completion" and
                                                         is_conversational(first_record(files)))


def file_fingerprint(files: list[str]) -> list[tuple[str, int, int]]:
    """What identifies a file's content for caching: path, size and modification time."""
    return [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]


def _decode(data: bytes, path: str, offset: int, line: int) -> str:
    """`data` (which starts at byte `offset`, on line `line` of the file) as text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        at = line + data.count(b"\n", 0, err.start)
        raise LitLoraError(
            f"{path}:{at}: not UTF-8: invalid byte 0x{data[err.start]:02x} at byte offset {offset + err.start}; "
            "save the file as UTF-8"
        ) from None
    nul = data.find(b"\0")
    if nul >= 0:  # valid UTF-8, but no text file holds it: a binary file, or UTF-16 (every other byte is 0)
        at = line + data.count(b"\n", 0, nul)
        raise LitLoraError(f"{path}:{at}: a NUL byte at byte offset {offset + nul}; a text file holds none (is it "
                           "binary, or UTF-16?): save it as UTF-8 text")
    return text


def read_text_rows(files: list[tuple[str, int, int]], tokenizer: Optional[Any] = None) -> Iterator[dict[str, Any]]:
    """Rows of ~CHUNK_BYTES of text (a file is one document), cut where `cuts.choose_cut` allows; each row
    says whether it starts or ends its document and whether its end was checked with `tokenizer`
    (`cut_checked`)."""
    for path, _, _ in files:
        offset, line, carry, start = 0, 1, b"", True
        with open(path, "rb") as fh:
            while True:
                block = fh.read(CHUNK_BYTES)
                if offset == 0 and not carry and block.startswith(BOM):
                    block, offset = block[len(BOM):], len(BOM)  # a byte-order mark is not text
                buf = carry + block
                if not block:
                    if buf or offset:  # an empty file is no document at all
                        yield {"text": _decode(buf, path, offset, line), "doc_start": start, "doc_end": True,
                               "cut_checked": True}
                    break
                cut, checked = -1, False
                if len(buf) >= CHUNK_BYTES:
                    cut, checked = choose_cut(buf, tokenizer, force=len(buf) >= MAX_ROW_BYTES)
                if cut <= 0:
                    carry = buf
                    continue
                yield {"text": _decode(buf[:cut], path, offset, line), "doc_start": start, "doc_end": False,
                       "cut_checked": checked}
                offset, line, start = offset + cut, line + buf.count(b"\n", 0, cut), False
                carry = buf[cut:]


def read_jsonl_rows(files: list[tuple[str, int, int]], fields: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for path, _, _ in files:
        for lineno, record in read_jsonl(path):
            if not isinstance(record, dict):
                raise LitLoraError(f"{path}:{lineno}: expected a JSON object with fields {list(fields)}")
            missing = [f for f in fields if not isinstance(record.get(f), str)]
            if missing:
                raise LitLoraError(f"{path}:{lineno}: missing string field {missing[0]!r}")
            row = {f: record[f] for f in fields}
            if "prompt" not in fields:
                row["doc_start"] = row["doc_end"] = True
            yield row


def read_chat_rows(files: list[tuple[str, int, int]], fmt: str) -> Iterator[dict[str, Any]]:
    """One row per conversation: its messages, how many of them are prompt, the file and line it is on, and
    its tools (JSON text, or None)."""
    for path, _, _ in files:
        for lineno, record in read_jsonl(path):
            where = f"{path}:{lineno}"
            messages, prompt_turns = to_messages(record, fmt, where)
            yield {"messages": messages, "prompt_turns": prompt_turns, "where": where,
                   "tools": record_tools(record, where)}
