"""`ReferenceLogps`: precompute the reference policy's log-probabilities once, before training, so that each
step runs only the policy (TRL's `precompute_ref_log_probs`):

    python -m lit_lora.cli fit ... --reference.precompute_ref_log_probs true

At the start of `fit`, once the splits are built and the model is on its device, each split's rows run
through the data module's own collator and the reference (`objectives.logps.reference_columns`: no
gradients, eval mode, the adapter off or the frozen "ref" adapter on). The values are cached beside the
tokenized rows (`data.reference_logps`) under a key of the split and of the reference policy, reused by the
next run with the same key, and added to the data module's splits as columns (the splits are replaced by
the same rows with the columns), which its batches then carry.

Under DDP every process computes every `world`-th row, and all of them gather the values; rank 0 alone reads
and writes the cache and broadcasts what it read, so each process makes the same collective calls.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from typing import Any, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.data.batches import RowsView, collator_for
from lit_lora.data.corpus import _hash
from lit_lora.data.reference_logps import (cache_folder, load_columns, reference_key, reference_names,
                                           save_columns, with_columns)
from lit_lora.errors import LitLoraError
from lit_lora.notes import print_note
from lit_lora.objectives.logps import REFERENCE_ADAPTER, reference_columns
from lit_lora.outputs import shown


def run_step_shape(trainer: Any, module: Any) -> Any:
    """What a step of this run computes per batch row (`Objective.step_shape`), for the memory estimate: no
    reference pass when this run's batches carry the reference's log-probabilities."""
    precomputed = any(isinstance(c, ReferenceLogps) and c.precompute_ref_log_probs
                      for c in getattr(trainer, "callbacks", ()))
    return module.objective.step_shape(precomputed)


class ReferenceLogps(Callback):
    """Precomputes the reference log-probabilities of the training and validation pairs before training."""

    def __init__(self, precompute_ref_log_probs: bool = False, precompute_ref_batch_size: Optional[int] = None) -> None:
        """
        Args:
            precompute_ref_log_probs: Compute the reference's log-probabilities of every pair (KTO: row) once
                before training, cached with the tokenized data, so that steps run only the policy. Ignored
                (and said) for objectives without a reference (orpo, simpo, SFT).
            precompute_ref_batch_size: Pairs per forward of that pass; default: data.batch_size.
        """
        if precompute_ref_batch_size is not None and precompute_ref_batch_size < 1:
            raise LitLoraError(f"reference.precompute_ref_batch_size={precompute_ref_batch_size} must be at least 1")
        self.precompute_ref_log_probs = precompute_ref_log_probs
        self.precompute_ref_batch_size = precompute_ref_batch_size

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.precompute_ref_log_probs:
            return
        objective = getattr(pl_module, "objective", None)
        if not getattr(objective, "needs_reference", False):
            if trainer.is_global_zero:
                print_note(f"reference log-probs: not computed, the {describe(objective)} objective has no reference "
                           "(reference.precompute_ref_log_probs is ignored)")
            return
        data = trainer.datamodule
        if not hasattr(data, "train_ds"):
            raise LitLoraError("reference.precompute_ref_log_probs needs lit_lora's data module (LitLoraData)")
        reference = reference_fingerprint(trainer, pl_module)
        done: dict[bool, list[str]] = {True: [], False: []}  # computed or reused: "12 train", "4 val"
        folders, start = [], time.perf_counter()
        for split in ("train", "val"):
            ds = getattr(data, f"{split}_ds", None)
            if ds is None:
                continue
            folder = cache_folder(ds, reference_key(ds, reference), data.hparams.cache_dir)
            columns = trainer.strategy.broadcast(load_columns(folder, ds) if trainer.is_global_zero else None)
            computed = columns is None
            if computed:
                columns = self.compute(trainer, pl_module, data, ds)
                if trainer.is_global_zero:
                    save_columns(folder, columns)
            # The split, with the columns, is what the data module's loaders read from now on.
            setattr(data, f"{split}_ds", with_columns(ds, columns))
            done[computed].append(f"{len(ds)} {split}")
            folders.append(folder)
        if trainer.is_global_zero and folders:
            unit = "rows" if reference_names(data.train_ds) == ("ref_logps",) else "pairs"
            print_note(summary_line(done, unit, time.perf_counter() - start, os.path.dirname(folders[0])))

    def compute(self, trainer: Any, pl_module: Any, data: Any, ds: Any) -> dict[str, np.ndarray]:
        """The reference columns of split `ds`: this process's rows (every `world`-th), gathered from all."""
        rank, world, device = trainer.global_rank, trainer.world_size, pl_module.device
        rows, names = list(range(rank, len(ds), world)), reference_names(ds)
        collate, view = collator_for(ds, data.load_tokenizer(), data.hparams.block_size), RowsView(ds)
        size = self.precompute_ref_batch_size or data.batch_size or 1
        values = torch.full((math.ceil(len(ds) / world), len(names)), float("nan"), device=device)
        with trainer.precision_plugin.forward_context():  # eval mode: reference_policy's
            for first in range(0, len(rows), size):
                batch = collate(view.__getitems__(rows[first:first + size]))
                batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                out = reference_columns(pl_module.model, batch)
                values[first:first + len(out[names[0]])] = torch.stack([out[n].float() for n in names], -1)
        if world > 1:  # (world, share, k): row i is process i % world's (i // world)-th
            values = trainer.strategy.all_gather(values).transpose(0, 1).reshape(-1, len(names))
        values = values[:len(ds)].cpu().numpy()
        return {name: values[:, j] for j, name in enumerate(names)}


def reference_fingerprint(trainer: Any, pl_module: Any) -> str:
    """What the reference's values depend on besides the data: the base weights, a frozen "ref" adapter's
    weights (when the run starts from an adapter), the base's dtype and quantization, the precision."""
    adapter = hashlib.sha256()
    for name, p in pl_module.model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            adapter.update(name.encode())
            adapter.update(p.detach().float().cpu().numpy().tobytes())
    hp = pl_module.hparams
    fingerprint = pl_module.base_fingerprint() if hasattr(pl_module, "base_fingerprint") else ""
    parts = [fingerprint, adapter.hexdigest(), str(trainer.precision),
             *(str(hp.get(k)) for k in ("base_dtype", "quantization", "quantization_options", "attn_implementation"))]
    return _hash(*parts)


def summary_line(done: dict[bool, list[str]], unit: str, seconds: float, folder: str) -> str:
    """e.g. "reference log-probs: computed for 12 train / 4 val pairs in 0.3 s (cached in DIR)"."""
    parts = []
    if done[True]:
        parts.append(f"computed for {' / '.join(done[True])} {unit} in {seconds:.1f} s")
    if done[False]:
        parts.append(f"reused from cache for {' / '.join(done[False])} {unit}")
    line = f"reference log-probs: {', '.join(parts)} (cached in {shown(folder)})"
    if unit == "rows":
        line += "; KTO's KL pairs still run the reference each step (a batch pairs its own rows)"
    return line


def describe(objective: Any) -> str:
    loss_type = getattr(objective, "loss_type", None)
    return f"{type(objective).__name__} ({loss_type})" if loss_type else type(objective).__name__
