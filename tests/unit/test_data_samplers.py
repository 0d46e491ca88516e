"""Training and evaluation samplers (lit_lora/data/samplers.py): order, sharding, resume, bucketing and
the per-step token totals, checked against values computed here from the batches each rank sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_lora.data.samplers import EvalShardSampler, ResumableSampler


def rank_samplers(n, world, **kw):
    return [ResumableSampler(n, rank=r, world_size=world, **kw) for r in range(world)]


def epoch_indices(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


# -- epoch order ----------------------------------------------------------------------------------------


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    b.set_epoch(9)  # the sampler's current epoch and earlier iterations do not matter
    list(b)
    assert a.epoch_order(2) == b.epoch_order(2) == a.epoch_order(2)
    assert epoch_indices(a, 4) == epoch_indices(b, 4) == a.epoch_order(4)
    # It is torch.randperm seeded with seed + epoch.
    assert a.epoch_order(2) == torch.randperm(50, generator=torch.Generator().manual_seed(5)).tolist()


def test_epoch_order_differs_across_epochs_and_seeds():
    s = ResumableSampler(50, seed=3)
    orders = [tuple(s.epoch_order(e)) for e in range(5)]
    assert len(set(orders)) == 5
    assert ResumableSampler(50, seed=4).epoch_order(0) != s.epoch_order(0)


def test_shuffled_epoch_is_a_permutation():
    s = ResumableSampler(37, seed=0)
    for e in range(3):
        order = s.epoch_order(e)
        assert sorted(order) == list(range(37))
        assert order != list(range(37))


def test_without_shuffle_order_is_sequential():
    s = ResumableSampler(10, seed=123, shuffle=False)
    assert s.epoch_order(0) == s.epoch_order(5) == list(range(10))
    assert epoch_indices(s, 3) == list(range(10))
    assert len(s) == 10


# -- ranks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(20, 2), (23, 2), (23, 3), (7, 4), (9, 1)])
def test_ranks_partition_the_trimmed_epoch_order(n, world):
    samplers = rank_samplers(n, world, seed=11)
    order = samplers[0].epoch_order(1)
    usable = n - n % world
    assert len(order) == usable
    assert [s.epoch_order(1) for s in samplers] == [order] * world  # every rank agrees on the global order
    per_rank = [epoch_indices(s, 1) for s in samplers]
    assert all(len(idx) == usable // world == len(s) for idx, s in zip(per_rank, samplers))
    flat = [i for idx in per_rank for i in idx]
    assert len(set(flat)) == len(flat) == usable  # no overlap
    assert set(flat) == set(order)
    for r, idx in enumerate(per_rank):  # rank r takes every world-th sample, starting at r
        assert idx == order[r::world]


# -- resume ---------------------------------------------------------------------------------------------


def test_resume_skips_the_first_samples_of_this_rank_in_that_epoch_only():
    world = 2
    samplers = rank_samplers(30, world, seed=5)
    full = [epoch_indices(ResumableSampler(30, seed=5, rank=r, world_size=world), 2) for r in range(world)]

    samplers[0].resume_from(2, 6)
    samplers[0].set_epoch(2)
    samplers[1].set_epoch(2)
    assert list(samplers[0]) == full[0][6:]
    assert list(samplers[1]) == full[1]  # the other rank was not told to skip
    # Once used, the skip is gone: the same epoch again, and the next epoch, are whole.
    assert list(samplers[0]) == full[0]
    samplers[0].set_epoch(3)
    assert list(samplers[0]) == ResumableSampler(30, seed=5, rank=0, world_size=world).epoch_order(3)[0::world]


def test_resume_for_another_epoch_skips_nothing():
    s = ResumableSampler(30, seed=5)
    s.resume_from(1, 10)
    s.set_epoch(2)  # the checkpoint's epoch was 1; this one is 2
    assert list(s) == s.epoch_order(2)
    s.set_epoch(1)  # the pending skip was dropped at the first iteration
    assert list(s) == s.epoch_order(1)


def test_resume_skip_zero_and_all():
    s = ResumableSampler(12, seed=0)
    s.resume_from(0, 0)
    assert list(s) == s.epoch_order(0)
    s.resume_from(0, 12)
    assert list(s) == []


# -- length bucketing -----------------------------------------------------------------------------------


def test_buckets_hold_neighbouring_lengths_within_one_window():
    n, bucket = 60, 4  # one window (bucket_size * 50 = 200 > n)
    lengths = np.random.default_rng(0).permutation(1000)[:n].tolist()  # distinct lengths
    s = ResumableSampler(n, seed=2, lengths=lengths, bucket_size=bucket)
    order = s.epoch_order(0)
    assert sorted(order) == list(range(n))
    rank_of = {length: k for k, length in enumerate(sorted(lengths))}
    buckets = [order[j : j + bucket] for j in range(0, n, bucket)]
    for b in buckets:
        ranks = [rank_of[lengths[i]] for i in b]
        assert ranks == sorted(ranks)  # sorted inside the bucket
        assert ranks == list(range(ranks[0], ranks[0] + bucket))  # and consecutive: neighbouring lengths
    # Whole buckets are shuffled: the epoch is not sorted by length overall, and differs by epoch.
    assert [lengths[i] for i in order] != sorted(lengths)
    assert s.epoch_order(1) != order and sorted(s.epoch_order(1)) == list(range(n))


def test_bucketing_sorts_within_windows_and_covers_every_index_once():
    n, bucket = 250, 2  # windows of 100 samples: 100, 100, 50
    lengths = np.random.default_rng(1).integers(1, 500, size=n).tolist()
    s = ResumableSampler(n, seed=9, lengths=lengths, bucket_size=bucket)
    order = s.epoch_order(0)
    assert sorted(order) == list(range(n))
    # Rebuild the windows from the un-bucketed permutation: each bucket lies in one window, sorted by length.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(9)).tolist()
    window_of = {i: k // 100 for k, i in enumerate(perm)}
    for j in range(0, n, bucket):
        b = order[j : j + bucket]
        assert len({window_of[i] for i in b}) == 1
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    spread = np.mean([max(lengths[i] for i in order[j:j + bucket]) - min(lengths[i] for i in order[j:j + bucket])
                      for j in range(0, n, bucket)])
    random_spread = np.mean([abs(lengths[perm[j]] - lengths[perm[j + 1]]) for j in range(0, n, 2)])
    assert spread < random_spread / 5


def test_bucketing_with_ranks_shards_without_overlap():
    n, world, batch = 43, 3, 2
    lengths = list(range(n, 0, -1))
    samplers = rank_samplers(n, world, seed=1, lengths=lengths, bucket_size=batch * world)
    per_rank = [epoch_indices(s, 0) for s in samplers]
    flat = [i for idx in per_rank for i in idx]
    assert len(flat) == len(set(flat)) == n - n % world
    assert set(flat) == set(samplers[0].epoch_order(0))


def test_lengths_without_bucket_size_do_not_bucket():
    s = ResumableSampler(20, seed=4, lengths=list(range(20)), bucket_size=0)
    assert s.epoch_order(0) == ResumableSampler(20, seed=4).epoch_order(0)


# -- step_totals ----------------------------------------------------------------------------------------


def hand_step_totals(samplers, epoch, counts, batch_size, accumulate):
    """Sum `counts` over what every rank's loader yields for each optimizer step: `accumulate` batches of
    `batch_size` per rank (drop_last=False), the epoch's last step taking what is left."""
    batches = []
    for s in samplers:
        idx = epoch_indices(s, epoch)
        batches.append([idx[k : k + batch_size] for k in range(0, len(idx), batch_size)])
    n_batches = len(batches[0])
    assert all(len(b) == n_batches for b in batches)
    totals = []
    for start in range(0, n_batches, accumulate):
        totals.append(sum(int(counts[i]) for rank in batches for b in rank[start : start + accumulate] for i in b))
    return totals


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("bucketing", [False, True], ids=["plain", "bucketed"])
def test_step_totals_match_the_batches_each_rank_sees(world, accumulate, bucketing):
    n, batch = 29, 3  # not a multiple of the world size, the batch size or the step
    counts = np.random.default_rng(world * 10 + accumulate).integers(0, 50, size=n)
    kw = dict(seed=7, lengths=counts.tolist(), bucket_size=batch * world) if bucketing else dict(seed=7)
    samplers = rank_samplers(n, world, **kw)
    for epoch in (0, 1):
        expected = hand_step_totals(samplers, epoch, counts, batch, accumulate)
        for s in samplers:  # every rank computes the same totals
            got = s.step_totals(epoch, counts, batch, accumulate)
            assert got.tolist() == expected
        assert sum(expected) == sum(int(counts[i]) for i in samplers[0].epoch_order(epoch))


def test_step_totals_worked_example():
    # Sequential order 0..9, one rank, batches of 2, two batches per step: steps are {0..3}, {4..7}, {8, 9}.
    s = ResumableSampler(10, seed=0, shuffle=False)
    counts = np.arange(10) * 10
    assert s.step_totals(0, counts, 2, 2).tolist() == [60, 220, 170]
    # Two ranks: rank 0 sees 0, 2, 4, 6, 8 and rank 1 sees 1, 3, 5, 7, 9; batches of 2, accumulate 1:
    # step 0 = {0, 2} + {1, 3}, step 1 = {4, 6} + {5, 7}, step 2 = {8} + {9}.
    s2 = ResumableSampler(10, seed=0, shuffle=False, world_size=2)
    assert s2.step_totals(0, counts, 2, 1).tolist() == [60, 220, 170]


# -- evaluation shards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (11, 4), (2, 4), (0, 2)])
def test_eval_shards_cover_every_index_once_in_order(n, world):
    shards = [list(EvalShardSampler(n, r, world)) for r in range(world)]
    flat = sorted(i for shard in shards for i in shard)
    assert flat == list(range(n))
    for r, shard in enumerate(shards):
        assert shard == sorted(shard)
        assert shard == list(range(r, n, world))
        assert len(EvalShardSampler(n, r, world)) == len(shard)
    sizes = [len(s) for s in shards]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1  # no padding, at most one more on the first ranks
