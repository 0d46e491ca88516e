"""Samplers: a seeded, rank-aware training sampler that can resume in the middle of an epoch, and the
sequential sampler that splits evaluation data across ranks.

The order of epoch `e` is a pure function of (seed, e), so a checkpoint only needs the seed, the epoch
and how many batches were consumed: no permutation is stored.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Yields this rank's sample indices for one epoch, optionally skipping the first ones on resume.

    Args:
        num_samples: Size of the dataset.
        seed: Base seed; epoch `e` is shuffled with seed + e.
        shuffle: Shuffle each epoch; else sequential order.
        rank: This process's rank.
        world_size: Number of processes; each rank takes every world_size-th index of the epoch order.
        lengths: Per-sample lengths; when given with `bucket_size`, samples are grouped by length.
        bucket_size: Samples per length bucket (a multiple of the per-rank batch size times world size).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        lengths: Optional[Sequence[int]] = None,
        bucket_size: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.lengths = lengths
        self.bucket_size = bucket_size
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None  # (epoch, samples of this rank to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, epoch: int, samples_done: int) -> None:
        """Skip the first `samples_done` of this rank's samples when epoch `epoch` is iterated."""
        self._resume = (epoch, samples_done)

    def epoch_order(self, epoch: int) -> list[int]:
        """The global sample order of `epoch`, trimmed so every rank gets the same number."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.lengths is not None and self.bucket_size > 1:
            order = self._bucket(order, epoch)
        usable = self.num_samples - self.num_samples % self.world_size
        return order[:usable]

    def _bucket(self, order: list[int], epoch: int) -> list[int]:
        # Sort within windows of 50 buckets so batches hold similar lengths, then shuffle whole buckets
        # so long and short batches stay mixed across the epoch.
        window = self.bucket_size * 50
        buckets: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            buckets.extend(chunk[j : j + self.bucket_size] for j in range(0, len(chunk), self.bucket_size))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch + 7919)
            buckets = [buckets[i] for i in torch.randperm(len(buckets), generator=g).tolist()]
        return [i for b in buckets for i in b]

    def step_totals(self, epoch: int, counts: np.ndarray, batch_size: int, accumulate: int) -> np.ndarray:
        """`counts` summed over the samples of each optimizer step of `epoch`: `accumulate` consecutive
        batches of `batch_size` on every rank (the epoch's last step may have fewer)."""
        order = np.asarray(self.epoch_order(epoch))
        per_rank = len(order) // self.world_size
        n_batches = -(-per_rank // batch_size)
        # Rank r's k-th sample is order[k * world_size + r], so one step's samples on all ranks are a
        # contiguous slice of the epoch order.
        bounds = [min(b * batch_size, per_rank) * self.world_size for b in range(0, n_batches, accumulate)]
        csum = np.concatenate([[0], np.cumsum(counts[order[: per_rank * self.world_size]])])
        return csum[bounds[1:] + [per_rank * self.world_size]] - csum[bounds]

    def __iter__(self) -> Iterator[int]:
        # A generator, so the order is drawn at the first batch, after Lightning's set_epoch().
        indices = self.epoch_order(self.epoch)[self.rank :: self.world_size]
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if epoch == self.epoch:
                indices = indices[skip:]
        yield from indices

    def __len__(self) -> int:
        return self.num_samples // self.world_size


class EvalShardSampler(torch.utils.data.Sampler[int]):
    """Sequential, every world_size-th index: evaluation data split across ranks without padding."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
