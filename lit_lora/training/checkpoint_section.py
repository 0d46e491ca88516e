"""The `lit_lora` section of a checkpoint, beside Lightning's own: what a resume and a rebuild of the base
need (RNG states, the base weights' fingerprint, the seed of a random-init base, the last val_loss), and
the checks a checkpoint must pass before its weights are loaded."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from lit_lora.constants import CHECKPOINT_FORMAT
from lit_lora.errors import LitLoraError
from lit_lora.training.rng import capture_rng

SEED_ENV = "PL_GLOBAL_SEED"  # where Lightning's seed_everything records the seed


def _check_tensors(state: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    got, want = set(state), set(shapes)
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        raise LitLoraError(
            f"the checkpoint's LoRA weights do not match this model: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}); "
            "were the LoRA settings or base model changed?"
        )
    wrong = [k for k in sorted(want) if tuple(state[k].shape) != tuple(shapes[k])]
    if wrong:
        raise LitLoraError(
            f"the checkpoint's LoRA weight {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, this model's "
            f"{tuple(shapes[wrong[0]])} ({len(wrong)} tensor(s) differ); were the LoRA settings or base model changed?"
        )


def _said(key: Optional[str]) -> str:
    return "null (full precision)" if key is None else repr(key)


def keep_lora_only(checkpoint: dict[str, Any], names: set[str], state_dict: Callable[[], dict[str, Any]]) -> None:
    """Keep only the trainable (LoRA) tensors `names` in the checkpoint's weights. The strategy's state dict
    is filtered (under FSDP, the full one gathered on rank 0) rather than taking `state_dict()` again."""
    state = checkpoint["state_dict"] if "state_dict" in checkpoint else state_dict()
    checkpoint["state_dict"] = {k: v for k, v in state.items() if k in names}


def checkpoint_section(base_fingerprint: str, trainer: Any, chat_template: Optional[str] = None,
                       schedule_steps: Optional[int] = None, quantization: Optional[str] = None) -> dict[str, Any]:
    """The `lit_lora` section written into every checkpoint (`trainer`: the run's, if any)."""
    val_loss = trainer.callback_metrics.get("val_loss") if trainer is not None else None
    run_id = getattr(trainer.logger, "run_id", None) if trainer is not None and trainer.logger else None
    return {
        # A logger without version folders (MLflow) is resumed into the same run by its id.
        "logger_run_id": run_id,
        "format": CHECKPOINT_FORMAT,
        "rng": capture_rng(),
        "base_fingerprint": base_fingerprint,
        # A randomly initialised base (model_config) is rebuilt from this seed by export/merge/generate.
        "seed": int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else None,
        "val_loss": None if val_loss is None else float(val_loss),
        # The Jinja text conversations were rendered with: export, merge and generate use it, and a run
        # resumed or evaluated from this checkpoint renders with it too.
        "chat_template": chat_template,
        # The learning-rate schedule's total steps: a resumed run decays over the same steps.
        "schedule_steps": schedule_steps,
        # How the base was quantized (lit_lora.pretrained.quantization.quantization_key); None: full precision.
        "quantization": quantization,
    }


def check_checkpoint(
    checkpoint: dict[str, Any], expected: Callable[[], dict[str, tuple[int, ...]]], base_fingerprint: str,
    quantization: Optional[str] = None, dequantized: bool = False,
) -> dict[str, Any]:
    """The checkpoint's `lit_lora` section, once its LoRA tensors (names and shapes, from `expected()`),
    base fingerprint and quantization fit this model; else a one-line error naming the likely cause.
    `dequantized`: the model is the full-precision base of a run trained quantized."""
    meta = checkpoint.get("lit_lora")
    if not isinstance(meta, dict):
        raise LitLoraError("the checkpoint was not written by lit_lora (no 'lit_lora' section)")
    saved = meta.get("quantization")
    if saved != quantization and not (dequantized and saved):
        raise LitLoraError(
            f"the checkpoint was trained with model.quantization {_said(saved)}, this run has {_said(quantization)}; "
            "give the same model.quantization and model.quantization_options (they change the base's weights)"
        )
    # FSDP loads the weights itself and pops them before this hook: nothing is left to compare.
    if "state_dict" in checkpoint:
        _check_tensors(checkpoint["state_dict"], expected())
    saved = meta.get("base_fingerprint")
    if saved and saved != base_fingerprint:
        raise LitLoraError(
            f"the base model's weights differ from those the checkpoint was trained on "
            f"(fingerprint {base_fingerprint} != {saved}); check model.model_name_or_path"
        )
    return meta
