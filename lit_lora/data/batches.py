"""Batches: rows of a tokenized `datasets.Dataset` with their sample ids, the training collator (packed
blocks or padded prompt/completion examples), and left-padded prompt batches for `predict`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lit_lora.constants import IGNORE_INDEX
from lit_lora.generation.prompts import encode_prompts


class RowsView(torch.utils.data.Dataset):
    """Map-style view of a tokenized `datasets.Dataset` that also yields each row's index (its sample id)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds.with_format("python")
        # Packed blocks all have one length: a batch of them reads as one (B, T) NumPy array instead of
        # B x T Python ints, which the collator would then have to convert back.
        self._blocks = ds.with_format("numpy") if "labels" not in ds.column_names else None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.ds[int(i)]
        row["sample_id"] = int(i)
        return row

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow slice per batch instead of one lookup per sample.
        rows = (self.ds if self._blocks is None else self._blocks)[[int(i) for i in indices]]
        keys = list(rows)
        return [{**{k: rows[k][j] for k in keys}, "sample_id": int(i)} for j, i in enumerate(indices)]


class Collator:
    """Stacks packed blocks, or pads prompt/completion examples to the longest in the batch.

    Padding is right-side for training; padded positions get attention_mask 0 and label -100, so the pad
    token id (often EOS) is never what masks anything.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [r["input_ids"] for r in rows]
        sample_ids = torch.tensor([r["sample_id"] for r in rows])
        if "labels" not in rows[0]:
            # Packed blocks: NumPy rows from RowsView (stacked without touching each token), or lists.
            input_ids = torch.as_tensor(np.stack(ids) if isinstance(ids[0], np.ndarray) else ids, dtype=torch.long)
            return {"input_ids": input_ids, "labels": input_ids, "sample_ids": sample_ids}
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[j, :n] = torch.tensor(r["input_ids"])
            labels[j, :n] = torch.tensor(r["labels"])
            mask[j, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "sample_ids": sample_ids}


class PromptRows(torch.utils.data.Dataset):
    """The prompts of `--data.predict_file`, each with its line number among the prompts (its id)."""

    def __init__(self, prompts: list[str]) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": int(i), "prompt": self.prompts[i]}


class PromptCollator:
    """Left-padded prompt batches for `LitLora.predict_step`; they carry their texts and ids for the writer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [r["prompt"] for r in rows]
        return {
            **encode_prompts(self.tokenizer, prompts),
            "ids": [r["id"] for r in rows],
            "prompts": prompts,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
