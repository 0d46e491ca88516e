"""Adapters in and out: rebuild a model from a LoRA-only checkpoint, export it in PEFT's format, merge it
into a plain Hugging Face model, or start training from someone's PEFT adapter.

Folders are written beside their target and renamed into place, so they appear whole or not at all, and
only where `lit_lora.outputs` allows (never over files that are not ours).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from lit_lora.checkpointing import load_checkpoint_file
from lit_lora.errors import LitLoraError
from lit_lora.outputs import write_dir_atomically


def module_from_checkpoint(
    ckpt_path: str, model_name_or_path: Optional[str] = None, base_dtype: Optional[str] = None
) -> Any:
    """A `LitLora` with the checkpoint's LoRA weights on a freshly loaded base model (eval mode, CPU).

    The base comes from the checkpoint's `model_name_or_path` unless `model_name_or_path` overrides it;
    its weights must match the fingerprint recorded at training time.
    """
    from lit_lora.model import LitLora

    ckpt = load_checkpoint_file(ckpt_path)
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    if model_name_or_path:
        hparams["model_name_or_path"] = model_name_or_path
    if base_dtype:
        hparams["base_dtype"] = base_dtype
    hparams["adapter_path"] = None  # the checkpoint already holds the adapter's weights
    hparams["gradient_checkpointing"] = False
    seed = ckpt["lit_lora"].get("seed")
    if hparams.get("model_config") is not None and seed is not None:
        torch.manual_seed(int(seed))  # a randomly initialised base is rebuilt from the run's seed
    module = LitLora(**hparams)
    module.on_load_checkpoint(ckpt)  # checks keys and the base fingerprint
    module.load_state_dict(ckpt["state_dict"], strict=False)
    module.checkpoint_meta = ckpt
    return module.eval()


def _model_card(module: Any, ckpt: Optional[dict[str, Any]], kind: str) -> str:
    hp = module.hparams
    lora = hp.get("lora", {})
    meta = (ckpt or {}).get("lit_lora", {})
    data = (ckpt or {}).get("datamodule_hyper_parameters", {})
    step = (ckpt or {}).get("global_step", "n/a")
    val = meta.get("val_loss")
    lines = [
        "---",
        "library_name: peft" if kind == "adapter" else "library_name: transformers",
        f"base_model: {hp['model_name_or_path']}",
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
        "",
        "Load with:",
        "",
        "```python",
    ]
    if kind == "adapter":
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({hp['model_name_or_path']!r}), DIR)",
        ]
    else:
        lines += ["from transformers import AutoModelForCausalLM", "model = AutoModelForCausalLM.from_pretrained(DIR)"]
    return "\n".join(lines + ["```", ""])


def export_adapter(
    module: Any, output_dir: str, checkpoint: Optional[dict[str, Any]] = None, overwrite: bool = False
) -> Path:
    """Write `adapter_model.safetensors` + `adapter_config.json` + a README model card (PEFT's format).

    With `checkpoint` (a lit_lora checkpoint of this module's run) its LoRA weights are written instead of
    the module's own, so the end of `fit` exports its best checkpoint without loading a second base model.
    """
    peft_model = module.model
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = module.hparams["model_name_or_path"]
    ckpt = checkpoint if checkpoint is not None else getattr(module, "checkpoint_meta", None)
    # PEFT's save_pretrained filters a state dict under the PeftModel's own names ("model." is LitLora's).
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()} if checkpoint else None

    def fill(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), safe_serialization=True, state_dict=weights)
        (tmp / "README.md").write_text(_model_card(module, ckpt, "adapter"), encoding="utf-8")
        info = {"base_model": module.hparams["model_name_or_path"], "base_fingerprint": module.base_fingerprint(),
                "model_config": module.hparams.get("model_config"), "seed": (ckpt or {}).get("lit_lora", {}).get("seed"),
                # `generate --adapter_path` needs it when the base is random-init (no tokenizer beside it).
                "tokenizer_name_or_path": module.hparams.get("tokenizer_name_or_path")}
        (tmp / "lit_lora.json").write_text(json.dumps(info, indent=2), encoding="utf-8")

    return write_dir_atomically(output_dir, "adapter", fill, "--output_dir", overwrite)


def merge_to_dir(module: Any, output_dir: str, overwrite: bool = False) -> Path:
    """Merge LoRA into the base weights (`merge_and_unload`) and save a plain transformers model + tokenizer."""
    from lit_lora.hf_loading import load_tokenizer

    tokenizer = load_tokenizer(module.hparams.get("tokenizer_name_or_path") or module.hparams["model_name_or_path"])
    merged = module.model.merge_and_unload()
    ckpt = getattr(module, "checkpoint_meta", None)

    def fill(tmp: Path) -> None:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(_model_card(module, ckpt, "merged"), encoding="utf-8")

    return write_dir_atomically(output_dir, "merged", fill, "--output_dir", overwrite)


def load_adapter_for_training(base: Any, adapter_dir: str) -> Any:
    """Wrap `base` with an existing PEFT LoRA adapter (ours or anyone's), its weights trainable."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise LitLoraError(f"model.adapter_path {adapter_dir!r} is not a PEFT adapter directory (no adapter_config.json)")
    try:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as err:
        raise LitLoraError(f"model.adapter_path {adapter_dir!r} does not fit the base model: {err}") from err
