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
def test_ranks_partition_the_epoch_order_less_its_last_samples(n, world):
    samplers = rank_samplers(n, world, seed=11)
    order = samplers[0].epoch_order(1)
    assert sorted(order) == list(range(n))  # the global order holds every sample, whatever the world size
    assert order == ResumableSampler(n, seed=11).epoch_order(1)
    usable = n - n % world  # the last n % world are left out, so every rank gets the same number
    per_rank = [epoch_indices(s, 1) for s in samplers]
    assert all(len(idx) == usable // world == len(s) for idx, s in zip(per_rank, samplers))
    flat = [i for idx in per_rank for i in idx]
    assert len(set(flat)) == len(flat) == usable  # no overlap
    assert set(flat) == set(order[:usable])
    for r, idx in enumerate(per_rank):  # rank r takes every world-th sample, starting at r
        assert idx == order[r:usable:world]


# -- resume ---------------------------------------------------------------------------------------------


def test_resume_continues_that_epoch_at_the_position_on_every_rank():
    world, batch = 2, 3
    samplers = rank_samplers(30, world, seed=5, batch_size=batch)
    order = samplers[0].epoch_order(2)
    for s in samplers:
        s.resume_from(2, position=12, batches_done=2)  # 2 batches of 3 on each of 2 ranks
        s.set_epoch(2)
    assert [list(s) for s in samplers] == [order[12::2], order[13::2]]
    assert [len(s) for s in samplers] == [2 * batch + 9] * 2  # Lightning's counter (2 batches) + what is left
    assert list(samplers[0]) == order[12::2]  # iterating again gives the same: Lightning may call iter() twice
    samplers[0].set_epoch(3)  # the next epoch is whole
    assert list(samplers[0]) == samplers[0].epoch_order(3)[0::2] and len(samplers[0]) == 15


def test_resume_for_another_epoch_skips_nothing():
    s = ResumableSampler(30, seed=5)
    s.resume_from(1, 10, 10)
    s.set_epoch(2)  # the checkpoint's epoch was 1; this one is 2
    assert list(s) == s.epoch_order(2)


def test_resume_at_zero_and_at_the_end():
    s = ResumableSampler(12, seed=0)
    s.resume_from(0, 0, 0)
    assert list(s) == s.epoch_order(0)
    s.resume_from(0, 12, 12)
    assert list(s) == [] and len(s) == 12


@pytest.mark.parametrize("n", [29, 32])
@pytest.mark.parametrize("saved,new", [((2, 4), (1, 8)), ((1, 8), (2, 4)), ((2, 2), (1, 4)), ((1, 4), (3, 2)),
                                       ((3, 2), (2, 5)), ((2, 4), (2, 1))])
def test_a_mid_epoch_resume_on_another_layout_trains_each_remaining_sample_once(n, saved, new):
    """(world size, batch size) of the checkpointed run and of the resumed one: together they train the
    epoch's global order from its start, no sample twice, leaving out fewer than world_size at the end."""
    (w0, b0), (w1, b1) = saved, new
    order = ResumableSampler(n, seed=3).epoch_order(0)
    done_batches = 2
    first = [s for r in rank_samplers(n, w0, seed=3, batch_size=b0) for s in list(r)[: done_batches * b0]]
    position = done_batches * b0 * w0
    assert sorted(first) == sorted(order[:position])  # what the first run trained on: a prefix of the order
    resumed = rank_samplers(n, w1, seed=3, batch_size=b1)
    for s in resumed:
        s.resume_from(0, position, done_batches)
    rest = [list(s) for s in resumed]
    assert sorted(i for r in rest for i in r) == sorted(order[position : n - (n - position) % w1])
    for r, idx in enumerate(rest):  # per batch, all ranks together take the next slice of the order
        assert idx == order[position + r : n - (n - position) % w1 : w1]
    assert len(resumed[0]) == done_batches * b1 + len(rest[0])
    # The resumed run's own checkpoint after k more batches stores where it stands in the global order.
    assert resumed[0].position(0, done_batches + 1) == position + b1 * w1
    assert resumed[0].position(0, 10**6) == n - (n - position) % w1


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
    assert set(flat) == set(samplers[0].epoch_order(0)[: n - n % world])


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
    kw["batch_size"] = batch
    samplers = rank_samplers(n, world, **kw)
    for epoch in (0, 1):
        expected = hand_step_totals(samplers, epoch, counts, batch, accumulate)
        for s in samplers:  # every rank computes the same totals
            got = s.step_totals(epoch, counts, accumulate)
            assert got.tolist() == expected
        usable = n - n % world
        assert sum(expected) == sum(int(counts[i]) for i in samplers[0].epoch_order(epoch)[:usable])


def test_step_totals_worked_example():
    # Sequential order 0..9, one rank, batches of 2, two batches per step: steps are {0..3}, {4..7}, {8, 9}.
    s = ResumableSampler(10, seed=0, shuffle=False, batch_size=2)
    counts = np.arange(10) * 10
    assert s.step_totals(0, counts, 2).tolist() == [60, 220, 170]
    # Two ranks: rank 0 sees 0, 2, 4, 6, 8 and rank 1 sees 1, 3, 5, 7, 9; batches of 2, accumulate 1:
    # step 0 = {0, 2} + {1, 3}, step 1 = {4, 6} + {5, 7}, step 2 = {8} + {9}.
    s2 = ResumableSampler(10, seed=0, shuffle=False, world_size=2, batch_size=2)
    assert s2.step_totals(0, counts, 1).tolist() == [60, 220, 170]
    # Resumed after sample 4 with batches of 3 on one rank, Lightning's counter at 1 (one batch of 4 done):
    # batch 1 = {4, 5, 6}, batch 2 = {7, 8, 9}; accumulating 2, batch 1 belongs to step 0, batch 2 to step 1.
    s3 = ResumableSampler(10, seed=0, shuffle=False, batch_size=3)
    s3.resume_from(0, 4, 1)
    assert s3.step_totals(0, counts, 2).tolist() == [150, 240] and s3.steps_left(0, 2) == 2
    assert s3.step_totals(0, counts, 1).tolist() == [0, 150, 240] and s3.steps_left(0, 1) == 2


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


def test_a_resumed_bucketed_epoch_keeps_the_checkpoints_buckets():
    # Buckets are one global batch each; the resumed epoch is ordered with the checkpoint's bucket size,
    # so its rest is the same sample sequence whatever the new global batch.
    n, lengths = 40, [(7 * i) % 23 for i in range(40)]
    saved = ResumableSampler(n, seed=2, lengths=lengths, bucket_size=8)
    resumed = ResumableSampler(n, seed=2, lengths=lengths, bucket_size=3, batch_size=3)
    assert saved.epoch_order(0) != resumed.epoch_order(0)
    resumed.resume_from(0, 16, 2, bucket_size=8)
    assert list(resumed) == saved.epoch_order(0)[16:]
    assert resumed.plan(1).bucket_size == 3  # later epochs: the new global batch
