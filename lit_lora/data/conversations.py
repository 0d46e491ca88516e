"""Conversations: records of each chat format read as one message list, and that list tokenized with the
chat template into `input_ids` and `labels` that train the chosen turns.

Which tokens train is decided on characters, never on token ids: each trained turn is a span of the
rendered text (from the end of the template's generation prompt to the end of the turn, its end-of-turn
token included), and a token trains when its `offset_mapping` range overlaps a span. A mask built from ids
would drop every trained EOS, since GPT-2's pad token is its EOS. The spans come from rendering the
conversation up to each turn, which needs a template whose text of the first turns is a prefix of the
whole; one that is not is refused with one line. `apply_chat_template(return_assistant_tokens_mask=True)`
does this only for templates with `{% generation %}` tags, which few published templates have.

Tool calls go to the template as `apply_chat_template` takes them (an assistant message's `tool_calls`, a
tool message's `tool_call_id` and `name`, the record's `tools`), so the call is text of the assistant's turn
and trains with it. Every trained turn is checked to hold its message's own text (and each tool call's
name): a template that drops or replaces it would otherwise train on text the data never said.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.workers import die_with_parent
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import ROLES, render

# The field that marks each chat format, in the order `auto` looks for them (an UltraChat record holds
# both `prompt` and `messages`: it is a messages record).
CHAT_FIELDS = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}
TRAIN_ON = ("assistant", "last", "all")
# Message fields a template may read besides role and content; kept as strings (`tool_calls` as JSON),
# so every conversation has the same columns.
TOOL_FIELDS = ("tool_calls", "tool_call_id", "name")


def record_format(record: Any, text_field: str) -> Optional[str]:
    """The format a JSON record is in, by its fields; None when it is in none."""
    if not isinstance(record, dict):
        return None
    for fmt, field in CHAT_FIELDS.items():
        if field in record:
            return fmt
    if "prompt" in record:
        return "prompt_completion"
    return "jsonl_text" if text_field in record else None


def is_conversational(record: Any) -> bool:
    """A prompt/completion record whose `prompt` is a message list (TRL's conversational form)."""
    return isinstance(record, dict) and isinstance(record.get("prompt"), list)


def _messages(value: Any, where: str, field: str, roles: dict[str, str], role_key: str, text_key: str
              ) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise LitLoraError(f"{where}: {field!r} must be a non-empty list of messages, got {type(value).__name__}")
    out = []
    for n, message in enumerate(value, 1):
        if not isinstance(message, dict):
            raise LitLoraError(f"{where}: message {n} of {field!r} is a {type(message).__name__}, expected an object")
        role = message.get(role_key)
        if role not in roles:
            raise LitLoraError(f"{where}: message {n} has {role_key} {role!r}; expected one of {', '.join(roles)}")
        calls = message.get("tool_calls") if roles[role] == "assistant" else None
        content = message.get(text_key)
        if content is None and calls:
            content = ""  # OpenAI's form of a message that only calls tools
        if not isinstance(content, str):
            raise LitLoraError(f"{where}: message {n} ({role}) has no string {text_key!r}")
        out.append({"role": roles[role], "content": content, **_tool_fields(message, calls, where, n)})
    return out


def _tool_fields(message: dict[str, Any], calls: Any, where: str, n: int) -> dict[str, str]:
    """The message's tool fields, as stored: only those it has (a message without them stays role and
    content), `tool_calls` as JSON text of a checked list of calls."""
    out = {k: message[k] for k in TOOL_FIELDS[1:] if isinstance(message.get(k), str)}
    if calls is None:
        return out
    if not isinstance(calls, list) or not all(isinstance(_call_name(c), str) for c in calls):
        raise LitLoraError(f"{where}: message {n} has 'tool_calls' that are not a list of calls, each with a "
                           "function name ({\"function\": {\"name\": ..., \"arguments\": ...}})")
    return {"tool_calls": json.dumps(calls, ensure_ascii=False), **out} if calls else out


def _call_name(call: Any) -> Any:
    """A tool call's function name: OpenAI's `{"function": {"name": ...}}` or a bare `{"name": ...}`."""
    if not isinstance(call, dict):
        return None
    function = call.get("function")
    return function.get("name") if isinstance(function, dict) else call.get("name")


def record_tools(record: Any, where: str) -> Optional[str]:
    """The record's `tools` (the function schemas its template lists), as JSON text; None when it has none."""
    tools = record.get("tools") if isinstance(record, dict) else None
    if isinstance(tools, str):  # datasets often keep the schemas as a JSON string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except ValueError as err:
            raise LitLoraError(f"{where}: 'tools' is a string but not JSON ({err})") from None
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise LitLoraError(f"{where}: 'tools' must be a list of function schemas (objects), "
                           f"got {type(tools).__name__}")
    return json.dumps(tools, ensure_ascii=False)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored messages as `apply_chat_template` takes them: fields a message lacks are left out (a table
    holds them as None), `tool_calls` parsed back from JSON."""
    return [{k: json.loads(v) if k == "tool_calls" else v for k, v in m.items() if v is not None} for m in messages]


def to_messages(record: Any, fmt: str, where: str) -> tuple[list[dict[str, str]], int]:
    """(messages, prompt_turns) of one record of format `fmt`: the first `prompt_turns` messages are a
    prompt, never trained (conversational prompt/completion), the others train by `train_on`."""
    if not isinstance(record, dict):
        raise LitLoraError(f"{where}: expected a JSON object, got {type(record).__name__}")
    found = record_format(record, "text")
    if fmt == "prompt_completion" and found == "prompt_completion" and is_conversational(record):
        found = fmt
    if found != fmt:
        raise LitLoraError(f"{where}: expected a record of format {fmt}, got fields {sorted(record)}"
                           f"{f' (those of the {found} format)' if found else ''}: one format per split")
    same = {r: r for r in ROLES}
    if fmt == "messages":
        return _messages(record["messages"], where, "messages", same, "role", "content"), 0
    if fmt == "sharegpt":
        return _messages(record["conversations"], where, "conversations", SHAREGPT_ROLES, "from", "value"), 0
    if fmt == "prompt_completion":
        prompt = _messages(record["prompt"], where, "prompt", same, "role", "content")
        return prompt + _messages(record.get("completion"), where, "completion", same, "role", "content"), len(prompt)
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise LitLoraError(f"{where}: an alpaca record needs a string {key!r} field")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise LitLoraError(f"{where}: the alpaca field 'input' must be a string, got {type(extra).__name__}")
    system = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) else []
    user = record["instruction"] + (f"\n\n{extra}" if extra else "")
    return system + [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}], 0


def trained_spans(tokenizer: Any, template: str, messages: list[dict[str, Any]], prompt_turns: int,
                  train_on: str, where: str, tools: Optional[list[dict[str, Any]]] = None
                  ) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character spans that train). `messages` as `template_messages` gives
    them; `tools` the record's function schemas."""
    text = _render(tokenizer, template, messages, False, where, tools)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= prompt_turns]
    if train_on == "all":
        for i in turns:
            _check_turn(text, messages[i], i, where, calls=False)
        calling = [i for i in turns if messages[i].get("tool_calls")]
        # The names may be in the tools' list: the calls are rendered when the text changes without them.
        if calling and _render(tokenizer, template, _without_calls(messages), False, where, tools) == text:
            raise _unrendered_call(_call_name(messages[calling[0]]["tool_calls"][0]), calling[0], where)
        return text, [(0, len(text))]
    if not turns:
        raise LitLoraError(f"{where}: no assistant turn{' in the completion' if prompt_turns else ''}: nothing to "
                           "train on (data.train_on all trains every token)")
    spans = []
    for i in turns[-1:] if train_on == "last" else turns:
        head = _render(tokenizer, template, messages[:i], True, where, tools)
        turn = _render(tokenizer, template, messages[: i + 1], False, where, tools)
        if not (text.startswith(head) and text.startswith(turn) and turn.startswith(head)):
            raise LitLoraError(
                f"{where}: the chat template does not render turn by turn (the text up to assistant message {i + 1} "
                "is not the start of the whole conversation), so the trained tokens cannot be found; use "
                "--data.chat_template plain or a template that does")
        spans.append((len(head), len(turn.rstrip())))  # the turn's end-of-turn token, not the newline after it
        _check_turn(text[spans[-1][0] : spans[-1][1]], messages[i], i, where)
    return text, spans


def _check_turn(trained: str, message: dict[str, Any], i: int, where: str, calls: bool = True) -> None:
    """One line unless the trained text holds the message's own text and (`calls`) the name of each tool it
    calls."""
    own = message["content"].strip()
    # Templates may re-space a reply (trim it, put newlines around a <think> block): its other characters
    # must still be there, in order.
    if own and own not in trained and "".join(own.split()) not in "".join(trained.split()):
        shown = own if len(own) <= 40 else own[:37] + "..."
        raise LitLoraError(f"{where}: the chat template does not write assistant message {i + 1}'s text {shown!r} "
                           "into its turn, so the turn would train on other text; use a template that renders "
                           "each message's content (--data.chat_template plain, a Jinja file)")
    missing = [_call_name(call) for call in message.get("tool_calls") or [] if _call_name(call) not in trained]
    if calls and missing:
        raise _unrendered_call(missing[0], i, where)


def _unrendered_call(name: str, i: int, where: str) -> LitLoraError:
    return LitLoraError(f"{where}: assistant message {i + 1} calls tool {name!r}, but the chat template does not "
                        "render tool_calls (no such name in its turn), so the call would not train; use a template "
                        "that renders tool calls (a tool-calling model's own) or leave the record out")


def _without_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "tool_calls"} for m in messages]


def _render(tokenizer: Any, template: str, messages: list[dict[str, Any]], prompt: bool, where: str,
            tools: Optional[list[dict[str, Any]]] = None) -> str:
    try:
        return render(tokenizer, template, messages, generation_prompt=prompt, tools=tools)
    except LitLoraError as err:
        raise LitLoraError(f"{where}: the chat template does not render this conversation: {err}") from None


def span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Each token's id where its characters overlap a trained span, else IGNORE_INDEX."""
    starts = np.fromiter((s for s, _ in offsets), dtype=np.int64, count=len(offsets))
    ends = np.fromiter((e for _, e in offsets), dtype=np.int64, count=len(offsets))
    trained = np.zeros(len(ids), dtype=bool)
    for a, b in spans:
        trained |= (starts < b) & (ends > a) | ((starts == ends) & (starts >= a) & (starts < b))
    return np.where(trained, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()


def tokenize_conversations(batch: dict[str, list], tokenizer: Any, template: str, train_on: str,
                           block_size: int) -> dict[str, list]:
    """`datasets.map` function (batched): `input_ids`, `labels` and `truncated` per conversation.

    A conversation longer than `block_size` keeps its first `block_size` tokens; one left with no trained
    token after that cut is dropped (the caller counts the rows that went missing)."""
    die_with_parent()
    texts, all_spans = [], []
    tools = batch.get("tools") or [None] * len(batch["messages"])
    for messages, prompt_turns, where, schemas in zip(batch["messages"], batch["prompt_turns"], batch["where"], tools):
        text, spans = trained_spans(tokenizer, template, template_messages(messages), prompt_turns, train_on, where,
                                    json.loads(schemas) if schemas else None)
        texts.append(text)
        all_spans.append(spans)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out: dict[str, list] = {"input_ids": [], "labels": [], "truncated": []}
    for ids, offsets, spans in zip(enc["input_ids"], enc["offset_mapping"], all_spans):
        labels = span_labels(ids, offsets, spans)[:block_size]
        if all(label == IGNORE_INDEX for label in labels[1:]):  # the first token is never predicted
            continue
        out["input_ids"].append(ids[:block_size])
        out["labels"].append(labels)
        out["truncated"].append(len(ids) > block_size)
    return out
