"""Preference batches: tokenized preference rows (`preference.build_preference_split`) collated into the
tensors the preference objectives read, and each row's length and count for the samplers.

A paired batch holds `chosen_input_ids`, `chosen_attention_mask`, `chosen_labels` (B, Tc) and the same three
for `rejected` (B, Tr): the prompt then the completion, right-padded, labels -100 on the prompt and the
padding (and on a row's first token, which nothing predicts). An unpaired (KTO) batch holds `completion_*`
(B, T), `label` (B,) bool, and `kl_*` (B, T'): each prompt followed by the completion of the row before it in
the batch (the first row takes the last row's), the mismatched pairs TRL's KTOTrainer estimates its KL term
from. Reference log-probabilities stored with the rows come along as float32 (B,) tensors.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.padding import pad_sequences
from lit_lora.data.preference import cut_to_block

_REFERENCE = ("ref_chosen_logps", "ref_rejected_logps", "ref_logps", "ref_kl_logps")


def _sequence(prompt: list[int], ids: Any, labels: Any) -> tuple[list[int], list[int]]:
    return prompt + list(ids), [IGNORE_INDEX] * len(prompt) + list(labels)


class PreferenceCollator:
    """Pads preference rows into a batch: paired rows (`chosen_ids`) or unpaired ones (`completion_ids`).

    Args:
        pad_token_id: The tokenizer's pad id (its EOS when it has none, as `load_tokenizer` sets).
        block_size: The cap for the KL sequences of unpaired rows (a prompt with another row's completion
            can be longer than either row): cut as the rows were, the prompt from the left, then the
            completion from the right. None: not cut.
        bos_token_id: A prompt that starts with this id keeps it when a KL sequence's prompt is cut (the
            tokenizer's BOS, where it starts texts with one).
        kl: Build the KL sequences of unpaired rows.
    """

    def __init__(self, pad_token_id: int, block_size: Optional[int] = None, bos_token_id: Optional[int] = None,
                 kl: bool = True) -> None:
        self.pad_token_id, self.block_size, self.bos_token_id, self.kl = pad_token_id, block_size, bos_token_id, kl

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [list(r["prompt_ids"]) for r in rows]
        names = ("completion",) if "completion_ids" in rows[0] else ("chosen", "rejected")
        out: dict[str, Any] = {}
        for name in names:
            out |= pad_sequences([_sequence(p, r[f"{name}_ids"], r[f"{name}_labels"]) for p, r in zip(prompts, rows)],
                                 self.pad_token_id, f"{name}_")
        if names == ("completion",):
            out["label"] = torch.tensor([bool(r["label"]) for r in rows], dtype=torch.bool)
            if self.kl:
                out |= self._kl(prompts, rows)
        for key in _REFERENCE:
            if key in rows[0]:
                out[key] = torch.tensor([float(r[key]) for r in rows], dtype=torch.float32)
        if "sample_id" in rows[0]:
            out["sample_ids"] = torch.tensor([r["sample_id"] for r in rows])
        if "step_target_tokens" in rows[0]:  # a batch lies within one optimizer step: its rows carry one total
            out["step_target_tokens"] = torch.tensor(rows[0]["step_target_tokens"])
        return out

    def _kl(self, prompts: list[list[int]], rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = []
        for j, prompt in enumerate(prompts):
            other = rows[j - 1]  # row 0 takes the last row's completion: TRL's rotation by one
            completion = (list(other["completion_ids"]), list(other["completion_labels"]))
            if self.block_size is not None:
                keep = int(self.bos_token_id is not None and prompt[:1] == [self.bos_token_id])
                prompt, (completion,), _ = cut_to_block(prompt, [completion], self.block_size, keep)
            sequences.append(_sequence(prompt, *completion))
        return pad_sequences(sequences, self.pad_token_id, "kl_")


def row_stats(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """(length, count) per row: the prompt plus its longer completion (what length bucketing sorts by), and
    1, so that `step_target_tokens` counts the pairs (or unpaired rows) of an optimizer step."""
    prompt = np.fromiter((len(x) for x in ds["prompt_ids"]), dtype=np.int64, count=len(ds))
    names = ["completion_ids"] if "completion_ids" in ds.column_names else ["chosen_ids", "rejected_ids"]
    longest = np.max([np.fromiter((len(x) for x in ds[n]), dtype=np.int64, count=len(ds)) for n in names], axis=0)
    return prompt + longest, np.ones(len(ds), dtype=np.int64)
