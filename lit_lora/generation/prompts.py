"""Prompts in, completions out: reading prompt files, left-padded prompt batches, and completion records
(the JSONL lines `generate --output` and `predict` write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import ROLES, chat_prompt_ids, stop_ids
from lit_lora.generation.decode import decode_completion, generate_ids
from lit_lora.generation.settings import GenerationSettings
from lit_lora.jsonl import decode_line, read_jsonl
from lit_lora.pretrained.hub import bos_prefix

Prompt = Union[str, list[dict[str, str]]]  # a text to continue, or a conversation to reply to


def conversation(value: Any, where: str) -> list[dict[str, str]]:
    """A message list to reply to: `{"messages": [...]}` or the list itself, roles and content checked."""
    messages = value.get("messages") if isinstance(value, dict) else value
    if not isinstance(messages, list) or not messages:
        raise LitLoraError(f"{where}: expected a list of messages or an object with a 'messages' list")
    for n, m in enumerate(messages, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise LitLoraError(f"{where}: message {n} needs a role (one of {', '.join(ROLES)}) and a string content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_messages(path: str) -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file: one message list (or `{"messages": [...]}`) per line."""
    if not Path(path).is_file():
        raise LitLoraError(f"messages file {path!r} does not exist")
    found = [conversation(record, f"{path}:{n}") for n, record in read_jsonl(path, lists=True)]
    if not found:
        raise LitLoraError(f"messages file {path!r} holds no conversations")
    return found


def read_prompts(path: str) -> list[Prompt]:
    """Prompts from a file: one per line of a text file (blank lines skipped), or the `prompt` field of each
    JSONL record (.jsonl/.json; prompts may then hold newlines), or its `messages` (or the record, a message
    list: a conversation to reply to, with the chat template)."""
    p = Path(path)
    if not p.is_file():
        raise LitLoraError(f"prompts file {path!r} does not exist")
    if p.suffix not in (".jsonl", ".json"):
        with open(p, "rb") as fh:
            lines = [decode_line(raw, path, n).rstrip("\r\n") for n, raw in enumerate(fh, 1)]
        prompts = [line for line in lines if line.strip()]
    else:
        prompts = []
        for n, record in read_jsonl(path, lists=True):
            if isinstance(record, list) or isinstance(record, dict) and "messages" in record:
                prompts.append(conversation(record, f"{path}:{n}"))
                continue
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise LitLoraError(f"{path}:{n}: expected a JSON object with a string 'prompt' or a 'messages' list")
            prompts.append(record["prompt"])
    if not prompts:
        raise LitLoraError(f"prompts file {path!r} holds no prompts")
    return prompts


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A prompt's tokens as training saw a document start: the family's BOS first, if its tokenizer adds one.
    An empty prompt without BOS becomes EOS alone: GPT-2 was trained with EOS before each document."""
    ids = bos_prefix(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids or [tokenizer.eos_token_id]


def encode_prompts(tokenizer: Any, prompts: list[Prompt], chat_template: Optional[str] = None
                   ) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` (B, T) for a batch of prompts (see `prompt_ids`); a
    conversation is the chat template's prompt for the assistant's reply (`chat.chat_prompt_ids`)."""
    eos = tokenizer.eos_token_id
    if chat_template is None and any(isinstance(p, list) for p in prompts):
        raise LitLoraError("conversations need a chat template (none was given)")
    ids = [chat_prompt_ids(tokenizer, chat_template, p) if isinstance(p, list) else prompt_ids(tokenizer, p)
           for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), eos, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x) :] = torch.tensor(x)
        mask[row, width - len(x) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def completion_records(
    tokenizer: Any, ids: list[int], prompts: list[Prompt], tokens: torch.Tensor, stop: Optional[list[int]] = None
) -> list[dict[str, Any]]:
    """JSONL records {"id", "sample", "prompt", "completion"}: one per generated sequence, the same
    prompt/completion fields our training data uses (for a conversation, TRL's: the prompt's messages and
    the reply as one assistant message)."""
    n = tokens.shape[0] // max(len(prompts), 1)
    records = []
    for row in range(tokens.shape[0]):
        prompt, text = prompts[row // n], decode_completion(tokenizer, tokens[row], stop)
        # A reply's first token carries the space after the template's "Assistant:"; the message does not.
        completion: Any = [{"role": "assistant", "content": text.strip()}] if isinstance(prompt, list) else text
        records.append({"id": int(ids[row // n]), "sample": row % n, "prompt": prompt, "completion": completion})
    return records


def generate_records(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    settings: GenerationSettings,
    batch_size: int = 8,
    streamer: Any = None,
    chat_template: Optional[str] = None,
) -> Iterator[dict[str, Any]]:
    """Generate for `prompts` in batches of `batch_size`, yielding each batch's records when it is done.
    Replies to conversations stop at EOS or the template's end-of-turn token."""
    if batch_size < 1:
        raise LitLoraError(f"batch_size must be at least 1, got {batch_size}")
    stop = stop_ids(tokenizer, chat_template) if chat_template else [tokenizer.eos_token_id]
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        enc = encode_prompts(tokenizer, chunk, chat_template)
        tokens = generate_ids(model, enc["input_ids"], enc["attention_mask"], settings, stop, seed_offset=b,
                              streamer=streamer)
        yield from completion_records(tokenizer, list(range(start, start + len(chunk))), chunk, tokens.cpu(), stop)
