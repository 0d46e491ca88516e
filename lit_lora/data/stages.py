"""What `LitLoraData.setup` builds for each stage: the training and validation splits (`fit`), the evaluation
split of `--data.val_files`/`--data.test_files` alone (`validate`, `test`), or the prompts (`predict`), once."""

from __future__ import annotations

from typing import Any, Optional

from lit_lora.data.sources import build_eval_split, build_training_splits
from lit_lora.data.train_order import TrainOrder
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import resolve_template
from lit_lora.generation.prompts import read_prompts


def build_stage(data: Any, stage: Optional[str]) -> None:
    """Set the splits of the `LitLoraData` `data` that `stage` reads."""
    if stage == "predict":
        if not data.hparams.predict_file:
            raise LitLoraError(
                "predict needs prompts: give --data.predict_file FILE (one prompt per line, or JSONL)"
            )
        data.predict_prompts = read_prompts(data.hparams.predict_file)
        if any(isinstance(p, list) for p in data.predict_prompts):
            data.template_name, data.chat_template = resolve_template(data.load_tokenizer(),
                                                                      data.hparams.chat_template)
        return
    eval_only = data.eval_files_only() if stage in ("validate", "test") else None
    if eval_only:
        if stage == "test" and data.test_ds is None:
            data.test_ds = build_eval_split(*eval_only, data.hparams, data.load_tokenizer())
        elif stage == "validate" and data.val_ds is None:
            data.val_ds = build_eval_split(*eval_only, data.hparams, data.load_tokenizer())
        return
    if data.train_ds is not None:
        return
    train, val, data.data_format = build_training_splits(data.hparams, data.load_tokenizer(), data.counts)
    # Conversations, or preference records of message lists: the template they were rendered with.
    if data.counts.get("conversations") or str(data.counts.get("format", "")).endswith("(conversational)"):
        data.template_name, data.chat_template = resolve_template(data.tokenizer, data.hparams.chat_template)
    data.train_ds, data.val_ds = train, val
    data.order = TrainOrder(train, data.hparams.seed, data.hparams.shuffle, data.hparams.length_bucketing)
    if data.resume_state is not None:
        data.order.resume(data.resume_state)
