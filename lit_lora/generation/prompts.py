"""Prompts in, completions out: reading prompt files, left-padded prompt batches, and completion records
(the JSONL lines `generate --output` and `predict` write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from lit_lora.errors import LitLoraError
from lit_lora.hub import bos_prefix
from lit_lora.jsonl import decode_line, read_jsonl
from lit_lora.generation.decode import decode_completion, generate_ids
from lit_lora.generation.settings import GenerationSettings


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: one per line of a text file (blank lines skipped), or the `prompt` field of each
    JSONL record (.jsonl/.json; prompts may then hold newlines)."""
    p = Path(path)
    if not p.is_file():
        raise LitLoraError(f"prompts file {path!r} does not exist")
    if p.suffix not in (".jsonl", ".json"):
        with open(p, "rb") as fh:
            lines = [decode_line(raw, path, n).rstrip("\r\n") for n, raw in enumerate(fh, 1)]
        prompts = [line for line in lines if line.strip()]
    else:
        prompts = []
        for n, record in read_jsonl(path):
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise LitLoraError(f"{path}:{n}: expected a JSON object with a string 'prompt' field")
            prompts.append(record["prompt"])
    if not prompts:
        raise LitLoraError(f"prompts file {path!r} holds no prompts")
    return prompts


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A prompt's tokens as training saw a document start: the family's BOS first, if its tokenizer adds one.
    An empty prompt without BOS becomes EOS alone: GPT-2 was trained with EOS before each document."""
    ids = bos_prefix(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids or [tokenizer.eos_token_id]


def encode_prompts(tokenizer: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` (B, T) for a batch of prompts (see `prompt_ids`)."""
    eos = tokenizer.eos_token_id
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), eos, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x) :] = torch.tensor(x)
        mask[row, width - len(x) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def completion_records(
    tokenizer: Any, ids: list[int], prompts: list[str], tokens: torch.Tensor
) -> list[dict[str, Any]]:
    """JSONL records {"id", "sample", "prompt", "completion"}: one per generated sequence, the same
    prompt/completion fields our training data uses."""
    n = tokens.shape[0] // max(len(prompts), 1)
    return [
        {"id": int(ids[row // n]), "sample": row % n, "prompt": prompts[row // n],
         "completion": decode_completion(tokenizer, tokens[row])}
        for row in range(tokens.shape[0])
    ]


def generate_records(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    settings: GenerationSettings,
    batch_size: int = 8,
    streamer: Any = None,
) -> Iterator[dict[str, Any]]:
    """Generate for `prompts` in batches of `batch_size`, yielding each batch's records when it is done."""
    if batch_size < 1:
        raise LitLoraError(f"batch_size must be at least 1, got {batch_size}")
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        enc = encode_prompts(tokenizer, chunk)
        tokens = generate_ids(
            model, enc["input_ids"], enc["attention_mask"], settings, tokenizer.eos_token_id,
            seed_offset=b, streamer=streamer,
        )
        yield from completion_records(tokenizer, list(range(start, start + len(chunk))), chunk, tokens.cpu())
