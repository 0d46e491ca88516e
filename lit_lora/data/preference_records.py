"""Preference records: each of TRL's preference forms read, checked and brought to one of two row shapes
(a prompt with a chosen and a rejected completion, or a prompt with one labelled completion), with errors
that name the file and line.

The forms, by their fields (TRL's dataset types):
- `preference`: `prompt`, `chosen`, `rejected`, all strings (standard) or all message lists (conversational).
- `implicit_preference`: `chosen` and `rejected` only, whole texts or whole conversations; the prefix they
  share is the prompt (a `prompt` string beside conversational ones is ignored, as TRL ignores it).
- `unpaired_preference` (KTO's): `prompt`, `completion` and a bool `label` (True: desirable).
One form per split, and one kind (strings or messages): the first record decides.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from lit_lora.data.conversations import _messages, record_tools
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import ROLES
from lit_lora.jsonl import read_jsonl

PAIRED, IMPLICIT, UNPAIRED = "preference", "implicit_preference", "unpaired_preference"
FORMATS = (PAIRED, IMPLICIT, UNPAIRED)
_FIELDS = {PAIRED: ("prompt", "chosen", "rejected"), IMPLICIT: ("chosen", "rejected"),
           UNPAIRED: ("prompt", "completion", "label")}
_SAME_ROLES = {r: r for r in ROLES}


def preference_format(record: Any) -> Optional[str]:
    """The preference form a record is in, by its fields; None for a record of no preference form (an SFT
    record: `auto` detection asks this before `conversations.record_format`, which would read a KTO record as
    prompt/completion)."""
    if not isinstance(record, dict):
        return None
    if "chosen" in record or "rejected" in record:
        conversational = isinstance(record.get("chosen"), list)
        if "prompt" in record and isinstance(record["prompt"], list) == conversational:
            return PAIRED
        return IMPLICIT
    if "label" in record and "prompt" in record and "completion" in record:
        return UNPAIRED
    return None


def is_conversational(record: Any) -> bool:
    """Whether the record's completions are message lists."""
    if not isinstance(record, dict):
        return False
    return isinstance(record.get("chosen", record.get("completion")), list)


def kind_name(fmt: str, conversational: bool) -> str:
    return f"{fmt} ({'conversational' if conversational else 'standard'})"


def _check_kind(record: Any, fmt: str, conversational: bool, where: str) -> None:
    """One line unless `record` is of form `fmt` and kind `conversational`, as the split's first record was."""
    if not isinstance(record, dict):
        raise LitLoraError(f"{where}: expected a JSON object with fields {list(_FIELDS[fmt])}, "
                           f"got {type(record).__name__}")
    found = preference_format(record)
    missing = [f for f in _FIELDS[fmt] if f not in record]
    # A record of another form is named as such; one that lacks a field of this form (or of any), by the field.
    if missing and found in (None, fmt):
        raise LitLoraError(f"{where}: missing field {missing[0]!r} of a {fmt} record (fields {sorted(record)})")
    if found != fmt or is_conversational(record) != conversational:
        got = kind_name(found, is_conversational(record)) if found else "no preference form"
        raise LitLoraError(f"{where}: expected a record of format {kind_name(fmt, conversational)}, got fields "
                           f"{sorted(record)} ({got}): one format per split")


def _text(record: dict[str, Any], field: str, where: str) -> str:
    value = record[field]
    if not isinstance(value, str):
        raise LitLoraError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _completion(value: Any, field: str, where: str, conversational: bool) -> Any:
    """A completion, checked to hold something to train on."""
    if conversational:
        messages = _messages(value, where, field, _SAME_ROLES, "role", "content")
        empty = not any(m["content"].strip() or m.get("tool_calls") for m in messages if m["role"] == "assistant")
    else:
        messages, empty = value, not value.strip()
    if empty:
        raise LitLoraError(f"{where}: empty completion: {field!r} has no text to train on")
    return messages


def _shared_prefix(chosen: Any, rejected: Any) -> int:
    """Where `chosen` and `rejected` part: TRL's `extract_prompt` rule (for texts, a space just before the
    parting stays with the completions)."""
    n = min(len(chosen), len(rejected))
    idx = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    if isinstance(chosen, str) and idx > 0 and chosen[idx - 1] == " ":
        idx -= 1
    return idx


def normalize(record: Any, fmt: str, conversational: bool, where: str) -> dict[str, Any]:
    """One record as a row: `prompt`, `chosen`, `rejected` (paired forms; an implicit prompt made explicit) or
    `prompt`, `completion`, `label` (unpaired), texts or message lists, with `where` and (conversational)
    `tools` as JSON text."""
    _check_kind(record, fmt, conversational, where)
    tools = {"tools": record_tools(record, where)} if conversational else {}
    if fmt == UNPAIRED:
        label = record["label"]
        if not isinstance(label, bool):
            raise LitLoraError(f"{where}: 'label' must be true or false (is the completion desirable?), "
                               f"got {label!r}")
        prompt = (_messages(record["prompt"], where, "prompt", _SAME_ROLES, "role", "content") if conversational
                  else _text(record, "prompt", where))
        completion = _completion(record["completion"], "completion", where, conversational)
        return {"prompt": prompt, "completion": completion, "label": label, "where": where, **tools}
    chosen, rejected = record["chosen"], record["rejected"]
    if not conversational:
        chosen, rejected = _text(record, "chosen", where), _text(record, "rejected", where)
    if chosen == rejected:
        raise LitLoraError(f"{where}: 'chosen' and 'rejected' are the same; a pair must differ")
    if fmt == IMPLICIT:
        if conversational:  # checked before cutting, so a bad message is named by its place in the record
            chosen = _messages(chosen, where, "chosen", _SAME_ROLES, "role", "content")
            rejected = _messages(rejected, where, "rejected", _SAME_ROLES, "role", "content")
        cut = _shared_prefix(chosen, rejected)
        prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
        for field, value in (("chosen", chosen), ("rejected", rejected)):
            if not value:
                raise LitLoraError(f"{where}: empty completion: {field!r} holds nothing after the prompt it "
                                   "shares with the other")
    elif conversational:
        prompt = _messages(record["prompt"], where, "prompt", _SAME_ROLES, "role", "content")
    else:
        prompt = _text(record, "prompt", where)
    return {"prompt": prompt, "chosen": _completion(chosen, "chosen", where, conversational),
            "rejected": _completion(rejected, "rejected", where, conversational), "where": where, **tools}


def detect(record: Any, where: str) -> tuple[str, bool]:
    """(form, conversational) of a split from its first record; one line when it is of no preference form."""
    fmt = preference_format(record)
    if fmt is None:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise LitLoraError(f"{where}: cannot tell the preference format from fields {fields}; expected 'prompt' + "
                           "'chosen' + 'rejected', 'chosen' + 'rejected' (implicit prompt) or 'prompt' + "
                           "'completion' + 'label' (unpaired)")
    return fmt, is_conversational(record)


def read_preference_rows(files: tuple[tuple[str, int, int], ...], fmt: str, conversational: bool
                         ) -> Iterator[dict[str, Any]]:
    """Rows of JSONL files (`files.file_fingerprint` entries), each record checked and normalized."""
    for path, _, _ in files:
        for lineno, record in read_jsonl(path):
            yield normalize(record, fmt, conversational, f"{path}:{lineno}")
