"""Writing a trained adapter out: PEFT's adapter format, or merged into a plain transformers model, each
with a model card. Folders appear whole or not at all, and only where `lit_lora.outputs` allows (never
over files that are not ours)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from lit_lora.errors import LitLoraError
from lit_lora.outputs import write_dir_atomically
from lit_lora.lora.plain_lora import lora_scales, rewrite_as_plain_lora
from lit_lora.pretrained.hub import load_tokenizer, no_loading_bar, tokenizer_source
from lit_lora.pretrained.hub_id import hub_id


class AdapterSource(Protocol):
    """What export and merge read from a trained module (`LitLora` is one)."""

    model: Any  # the PEFT model
    hparams: Any  # model_name_or_path, model_config, tokenizer_name_or_path, lora
    initial_lora: Optional[dict[str, Any]]  # a PiSSA/OLoRA adapter's initial weights (lora/plain_lora.py)

    def base_fingerprint(self) -> str: ...


def weights_of(module: AdapterSource, checkpoint: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The LoRA tensors being written: the checkpoint's, or the module's trainable ones."""
    if checkpoint and "state_dict" in checkpoint:
        return checkpoint["state_dict"]
    return {n: p for n, p in module.model.named_parameters() if p.requires_grad}


def check_finite(weights: dict[str, Any]) -> None:
    """A NaN or Inf in the LoRA weights would poison every output of the exported model: refuse it."""
    bad = [name for name, t in weights.items() if not bool(t.detach().isfinite().all())]
    if bad:
        raise LitLoraError(
            f"{len(bad)} of {len(weights)} LoRA tensors hold NaN or Inf values (e.g. {bad[0]}); nothing was "
            "written. Export an earlier checkpoint (the run saved before the loss went non-finite)"
        )


def model_card(module: AdapterSource, ckpt: Optional[dict[str, Any]], kind: str,
               gguf_usage: Optional[list[str]] = None) -> str:
    """The README of an output folder; `gguf_usage`: the lines that say how to run a GGUF file instead of
    the transformers code that loads a folder."""
    hp = module.hparams
    lora = hp.get("lora", {})
    meta = (ckpt or {}).get("lit_lora", {})
    data = (ckpt or {}).get("datamodule_hyper_parameters", {})
    step = (ckpt or {}).get("global_step", "n/a")
    val = meta.get("val_loss")
    lines = [
        "---",
        "library_name: gguf" if gguf_usage else "library_name: peft" if kind == "adapter" else "library_name: transformers",
        f"base_model: {hub_id(hp['model_name_or_path'])}",
        "tags: [lora, lit_lora]",
        "---",
        "",
        f"# {'LoRA adapter' if kind == 'adapter' else 'Merged LoRA model'} trained with lit_lora",
        "",
        f"- Base model: `{hp['model_name_or_path']}`" + (" (randomly initialised shape)" if hp.get("model_config") is not None else ""),
        f"- Base weights fingerprint: `{module.base_fingerprint()}`",
        f"- LoRA: r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
        f"target_modules={lora.get('target_modules')}",
        f"- Data: {data.get('train_files') or data.get('dataset_name') or 'n/a'} (block_size={data.get('block_size', 'n/a')})",
        f"- Steps: {step}",
        f"- Final val_loss: {val:.4f}" if isinstance(val, float) else "- Final val_loss: n/a",
        *([_template_line(kind, bool(gguf_usage))] if meta.get("chat_template") else []),
        *_quantization_lines(meta.get("quantization") or hp.get("quantization"), kind),
        "",
    ]
    if gguf_usage:
        return "\n".join(lines + gguf_usage + [""])
    lines += ["Load with:", "", "```python"]
    if kind == "adapter":
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({hp['model_name_or_path']!r}), DIR)",
        ]
    else:
        lines += ["from transformers import AutoModelForCausalLM", "model = AutoModelForCausalLM.from_pretrained(DIR)"]
    return "\n".join(lines + ["```", ""])


def _template_line(kind: str, gguf: bool) -> str:
    """Where the run's chat template is in the output."""
    if not gguf:
        return "- Chat template: in the tokenizer files (`apply_chat_template` renders prompts as training did)"
    if kind == "merged":
        return "- Chat template: in the GGUF metadata (`tokenizer.chat_template`), as llama.cpp's converter writes it"
    return ("- Chat template: `chat_template.jinja` (llama.cpp's LoRA converter writes none into the adapter: "
            "pass it with `--chat-template-file`)")


def _quantization_lines(quantization: Optional[str], kind: str) -> list[str]:
    """What a card says of a base quantized in training (docs/memory-and-qlora.md has the measured differences)."""
    if not quantization:
        return []
    if kind == "adapter":
        return [f"- Trained on the base quantized with bitsandbytes ({quantization}): load the base the same way "
                "(`BitsAndBytesConfig`, as lit_lora.json records) for the training model's outputs; on the "
                "full-precision base the outputs differ by the quantization error"]
    return [f"- Trained on the base quantized with bitsandbytes ({quantization}); LoRA is merged into the "
            "full-precision base weights, so outputs differ from the training model's by the quantization error"]


def _tokenizer_with_template(module: AdapterSource, checkpoint: Optional[dict[str, Any]], always: bool) -> Any:
    """The run's tokenizer, carrying the chat template the checkpoint records (so plain transformers'
    `apply_chat_template` renders prompts as training did); None when not `always` and there is none."""
    template = (checkpoint or {}).get("lit_lora", {}).get("chat_template")
    if not template and not always:
        return None
    hp = module.hparams
    tokenizer = load_tokenizer(tokenizer_source(hp.get("tokenizer_name_or_path"), hp["model_name_or_path"]),
                               trust_remote_code=bool(hp.get("trust_remote_code")))
    if template:
        tokenizer.chat_template = template
    return tokenizer


def export_adapter(
    module: AdapterSource, output_dir: str, checkpoint: Optional[dict[str, Any]] = None, overwrite: bool = False
) -> Path:
    """Write `adapter_model.safetensors` + `adapter_config.json` + a README model card (PEFT's format), as
    plain LoRA (`lora.plain_lora`: rsLoRA's scale in alpha, PiSSA/OLoRA converted for the original base),
    naming the base by its hub id where one is known.

    With `checkpoint` (a lit_lora checkpoint of this module's run) its LoRA weights are written instead of
    the module's own, so the end of `fit` exports its best checkpoint without loading a second base model.
    """
    fill = adapter_writer(module, checkpoint)
    return write_dir_atomically(output_dir, "adapter", fill, "--output_dir", overwrite)


def adapter_writer(module: AdapterSource, checkpoint: Optional[dict[str, Any]]) -> Callable[[Path], None]:
    """What `export_adapter` writes into a folder, checked (finite weights) and prepared before any writing."""
    peft_model = module.model
    check_finite(weights_of(module, checkpoint))
    tokenizer = _tokenizer_with_template(module, checkpoint, always=False)
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = hub_id(module.hparams["model_name_or_path"])
    initial = getattr(module, "initial_lora", None)
    # PEFT's save_pretrained filters a state dict under the PeftModel's own names ("model." is LitLora's).
    weights = None
    if checkpoint and "state_dict" in checkpoint:
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}

    def fill(tmp: Path) -> None:
        # save_embedding_layers=False: we never resize the vocabulary, and "auto" looks the base model's
        # config up on the hub (a network call, and a warning when offline or for a random-init base).
        # Only the trained adapter: a preference run's frozen reference copy ("ref") is not its result.
        peft_model.save_pretrained(str(tmp), safe_serialization=True, state_dict=weights, save_embedding_layers=False,
                                   selected_adapters=["default"])
        rewrite_as_plain_lora(tmp, lora_scales(peft_model), initial)
        (tmp / "README.md").write_text(model_card(module, checkpoint, "adapter"), encoding="utf-8")
        # A converted PiSSA/OLoRA adapter fits the original base, not the changed one the fingerprint is of.
        info = {"base_model": module.hparams["model_name_or_path"],
                "base_fingerprint": module.base_fingerprint() if initial is None else None,
                "model_config": module.hparams.get("model_config"),
                "seed": (checkpoint or {}).get("lit_lora", {}).get("seed"),
                # `generate --adapter_path` needs it when the base is random-init (no tokenizer beside it).
                "tokenizer_name_or_path": module.hparams.get("tokenizer_name_or_path"),
                "trust_remote_code": bool(module.hparams.get("trust_remote_code")),
                # A QLoRA adapter's base, quantized as in training (lit_lora.pretrained.quantization).
                "quantization": module.hparams.get("quantization"),
                "quantization_options": module.hparams.get("quantization_options"),
                "base_dtype": module.hparams.get("base_dtype")}
        (tmp / "lit_lora.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        if tokenizer is not None:  # a chat model: its template travels with the adapter
            tokenizer.save_pretrained(str(tmp))

    return fill


def merge_to_dir(
    module: AdapterSource, output_dir: str, checkpoint: Optional[dict[str, Any]] = None, overwrite: bool = False
) -> Path:
    """Merge LoRA into the base weights (`merge_and_unload`) and save a plain transformers model + tokenizer."""
    return write_dir_atomically(output_dir, "merged", merged_writer(module, checkpoint), "--output_dir", overwrite)


def merged_writer(module: AdapterSource, checkpoint: Optional[dict[str, Any]]) -> Callable[[Path], None]:
    """What `merge_to_dir` writes into a folder; the merge itself happens here, before any writing."""
    tokenizer = _tokenizer_with_template(module, checkpoint, always=True)
    check_finite(weights_of(module, checkpoint))
    merged = module.model.merge_and_unload()

    def fill(tmp: Path) -> None:
        with no_loading_bar():
            merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card(module, checkpoint, "merged"), encoding="utf-8")

    return fill
