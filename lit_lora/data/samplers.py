"""Samplers: a seeded, rank-aware training sampler that resumes in the middle of an epoch, on any number of
processes and batch size, and the sequential sampler that splits evaluation data across ranks.

The global order of epoch `e` is a pure function of (seed, e): every rank reads every world_size-th sample
of it, so one optimizer step of all ranks is a contiguous slice. A checkpoint stores only the seed, the epoch
and the position in that order; no permutation.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class Resume(NamedTuple):
    epoch: int
    position: int  # samples of the epoch's global order already trained on, all ranks together
    batches_done: int  # what Lightning's restored batch counter says
    bucket_size: int  # the bucket size the checkpointed run ordered this epoch with


class Plan(NamedTuple):
    start: int  # batches Lightning counts as done before the first one this sampler yields
    position: int  # where in the epoch's global order `rest` begins
    bucket_size: int  # the length buckets the epoch's order was drawn with
    rest: list[int]  # the global order still to train, trimmed to a multiple of the world size


class ResumableSampler(Sampler[int]):
    """Yields this rank's sample indices for one epoch; a resumed epoch continues from a position in it.

    Args:
        num_samples: Size of the dataset.
        seed: Base seed; epoch `e` is shuffled with seed + e.
        shuffle: Shuffle each epoch; else sequential order.
        rank: This process's rank.
        world_size: Number of processes; each rank takes every world_size-th index of the epoch order.
        batch_size: Samples per batch on each rank (the unit of Lightning's batch counter).
        lengths: Per-sample lengths; when given with `bucket_size`, samples are grouped by length.
        bucket_size: Samples per length bucket (the global batch: batch size times world size).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        lengths: Optional[Sequence[int]] = None,
        bucket_size: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.lengths = lengths
        self.bucket_size = bucket_size
        self.epoch = 0
        self._resume: Optional[Resume] = None
        self._plans: dict[int, Plan] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, epoch: int, position: int, batches_done: int, bucket_size: Optional[int] = None) -> None:
        """Continue epoch `epoch` after the first `position` samples of its global order (all ranks), which
        the checkpointed run trained on in `batches_done` batches of its own size; `bucket_size` is the one
        that run ordered the epoch with."""
        bucket = self.bucket_size if bucket_size is None else bucket_size
        self._resume = Resume(epoch, min(position, self.num_samples), batches_done, bucket)
        self._plans.clear()

    def epoch_order(self, epoch: int, bucket_size: Optional[int] = None) -> list[int]:
        """The global sample order of `epoch`: every sample, a function of the seed and the epoch alone
        (and, for length-bucketed data, of the bucket size), never of the number of processes."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        bucket = self.bucket_size if bucket_size is None else bucket_size
        if self.lengths is not None and bucket > 1:
            order = self._bucket(order, epoch, bucket)
        return order

    def _bucket(self, order: list[int], epoch: int, bucket: int) -> list[int]:
        # Sort within windows of 50 buckets so batches hold similar lengths, then shuffle whole buckets
        # so long and short batches stay mixed across the epoch.
        window = bucket * 50
        buckets: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            buckets.extend(chunk[j : j + bucket] for j in range(0, len(chunk), bucket))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch + 7919)
            buckets = [buckets[i] for i in torch.randperm(len(buckets), generator=g).tolist()]
        return [i for b in buckets for i in b]

    def plan(self, epoch: int) -> Plan:
        """How `epoch` runs here: from the resume position, if it is the resumed epoch, else from its start.
        The rest is trimmed so every rank gets the same number: at most world_size - 1 samples are left out."""
        if epoch not in self._plans:
            start, position, bucket = 0, 0, self.bucket_size
            if self._resume is not None and self._resume.epoch == epoch:
                _, position, start, bucket = self._resume
            rest = self.epoch_order(epoch, bucket)[position:]
            self._plans = {epoch: Plan(start, position, bucket, rest[: len(rest) - len(rest) % self.world_size])}
        return self._plans[epoch]

    def position(self, epoch: int, batches_done: int) -> int:
        """Samples of `epoch`'s global order trained on after its first `batches_done` batches, all ranks."""
        plan = self.plan(epoch)
        return plan.position + min((batches_done - plan.start) * self.batch_size * self.world_size, len(plan.rest))

    def step_totals(self, epoch: int, counts: np.ndarray, accumulate: int) -> np.ndarray:
        """`counts` summed over the samples of each optimizer step of `epoch`, indexed by step: the batches
        `k * accumulate` to `(k + 1) * accumulate - 1` on every rank (the epoch's last step may have fewer;
        steps a resumed epoch had already taken sum to 0)."""
        start, _, _, rest = self.plan(epoch)
        per_rank = len(rest) // self.world_size
        n_batches = -(-per_rank // self.batch_size)
        # Rank r's k-th sample is rest[k * world_size + r], so one batch on all ranks is a contiguous
        # slice of the rest of the epoch order.
        bounds = [min(b * self.batch_size, per_rank) * self.world_size for b in range(n_batches + 1)]
        csum = np.concatenate([[0], np.cumsum(counts[np.asarray(rest, dtype=np.int64)])])
        per_batch = csum[bounds[1:]] - csum[bounds[:-1]]
        totals = np.zeros(-(-(start + n_batches) // accumulate), dtype=np.int64)
        np.add.at(totals, (start + np.arange(n_batches)) // accumulate, per_batch)
        return totals

    def steps_left(self, epoch: int, accumulate: int) -> int:
        """Optimizer steps still to take in `epoch` as planned: Lightning groups batch `i` into step
        `i // accumulate`, counting on from the restored batch counter."""
        start, _, _, rest = self.plan(epoch)
        end = start + -(-(len(rest) // self.world_size) // self.batch_size)
        return (end - 1) // accumulate - start // accumulate + 1 if end > start else 0

    def __iter__(self) -> Iterator[int]:
        # A generator, so the order is drawn at the first batch, after Lightning's set_epoch().
        yield from self.plan(self.epoch).rest[self.rank :: self.world_size]

    def __len__(self) -> int:
        # What Lightning counts batches against: a resumed epoch's restored counter plus what is left.
        start, _, _, rest = self.plan(self.epoch)
        return start * self.batch_size + len(rest) // self.world_size


class WithStepTokens(Sampler[tuple[int, int]]):
    """A `ResumableSampler`'s indices, each with the target tokens of the optimizer step its batch belongs to
    (all `accumulate` micro-batches on every rank: `ResumableSampler.step_totals`), so a batch carries what
    its loss is normalised by and the model never asks the data for it.

    Args:
        sampler: The training sampler; its epoch, resume position and layout decide the steps.
        counts: Target tokens of each row of the dataset.
        accumulate: Micro-batches per optimizer step.
    """

    def __init__(self, sampler: ResumableSampler, counts: np.ndarray, accumulate: int) -> None:
        self.sampler, self.counts, self.accumulate = sampler, counts, accumulate

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = self.sampler.epoch, self.sampler.batch_size
        totals = self.sampler.step_totals(epoch, self.counts, self.accumulate)
        start = self.sampler.plan(epoch).start  # Lightning's batch counter at the first batch yielded here
        for k, i in enumerate(self.sampler):
            yield i, int(totals[(start + k // batch) // self.accumulate])

    def __len__(self) -> int:
        return len(self.sampler)


class EvalShardSampler(torch.utils.data.Sampler[int]):
    """Sequential, every world_size-th index: evaluation data split across ranks without padding."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
