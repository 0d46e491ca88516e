"""The learning-rate factor (lit_lora/training/schedule.py): linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

import pytest

from lit_lora.errors import LitLoraError
from lit_lora.training.schedule import DEFAULT_WARMUP_RATIO, check_warmup, kept_length, warmup_cosine, warmup_length


@pytest.mark.parametrize("warmup", [1, 4, 10])
def test_warmup_values(warmup):
    values = [warmup_cosine(s, warmup, 100, 0.1) for s in range(warmup)]
    assert values == pytest.approx([(s + 1) / (warmup + 1) for s in range(warmup)], abs=1e-15)
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] < 1.0


def test_warmup_worked_example():
    assert [warmup_cosine(s, 4, 20, 0.0) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8], abs=1e-15)


@pytest.mark.parametrize("warmup,total,floor", [(4, 20, 0.1), (0, 10, 0.0), (10, 11, 0.5)])
def test_exactly_one_at_end_of_warmup(warmup, total, floor):
    assert warmup_cosine(warmup, warmup, total, floor) == 1.0


@pytest.mark.parametrize("warmup,total,floor", [(4, 20, 0.1), (0, 10, 0.0), (10, 11, 0.5), (3, 1000, 0.25)])
def test_floor_at_end_of_schedule_and_after(warmup, total, floor):
    # Step `total` is where the cosine reaches its floor; steps past it stay there.
    assert warmup_cosine(total, warmup, total, floor) == pytest.approx(floor, abs=1e-12)
    for step in (total + 1, total + 50):
        assert warmup_cosine(step, warmup, total, floor) == pytest.approx(floor, abs=1e-12)
    # The step before is still above the floor (and, when it is past warm-up, below the step before it).
    assert floor < warmup_cosine(total - 1, warmup, total, floor)
    if total - 2 >= warmup:
        assert warmup_cosine(total - 1, warmup, total, floor) < warmup_cosine(total - 2, warmup, total, floor)


@pytest.mark.parametrize("floor", [0.0, 0.1, 0.9])
def test_monotone_non_increasing_after_warmup(floor):
    warmup, total = 5, 60
    values = [warmup_cosine(s, warmup, total, floor) for s in range(warmup, total + 10)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    decay = values[: total - warmup + 1]
    assert all(b < a for a, b in zip(decay, decay[1:]))  # strictly decreasing until the floor
    assert all(floor - 1e-12 <= v <= 1.0 for v in values)


@pytest.mark.parametrize("warmup,total,floor", [(10, 110, 0.1), (0, 2, 0.0), (4, 24, 0.3)])
def test_midpoint_is_halfway_to_the_floor(warmup, total, floor):
    mid = warmup + (total - warmup) // 2
    assert warmup_cosine(mid, warmup, total, floor) == pytest.approx((1 + floor) / 2, abs=1e-12)


def test_cosine_worked_example():
    # warmup 0, total 4, floor 0: 0.5 * (1 + cos(pi * s / 4)) for s = 0..4
    got = [warmup_cosine(s, 0, 4, 0.0) for s in range(5)]
    assert got == pytest.approx([1.0, 0.5 + math.sqrt(2) / 4, 0.5, 0.5 - math.sqrt(2) / 4, 0.0], abs=1e-12)
    # with a floor the same curve is squeezed into [floor, 1]
    assert warmup_cosine(1, 0, 4, 0.2) == pytest.approx(0.2 + 0.8 * (0.5 + math.sqrt(2) / 4), abs=1e-12)


@pytest.mark.parametrize("total", [None, 0, 3, 5])
def test_constant_after_warmup_without_a_usable_total(total):
    warmup = 5  # total None (unbounded run), 0, or not longer than the warm-up
    assert [warmup_cosine(s, warmup, total, 0.1) for s in range(warmup)] == pytest.approx(
        [(s + 1) / 6 for s in range(warmup)], abs=1e-15)
    assert all(warmup_cosine(s, warmup, total, 0.1) == 1.0 for s in range(warmup, warmup + 200))


@pytest.mark.parametrize("total", [None, 1, 50])
def test_no_warmup_starts_at_one(total):
    assert warmup_cosine(0, 0, total, 0.1) == 1.0
    if total == 50:
        assert warmup_cosine(1, 0, total, 0.1) < 1.0


# -- the warm-up's length: steps, a fraction of the run (rounded up, as Hugging Face does), or the default --


@pytest.mark.parametrize("steps, ratio, total, want", [
    (None, None, 300, 15),   # DEFAULT_WARMUP_RATIO 0.05 of 300
    (None, None, 30, 2),     # 1.5 rounded up
    (None, 0.1, 375, 38),    # 37.5 rounded up
    (None, 0.0, 375, 0),
    (7, None, 375, 7),       # steps win; the total does not matter
    (7, None, None, 7),
    (None, 0.1, None, 0),    # an unbounded run has no fraction to take
])
def test_warmup_length(steps, ratio, total, want):
    assert DEFAULT_WARMUP_RATIO == 0.05
    assert warmup_length(steps, ratio, total) == want


def test_warmup_steps_and_ratio_together_are_one_error():
    check_warmup(None, None), check_warmup(5, None), check_warmup(None, 0.2)
    with pytest.raises(LitLoraError, match=r"^model.warmup_steps=5 and model.warmup_ratio=0.2 are both set; set one"):
        check_warmup(5, 0.2)


def test_a_resumed_run_keeps_the_schedule_it_started_with():
    assert kept_length(300, None) == (300, None)  # a fresh run
    assert kept_length(300, 300) == (300, None)
    kept, note = kept_length(600, 300)  # resumed with twice the epochs
    assert kept == 300 and note == ("lit_lora: the learning-rate schedule keeps the 300 steps the run started "
                                    "with (these settings plan 600)")
    assert kept_length(None, 300)[0] == 300
