"""Decoding, in one place. `generate_ids` runs transformers' batched `generate` (the `generate` and
`predict` commands); `sample_tokens` is a small KV-cache loop with a private `torch.Generator` for the
samples logged at validation, because `generate` samples from the global RNG and exact resume needs that
RNG untouched. Both keep the prompt inside the model's context the same way.

Batches are LEFT-padded: every prompt ends in the last column, so the first new token of every row is
predicted from the same position it would be alone, and positions come from the attention mask (transformers
builds position_ids from it): greedy batched output equals one-prompt-at-a-time output.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

import torch

from lit_lora.errors import LitLoraError
from lit_lora.generation.settings import GenerationSettings
from lit_lora.lora.parts import base_model, context_length
from lit_lora.notes import print_note


def prompt_room(model: Any, max_new_tokens: int) -> Optional[int]:
    """How many prompt tokens fit before `max_new_tokens` new ones in the model's context (None: no limit)."""
    n_ctx = context_length(model)
    if n_ctx is None:
        return None
    keep = n_ctx - max_new_tokens
    if keep < 1:
        raise LitLoraError(
            f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's context of {n_ctx} tokens"
        )
    return keep


@torch.inference_mode()
def generate_ids(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    eos_token_id: Union[int, list[int]],
    seed_offset: int = 0,
    streamer: Any = None,
) -> torch.Tensor:
    """The new tokens, (B * num_return_sequences, <= max_new_tokens), the sequences of prompt b in rows
    b * n ... b * n + n - 1; rows that ended early are padded with EOS.

    input_ids/attention_mask must be left-padded (see `encode_prompts`). Prompts longer than the model's
    context minus max_new_tokens keep their last tokens.
    """
    keep = prompt_room(model, settings.max_new_tokens)
    if keep is not None and input_ids.shape[1] > keep:
        # Left padding puts every prompt's end in the last column, so dropping columns on the left cuts
        # the oldest tokens of the long prompts only.
        print_note(f"prompts longer than {keep} tokens keep their last {keep} "
                   f"(context {context_length(model)} - max_new_tokens {settings.max_new_tokens})")
        input_ids, attention_mask = input_ids[:, -keep:], attention_mask[:, -keep:]
    if not settings.greedy and settings.seed is not None:
        # transformers samples from the global torch RNG; reset per batch so a batch's text does not depend
        # on what ran before it.
        torch.manual_seed(settings.seed + seed_offset)
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        streamer=streamer,
        **settings.generate_kwargs(eos_token_id),
    )
    return out[:, input_ids.shape[1] :]


@torch.no_grad()
def sample_tokens(
    model: Any, prompt_ids: list[int], settings: GenerationSettings, eos_token_id: Union[int, list[int], None]
) -> list[int]:
    """New token ids after `prompt_ids` (one prompt), with a KV cache and a private generator seeded with
    `settings.seed`: the global RNG is not used. A prompt too long for the context keeps its end. Stops
    after `eos_token_id` (or any of several)."""
    stop = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
    device = next(model.parameters()).device
    n_ctx = context_length(model)
    max_new_tokens = min(settings.max_new_tokens, n_ctx - 1) if n_ctx is not None else settings.max_new_tokens
    keep = prompt_room(model, max_new_tokens)
    if keep is not None:
        prompt_ids = prompt_ids[-keep:]
    generator = torch.Generator(device=device).manual_seed(settings.seed or 0)
    ids = torch.tensor([prompt_ids], device=device)
    # transformers 5.x renamed past_key_values to cache (the old name warns); older versions know only that.
    cache_arg = "cache" if "cache" in inspect.signature(base_model(model).forward).parameters else "past_key_values"
    past: Any = None
    out: list[int] = []
    for _ in range(max_new_tokens):
        result = model(input_ids=ids, use_cache=True, **{cache_arg: past})
        past = getattr(result, cache_arg)
        logits = result.logits[0, -1].float()
        if settings.greedy:
            token = logits.argmax().view(1)
        else:
            logits = logits / settings.temperature
            if settings.top_k:
                kth = torch.topk(logits, min(settings.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        value = int(token)
        out.append(value)
        if value in stop:
            break
        ids = token.view(1, 1)
    return out


def decode_completion(tokenizer: Any, tokens: torch.Tensor, stop: Optional[list[int]] = None) -> str:
    """Text of one row of `generate_ids`, up to (not including) its first EOS (or other `stop` id)."""
    ids = tokens.tolist()
    ends = [ids.index(i) for i in (stop or [tokenizer.eos_token_id]) if i in ids]
    return tokenizer.decode(ids[: min(ends)] if ends else ids, skip_special_tokens=True)
