"""Where a resumed run continues (lit_lora/data/resume.py): the state a checkpoint stores and how a run with
another batch size or number of devices takes it up, in each of the cases Lightning's loop distinguishes."""

from __future__ import annotations


from lit_lora.data.resume import continue_epoch, data_state, epochs_until_whole
from lit_lora.data.samplers import ResumableSampler

N = 32


def state(world, batch, done, epoch=0, **extra):
    return {"seed": 42, "epoch": epoch, "batches_done": done, "batch_size": batch, "world_size": world, **extra}


def test_the_stored_state_is_the_position_in_the_global_order():
    s = ResumableSampler(N, seed=42, world_size=2, batch_size=4)
    assert data_state(s, 42, 0, 3, accumulate=2) == dict(state(2, 4, 3, position=24, bucket_size=0), accumulate=2)
    s.resume_from(0, 8, 2)  # a resumed run: its counter started at 2, at sample 8
    assert data_state(s, 42, 0, 3)["position"] == 16


def test_mid_epoch_on_another_layout_continues_at_the_same_sample_and_says_so():
    s = ResumableSampler(N, seed=42, batch_size=8)
    note = continue_epoch(s, state(2, 4, 2, position=16), at_batch_end=True)
    assert note == ("lit_lora: resuming epoch 0 at sample 16 of 32 with 1 device(s) x 8 "
                    "(the checkpoint ran 2 x 4)")
    assert list(s) == s.epoch_order(0)[16:] and len(s) == 2 * 8 + 16
    same = ResumableSampler(N, seed=42, world_size=2, batch_size=4, rank=1)
    assert continue_epoch(same, state(2, 4, 2, position=16), at_batch_end=True) is None
    assert list(same) == same.epoch_order(0)[17::2]


def test_a_format_1_checkpoint_has_no_position_and_full_batches_before_it():
    s = ResumableSampler(N, seed=42, batch_size=2)
    continue_epoch(s, state(1, 4, 3), at_batch_end=True)
    assert list(s) == s.epoch_order(0)[12:]


def test_a_finished_epoch_with_the_same_batch_count_is_left_to_lightning():
    s = ResumableSampler(N, seed=42, world_size=2, batch_size=4)  # 4 batches per epoch, as the checkpoint
    assert continue_epoch(s, state(1, 8, 4, position=32), at_batch_end=True) is None
    assert s.plan(0).start == 0 and len(s) == 16 and epochs_until_whole(s, 0) is None


def test_a_finished_epoch_saved_after_validation_ends_at_the_restored_count():
    s = ResumableSampler(N, seed=42, batch_size=2)  # 16 batches per epoch; the checkpoint counted 8
    continue_epoch(s, state(1, 4, 8, position=32), at_batch_end=False)
    assert s.epoch == 0 and list(s) == [] and len(s) == 8 * 2
    assert epochs_until_whole(s, current_epoch=0) == 1


def test_a_finished_epoch_saved_at_its_last_batch_counts_the_next_epoch_on():
    # Lightning goes on to epoch 1 with its counter at 8 unless 8 reaches this run's batches per epoch.
    s = ResumableSampler(N, seed=42, batch_size=2)
    continue_epoch(s, state(1, 4, 8, position=32), at_batch_end=True)
    assert s.epoch == 1 and list(s) == s.epoch_order(1) and len(s) == 8 * 2 + N
    assert s.steps_left(1, 1) == 16
    # Lightning loaded at epoch 0, counted as done; a fresh loader must come at epoch 2, not 1.
    assert epochs_until_whole(s, current_epoch=0) == 2
