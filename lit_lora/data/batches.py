"""Batches: rows of a tokenized `datasets.Dataset` with their sample ids, the training collator (packed
blocks or padded examples; preference rows have their own, `preference_batches.PreferenceCollator`), and
left-padded prompt batches for `predict`."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.padding import pad_sequences
from lit_lora.data.preference_batches import PreferenceCollator
from lit_lora.generation.chat import stop_ids
from lit_lora.generation.prompts import encode_prompts
from lit_lora.pretrained.hub import bos_prefix


class RowsView(torch.utils.data.Dataset):
    """Map-style view of a tokenized `datasets.Dataset` that also yields each row's index (its sample id)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds.with_format("python")
        # Packed blocks all have one length: a batch of them reads as one (B, T) NumPy array instead of
        # B x T Python ints, which the collator would then have to convert back.
        packed = "input_ids" in ds.column_names and "labels" not in ds.column_names
        self._blocks = ds.with_format("numpy") if packed else None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: Any) -> dict[str, Any]:
        if isinstance(i, tuple):  # with its optimizer step's target tokens (samplers.WithStepTokens)
            return {**self[i[0]], "step_target_tokens": i[1]}
        row = self.ds[int(i)]
        row["sample_id"] = int(i)
        return row

    def __getitems__(self, indices: list[Any]) -> list[dict[str, Any]]:
        # An index may come with its optimizer step's target tokens (samplers.WithStepTokens).
        steps = [i[1] if isinstance(i, tuple) else None for i in indices]
        indices = [int(i[0] if isinstance(i, tuple) else i) for i in indices]
        # One Arrow slice per batch instead of one lookup per sample.
        rows = (self.ds if self._blocks is None else self._blocks)[indices]
        keys = list(rows)
        out = [{**{k: rows[k][j] for k in keys}, "sample_id": i} for j, i in enumerate(indices)]
        for row, step in zip(out, steps):
            if step is not None:
                row["step_target_tokens"] = step
        return out


def collator_for(ds: Any, tokenizer: Any, block_size: int) -> Any:
    """What pads the rows of split `ds` into training or evaluation batches: preference rows (they hold
    `prompt_ids`) or SFT's blocks and examples."""
    if "prompt_ids" in ds.column_names:
        bos = bos_prefix(tokenizer)
        return PreferenceCollator(tokenizer.pad_token_id, block_size, bos[0] if bos else None)
    return Collator(tokenizer.pad_token_id)


def batch_keys(ds: Any, tokenizer: Any, block_size: int) -> list[str]:
    """The keys of the batches of split `ds`: those of its first row collated."""
    return sorted(collator_for(ds, tokenizer, block_size)([RowsView(ds)[0]]))


class Collator:
    """Stacks packed blocks, or pads examples to the longest in the batch.

    Padding is right-side for training; padded positions get label -100, so the pad token id (often EOS)
    is never what masks anything. Padded examples get attention_mask 0 there. Packed rows get no
    attention_mask (transformers then reads the documents from `position_ids`, given when a row holds more
    than one): their padding is a document of its own, positions from 0, which no real token attends to.
    A document's first token gets label -100.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sample_ids = torch.tensor([r["sample_id"] for r in rows])
        # A batch lies within one optimizer step: its rows carry the same step total.
        step = {k: torch.tensor(rows[0][k]) for k in ("step_target_tokens",) if k in rows[0]}
        if "position_ids" in rows[0]:
            return {**self._packed(rows), "sample_ids": sample_ids, **step}
        padded = pad_sequences([(r["input_ids"], r["labels"]) for r in rows], self.pad_token_id)
        return {**padded, "sample_ids": sample_ids, **step}

    def _packed(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)
        if min(lengths) == width and "labels" not in rows[0]:
            # Blocks of text: NumPy rows from RowsView, stacked without touching each token.
            input_ids = torch.as_tensor(np.stack([np.asarray(r["input_ids"]) for r in rows]), dtype=torch.long)
            positions = torch.as_tensor(np.stack([np.asarray(r["position_ids"]) for r in rows]), dtype=torch.long)
            labels = input_ids.clone()
        else:
            input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
            labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
            positions = torch.arange(width).repeat(len(rows), 1)
            for j, (r, n) in enumerate(zip(rows, lengths)):
                input_ids[j, :n] = torch.as_tensor(r["input_ids"])
                labels[j, :n] = torch.as_tensor(r.get("labels", r["input_ids"]))
                positions[j, :n] = torch.as_tensor(r["position_ids"])
                positions[j, n:] -= n
        labels[positions == 0] = IGNORE_INDEX
        out = {"input_ids": input_ids, "labels": labels, "num_tokens": sum(lengths)}
        # Rows of one document each (the blocks of a long file) need no positions: they are the model's own,
        # and without them transformers does not read the device each step to look for packed documents.
        # (Decided on the rows, not the tensor: a tensor read would count as one per step in test_performance.)
        if min(lengths) < width or any((np.asarray(r["position_ids"][1:]) == 0).any() for r in rows):
            out["position_ids"] = positions
        return out


class PromptRows(torch.utils.data.Dataset):
    """The prompts of `--data.predict_file` (texts or message lists), each with its number among the prompts
    (its id)."""

    def __init__(self, prompts: list[Any]) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": int(i), "prompt": self.prompts[i]}


class PromptCollator:
    """Left-padded prompt batches for `LitLora.predict_step`; they carry their prompts and ids for the writer.
    Conversations are rendered with `chat_template` and its generation prompt."""

    def __init__(self, tokenizer: Any, chat_template: Optional[str] = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        # EOS, or the ids a chat reply ends on: found once (it renders the template), not per batch.
        self.stop = stop_ids(tokenizer, chat_template) if chat_template else tokenizer.eos_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [r["prompt"] for r in rows]
        return {
            **encode_prompts(self.tokenizer, prompts, self.chat_template),
            "ids": [r["id"] for r in rows],
            "prompts": prompts,
            "eos_token_id": self.stop,
        }
