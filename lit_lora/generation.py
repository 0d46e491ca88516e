"""Text generation with a fine-tuned model, shared by `generate` (our own subcommand) and `predict`
(LightningCLI, see prediction.py): the settings, loading a model from any of our outputs, batched generation.

    python -m lit_lora.cli generate --ckpt_path CKPT --prompt "Once upon a time" --temperature 0
    python -m lit_lora.cli predict --config my.yaml --ckpt_path CKPT --data.predict_file prompts.txt

Batches are LEFT-padded: every prompt ends in the last column, so the first new token of every row is
predicted from the same position it would be alone, and positions come from the attention mask (transformers
builds position_ids from it): greedy batched output equals one-prompt-at-a-time output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch

from lit_lora.errors import LitLoraError
from lit_lora.settings import coerce_settings


@dataclass
class GenerationSettings:
    """How completions are generated (the same for `generate` and `predict`).

    Args:
        max_new_tokens: Tokens generated after each prompt; fewer when the model emits EOS.
        temperature: 0 is greedy decoding (deterministic, no seed needed); above 0 samples, higher is more random.
        top_k: When sampling, draw only from the k most likely tokens; 0 or None: no limit.
        top_p: When sampling, draw from the smallest set of tokens whose probabilities add up to top_p (nucleus);
            1.0: no limit.
        num_return_sequences: Completions per prompt (needs sampling: greedy would repeat one).
        seed: Seed of the sampling RNG, reset before each batch: the same seed, prompts and batch size give
            the same text. None: a different draw every run.
    """

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: Optional[int] = 50
    top_p: float = 1.0
    num_return_sequences: int = 1
    seed: Optional[int] = 1234

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise LitLoraError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LitLoraError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise LitLoraError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise LitLoraError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_return_sequences < 1:
            raise LitLoraError(f"num_return_sequences must be at least 1, got {self.num_return_sequences}")
        if self.greedy and self.num_return_sequences > 1:
            raise LitLoraError(
                "num_return_sequences > 1 needs sampling (temperature > 0): greedy decoding gives one completion"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def coerce(cls, value: "GenerationSettings | dict | None") -> "GenerationSettings":
        return coerce_settings(cls, value, "generation settings")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self, eos_token_id: int) -> dict[str, Any]:
        """Keyword arguments for `model.generate`; every value is set so the model's own
        generation_config (e.g. the hub's defaults for gpt2) cannot change what the user asked for."""
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=self.num_return_sequences,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,  # finished rows are padded with EOS; cut off by decode_completion
        )
        if self.greedy:
            # None, not 1.0/50: transformers warns about sampling settings passed to greedy decoding.
            return kwargs | dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        return kwargs | dict(do_sample=True, temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p)


# -- prompts in, tokens out ----------------------------------------------------------------------------------


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: one per line of a text file (blank lines skipped), or the `prompt` field of each
    JSONL record (.jsonl/.json; prompts may then hold newlines)."""
    p = Path(path)
    if not p.is_file():
        raise LitLoraError(f"prompts file {path!r} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix not in (".jsonl", ".json"):
        prompts = [line for line in text.splitlines() if line.strip()]
    else:
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LitLoraError(f"{path}:{n}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise LitLoraError(f"{path}:{n}: expected a JSON object with a string 'prompt' field")
            prompts.append(record["prompt"])
    if not prompts:
        raise LitLoraError(f"prompts file {path!r} holds no prompts")
    return prompts


def encode_prompts(tokenizer: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` (B, T) for a batch of prompts.

    An empty prompt becomes EOS alone: GPT-2 was trained with EOS before each document, so it is the start.
    """
    eos = tokenizer.eos_token_id
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] or [eos] for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), eos, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x) :] = torch.tensor(x)
        mask[row, width - len(x) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def context_length(model: Any) -> Optional[int]:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


@torch.inference_mode()
def generate_ids(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    eos_token_id: int,
    seed_offset: int = 0,
    streamer: Any = None,
) -> torch.Tensor:
    """The new tokens, (B * num_return_sequences, <= max_new_tokens), the sequences of prompt b in rows
    b * n ... b * n + n - 1; rows that ended early are padded with EOS.

    input_ids/attention_mask must be left-padded (see `encode_prompts`). Prompts longer than the model's
    context minus max_new_tokens keep their last tokens.
    """
    n_ctx = context_length(model)
    if n_ctx is not None:
        keep = n_ctx - settings.max_new_tokens
        if keep < 1:
            raise LitLoraError(
                f"max_new_tokens={settings.max_new_tokens} leaves no room for the prompt in the model's "
                f"context of {n_ctx} tokens"
            )
        if input_ids.shape[1] > keep:
            # Left padding puts every prompt's end in the last column, so dropping columns on the left cuts
            # the oldest tokens of the long prompts only.
            print(f"lit_lora: prompts longer than {keep} tokens keep their last {keep} "
                  f"(context {n_ctx} - max_new_tokens {settings.max_new_tokens})", file=sys.stderr)
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


def decode_completion(tokenizer: Any, tokens: torch.Tensor) -> str:
    """Text of one row of `generate_ids`, up to (not including) its first EOS."""
    ids = tokens.tolist()
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


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


# -- models: a checkpoint, an adapter folder, a merged folder, or the base alone ----------------------------


def resolve_device(device: Literal["cpu", "cuda", "auto"]) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LitLoraError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise LitLoraError(f"--device must be cpu, cuda or auto, got {device!r}")
    return torch.device(device)


def load_generation_model(
    ckpt_path: Optional[str] = None,
    adapter_path: Optional[str] = None,
    model_dir: Optional[str] = None,
    model_name_or_path: Optional[str] = None,
    tokenizer_name_or_path: Optional[str] = None,
    device: Literal["cpu", "cuda", "auto"] = "cpu",
    dtype: Literal["float32", "bfloat16"] = "float32",
) -> tuple[Any, Any]:
    """(model in eval mode on `device` in `dtype`, tokenizer) from exactly one source:

    - ckpt_path: a lit_lora checkpoint; the base from its saved hyperparameters or `model_name_or_path`.
    - adapter_path: a PEFT adapter folder; the base from `model_name_or_path`, else the folder's
      lit_lora.json / adapter_config.json. A randomly initialised base (lit_lora.json's model_config) is
      rebuilt from the run's seed, and its weights are checked against the fingerprint saved at export.
    - model_dir: a merged (or any plain transformers) model folder.
    - none of them: the base model `model_name_or_path` alone, to compare with the fine-tuned one.
    """
    from lit_lora.hf_loading import load_base_model, load_tokenizer

    given = [name for name, v in (("--ckpt_path", ckpt_path), ("--adapter_path", adapter_path),
                                  ("--model_dir", model_dir)) if v]
    if len(given) > 1:
        raise LitLoraError(f"give one model source, not {' and '.join(given)}")
    if dtype not in ("float32", "bfloat16"):
        raise LitLoraError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    target = resolve_device(device)  # before loading anything: a missing GPU is reported at once
    if ckpt_path:
        from lit_lora.adapter_io import module_from_checkpoint

        module = module_from_checkpoint(ckpt_path, model_name_or_path)
        model = module.model
        tokenizer_source = (tokenizer_name_or_path or module.hparams.get("tokenizer_name_or_path")
                            or module.hparams["model_name_or_path"])
    elif adapter_path:
        model, tokenizer_source = _load_adapter(adapter_path, model_name_or_path, tokenizer_name_or_path)
    elif model_dir:
        if not (Path(model_dir) / "config.json").is_file():
            raise LitLoraError(f"--model_dir {model_dir!r} is not a transformers model folder (no config.json)")
        model = load_base_model(model_dir)
        tokenizer_source = tokenizer_name_or_path or model_dir
    elif model_name_or_path:
        model = load_base_model(model_name_or_path)
        tokenizer_source = tokenizer_name_or_path or model_name_or_path
    else:
        raise LitLoraError(
            "no model: give --ckpt_path FILE, --adapter_path DIR, --model_dir DIR, or --model.model_name_or_path "
            "for the base model alone"
        )
    tokenizer = load_tokenizer(tokenizer_source)
    # The whole model, LoRA weights included, in one dtype: bf16 on CPU works this way without autocast.
    model = model.to(device=target, dtype=getattr(torch, dtype))
    return model.eval(), tokenizer


def _load_adapter(
    adapter_path: str, model_name_or_path: Optional[str], tokenizer_name_or_path: Optional[str]
) -> tuple[Any, str]:
    from lit_lora.adapter_io import load_adapter_for_training
    from lit_lora.hf_loading import load_base_model
    from lit_lora.model import frozen_weights_fingerprint

    folder = Path(adapter_path)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise LitLoraError(f"--adapter_path {adapter_path!r} is not a PEFT adapter folder (no adapter_config.json)")
    peft_config = json.loads(config_file.read_text(encoding="utf-8"))
    # lit_lora.json is written by our export; adapters from elsewhere have only adapter_config.json.
    info_file = folder / "lit_lora.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    base = model_name_or_path or info.get("base_model") or peft_config.get("base_model_name_or_path")
    model_config = info.get("model_config")
    if not base and model_config is None:
        raise LitLoraError(
            f"--adapter_path {adapter_path!r} does not name its base model; give --model.model_name_or_path"
        )
    recorded_tokenizer = tokenizer_name_or_path or info.get("tokenizer_name_or_path")
    tokenizer = recorded_tokenizer or base
    if model_config is not None and not recorded_tokenizer:
        raise LitLoraError(
            "the adapter was trained on a randomly initialised base (model_config); give its tokenizer with "
            "--model.tokenizer_name_or_path"
        )
    if model_config is not None and info.get("seed") is not None:
        torch.manual_seed(int(info["seed"]))  # the same random base the adapter was trained on
    model = load_adapter_for_training(load_base_model(base, model_config), adapter_path)
    expected = info.get("base_fingerprint")
    # The fingerprint covers frozen weights only, so it is taken while the LoRA weights are still trainable.
    if expected and frozen_weights_fingerprint(model) != expected:
        raise LitLoraError(
            f"the base model's weights differ from those the adapter was trained on (fingerprint "
            f"{frozen_weights_fingerprint(model)} != {expected}); check --model.model_name_or_path"
        )
    model.requires_grad_(False)
    return model, tokenizer
