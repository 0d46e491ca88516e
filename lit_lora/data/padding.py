"""Right-padding (token ids, labels) rows into a batch: SFT's padded examples and preference rows alike."""

from __future__ import annotations

from typing import Sequence

import torch

from lit_lora.constants import IGNORE_INDEX


def pad_sequences(sequences: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int, prefix: str = ""
                  ) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask`, `labels` of (ids, labels) rows, right-padded, each key led by `prefix`
    (`chosen_input_ids`, ...); padding gets label -100 and attention 0, so the pad id (often EOS) never masks
    anything, and a row's first token, which nothing predicts, gets label -100."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for j, (ids, row_labels) in enumerate(sequences):
        input_ids[j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[j, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
        mask[j, : len(ids)] = 1
    labels[:, 0] = IGNORE_INDEX
    return {f"{prefix}input_ids": input_ids, f"{prefix}attention_mask": mask, f"{prefix}labels": labels}
