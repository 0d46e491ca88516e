"""Rebuilding a model from any of our outputs: a LoRA-only checkpoint (`module_from_checkpoint`), a PEFT
adapter folder, a merged model folder, or the base alone (`load_generation_model`). It sits above every
other layer but the CLI, since it needs the module, the hub loaders and the adapter code together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from lit_lora.errors import LitLoraError
from lit_lora.lora.export import export_adapter
from lit_lora.lora.parts import frozen_weights_fingerprint
from lit_lora.lora.wrap import check_adapter_dir, load_adapter_for_training
from lit_lora.pretrained.hub import check_vocabulary, load_base_model, load_tokenizer, tokenizer_source
from lit_lora.pretrained.quantization import bnb_config, quantization_line, quantized_layers
from lit_lora.training.checkpoint_files import load_checkpoint_file
from lit_lora.training.devices import resolve_device
from lit_lora.training.distributed import is_fsdp
from lit_lora.training.module import LitLora


@dataclass
class Restored:
    """A `LitLora` rebuilt from a checkpoint, and the checkpoint it came from (its step, data and val_loss
    go into model cards)."""

    module: LitLora
    checkpoint: dict[str, Any]


def module_from_checkpoint(
    ckpt_path: str, model_name_or_path: Optional[str] = None, base_dtype: Optional[str] = None,
    dequantized: bool = False,
) -> Restored:
    """A `LitLora` with the checkpoint's LoRA weights on a freshly loaded base model (eval mode, CPU), and
    the checkpoint.

    The base comes from the checkpoint's `model_name_or_path` unless `model_name_or_path` overrides it;
    its weights must match the fingerprint recorded at training time. It is quantized as in training,
    unless `dequantized`: then a run trained quantized gets the full-precision base (what `merge` merges
    into; only its unquantized weights can be checked against the fingerprint).
    """
    ckpt = load_checkpoint_file(ckpt_path)
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    _check_hparam_types(hparams, ckpt_path)
    if model_name_or_path:
        hparams["model_name_or_path"] = model_name_or_path
    if base_dtype:
        hparams["base_dtype"] = base_dtype
    hparams["adapter_path"] = None  # the checkpoint already holds the adapter's weights
    hparams["gradient_checkpointing"] = False
    seed = ckpt["lit_lora"].get("seed")
    if hparams.get("model_config") is not None and seed is not None:
        torch.manual_seed(int(seed))  # a randomly initialised base is rebuilt from the run's seed
    dequantized = dequantized and bool(hparams.get("quantization"))
    if dequantized:
        hparams["quantization"] = hparams["quantization_options"] = None
    module = LitLora(**hparams)
    module.check_checkpoint(ckpt, dequantized)  # keys, base fingerprint and quantization
    module.load_state_dict(ckpt["state_dict"], strict=False)
    return Restored(module.eval(), ckpt)


def _check_hparam_types(hparams: dict[str, Any], ckpt_path: str) -> None:
    """The checkpoint's hyperparameters have the types `LitLora` declares, checked as the CLI checks a config:
    a damaged value is one line here, not a wrong adapter file or a TypeError later."""
    from jsonargparse import ArgumentError, ArgumentParser  # start-up: only the commands that read a checkpoint

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(LitLora, "hyper_parameters")
    try:
        parser.parse_object({"hyper_parameters": hparams})
    except ArgumentError as err:  # it names the key and the type expected
        raise LitLoraError(f"checkpoint {ckpt_path!r} is malformed: {' '.join(str(err).split())}") from None


def load_generation_model(
    ckpt_path: Optional[str] = None,
    adapter_path: Optional[str] = None,
    model_dir: Optional[str] = None,
    model_name_or_path: Optional[str] = None,
    tokenizer_name_or_path: Optional[str] = None,
    device: Literal["cpu", "cuda", "auto"] = "cpu",
    dtype: Literal["float32", "bfloat16"] = "float32",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model in eval mode on `device` in `dtype`, tokenizer) from exactly one source:

    - ckpt_path: a lit_lora checkpoint; the base from its saved hyperparameters or `model_name_or_path`.
    - adapter_path: a PEFT adapter folder; the base from `model_name_or_path`, else the folder's
      lit_lora.json / adapter_config.json. A randomly initialised base (lit_lora.json's model_config) is
      rebuilt from the run's seed, and its weights are checked against the fingerprint saved at export.
    - model_dir: a merged (or any plain transformers) model folder.
    - none of them: the base model `model_name_or_path` alone, to compare with the fine-tuned one.

    `trust_remote_code` lets the model's and tokenizer's repositories run their code (a checkpoint trained
    with it on keeps it on).
    """
    given = [name for name, v in (("--ckpt_path", ckpt_path), ("--adapter_path", adapter_path),
                                  ("--model_dir", model_dir)) if v]
    if len(given) > 1:
        raise LitLoraError(f"give one model source, not {' and '.join(given)}")
    if dtype not in ("float32", "bfloat16"):
        raise LitLoraError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    target = resolve_device(device)  # before loading anything: a missing GPU is reported at once
    trust = trust_remote_code
    template = None
    if ckpt_path:
        restored = module_from_checkpoint(ckpt_path, model_name_or_path)
        model, hp = restored.module.model, restored.module.hparams
        template = restored.checkpoint.get("lit_lora", {}).get("chat_template")
        trust = trust or bool(hp.get("trust_remote_code"))
        source = tokenizer_name_or_path or tokenizer_source(hp.get("tokenizer_name_or_path"), hp["model_name_or_path"])
    elif adapter_path:
        model, source, trust = _load_adapter(adapter_path, model_name_or_path, tokenizer_name_or_path, trust)
    elif model_dir:
        if not (Path(model_dir) / "config.json").is_file():
            raise LitLoraError(f"--model_dir {model_dir!r} is not a transformers model folder (no config.json)")
        model = load_base_model(model_dir, trust_remote_code=trust)
        source = tokenizer_source(tokenizer_name_or_path, model_dir)
    elif model_name_or_path:
        model = load_base_model(model_name_or_path, trust_remote_code=trust)
        source = tokenizer_source(tokenizer_name_or_path, model_name_or_path)
    else:
        raise LitLoraError(
            "no model: give --ckpt_path FILE, --adapter_path DIR, --model_dir DIR, or --model.model_name_or_path "
            "for the base model alone"
        )
    tokenizer = load_tokenizer(source, trust_remote_code=trust)
    check_vocabulary(model, tokenizer)
    if template:  # what the checkpoint's conversations were rendered with
        tokenizer.chat_template = template
    quantized = bool(quantized_layers(model))
    if quantized and dtype != "float32":
        raise LitLoraError(f"--dtype {dtype} converts every weight, but this model's base is quantized "
                           f"({quantization_line(model)}); drop --dtype (its layers compute in their compute dtype)")
    # The whole model, LoRA weights included, in one dtype: bf16 on CPU works this way without autocast.
    model = model.to(device=target) if quantized else model.to(device=target, dtype=getattr(torch, dtype))
    return model.eval(), tokenizer


def _load_adapter(
    adapter_path: str, model_name_or_path: Optional[str], tokenizer_name_or_path: Optional[str], trust: bool
) -> tuple[Any, str, bool]:
    """(model, tokenizer source, trust_remote_code: asked for, or recorded at export)."""
    folder = check_adapter_dir(adapter_path, "--adapter_path")
    peft_config = _read_json(folder / "adapter_config.json")
    # lit_lora.json is written by our export; adapters from elsewhere have only adapter_config.json.
    info = _read_json(folder / "lit_lora.json") if (folder / "lit_lora.json").is_file() else {}
    trust = trust or bool(info.get("trust_remote_code"))
    base = model_name_or_path or info.get("base_model") or peft_config.get("base_model_name_or_path")
    model_config = info.get("model_config")
    if not base and model_config is None:
        raise LitLoraError(
            f"--adapter_path {adapter_path!r} does not name its base model; give --model.model_name_or_path"
        )
    # An adapter trained on conversations carries its tokenizer, chat template included (lora/export.py).
    own = str(folder) if (folder / "tokenizer_config.json").is_file() else None
    recorded_tokenizer = tokenizer_name_or_path or own or info.get("tokenizer_name_or_path")
    tokenizer = recorded_tokenizer or base
    if model_config is not None and not recorded_tokenizer:
        raise LitLoraError(
            "the adapter was trained on a randomly initialised base (model_config); give its tokenizer with "
            "--model.tokenizer_name_or_path"
        )
    if model_config is not None and info.get("seed") is not None:
        torch.manual_seed(int(info["seed"]))  # the same random base the adapter was trained on
    # The base as it was trained: quantized if it was (lit_lora.json says how).
    method, options = info.get("quantization"), info.get("quantization_options")
    quantization = bnb_config(method, options, info.get("base_dtype")) if method else None
    base_model = load_base_model(base, model_config, info.get("base_dtype") if method else None,
                                 trust_remote_code=trust, quantization=quantization)
    model = load_adapter_for_training(base_model, adapter_path, "--adapter_path")
    expected = info.get("base_fingerprint")
    # The fingerprint covers frozen weights only, so it is taken while the LoRA weights are still trainable.
    found = frozen_weights_fingerprint(model, linear_weights=not method)
    if expected and found != expected:
        raise LitLoraError(
            f"the base model's weights differ from those the adapter was trained on (fingerprint "
            f"{found} != {expected}); check --model.model_name_or_path"
        )
    model.requires_grad_(False)
    return model, tokenizer, trust


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LitLoraError(f"{path} cannot be read as JSON ({err}); is the adapter folder complete?") from err
    if not isinstance(value, dict):
        raise LitLoraError(f"{path} holds a {type(value).__name__}, expected a JSON object")
    return value


def export_best_checkpoint(trainer: Any, module: LitLora, out_dir: str) -> Optional[tuple[str, Path]]:
    """What `fit` does at its end: export the best checkpoint (or the last, without validation) as a PEFT
    adapter into `out_dir`, replacing the adapter an earlier part of this run exported there. Returns the
    checkpoint exported and the folder written, or None when there is no checkpoint."""
    callback = trainer.checkpoint_callback
    best = (callback.best_model_path or callback.last_model_path) if callback is not None else None
    if not best or not Path(best).is_file():
        return None
    if is_fsdp(trainer.model):  # each rank holds a slice of the weights: rebuild the model whole
        restored = module_from_checkpoint(best)
        return best, export_adapter(restored.module, out_dir, checkpoint=restored.checkpoint, overwrite=True)
    # The trained model is in memory: write the best checkpoint's LoRA weights with it.
    return best, export_adapter(module, out_dir, checkpoint=load_checkpoint_file(best), overwrite=True)
