"""Loading base models and tokenizers from the hub or a local directory, with errors users can act on."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from lit_lora.errors import LitLoraError

_OFFLINE_HINT = (
    "the Hugging Face hub is unreachable from here (offline or HF_HUB_OFFLINE=1); "
    "point it at a local directory holding config.json and the weights, e.g. one written by "
    "`model.save_pretrained(DIR)` or `huggingface-cli download gpt2 --local-dir DIR` on a machine with network"
)


def _not_found(what: str, name: str, err: Exception) -> LitLoraError:
    if Path(name).expanduser().exists():
        return LitLoraError(f"{what} {name!r} is a local path but could not be loaded: {err}")
    return LitLoraError(f"{what} {name!r} is neither a local directory nor loadable from the hub: {_OFFLINE_HINT}")


def tokenizer_source(tokenizer_name_or_path: Optional[str], model_name_or_path: str) -> str:
    """The tokenizer to load: the one named, else the model's own folder or hub id."""
    return tokenizer_name_or_path or model_name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer with `AutoTokenizer.from_pretrained` and give it a pad token if it has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _not_found("tokenizer", name_or_path, err) from err
    if tokenizer.eos_token_id is None:
        raise LitLoraError(f"tokenizer {name_or_path!r} has no EOS token; documents cannot be separated")
    if tokenizer.pad_token_id is None:
        # Padding is masked by attention_mask and label -100, never by id, so reusing EOS is safe and the
        # model still learns to emit EOS.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name_or_path: str,
    model_config: Optional[dict[str, Any]] = None,
    dtype: Optional[str] = None,
    attn_implementation: Optional[str] = "sdpa",
    trust_remote_code: bool = False,
) -> Any:
    """Load the causal LM to adapt: `from_pretrained(name_or_path)`, or a randomly initialised GPT-2 of
    the shape `model_config` (GPT2Config fields) when that is given, which needs no download."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch_dtype = getattr(torch, dtype) if dtype else None
    if model_config is not None:
        try:
            config = GPT2Config(**model_config)
        except TypeError as err:
            raise LitLoraError(f"model.model_config is not a valid GPT2Config: {err}") from err
        if attn_implementation:
            config._attn_implementation = attn_implementation
        model = GPT2LMHeadModel(config)
        return model.to(torch_dtype) if torch_dtype is not None else model
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with _no_loading_bar(Path(name_or_path).expanduser().is_dir()):
            return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise _not_found("model.model_name_or_path", name_or_path, err) from err


@contextmanager
def _no_loading_bar(local: bool) -> Iterator[None]:
    """transformers 5 draws a "Loading weights" bar for every from_pretrained, even of a tiny local model;
    a download from the hub keeps its bars (they are worth watching)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if local and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if local and was_on:
            hf_logging.enable_progress_bar()
