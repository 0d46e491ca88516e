"""Where a resumed run continues in the data: the position a checkpoint stores, and how a run with another
number of devices or batch size takes it up (elastic resume).

A checkpoint stores the seed, the epoch and the position in that epoch's global sample order (samples
trained on, all ranks together), plus the batch size and world size it ran with. The global order does not
depend on either, so any layout continues at the same sample: none of the epoch is repeated or skipped.
Length-bucketed data is the exception in one respect: its buckets are one global batch each, so the resumed
epoch keeps the checkpoint's buckets and later epochs use the new global batch.
"""

from __future__ import annotations

from typing import Any, Optional

from torch.utils.data import DataLoader

from lit_lora.data.samplers import ResumableSampler


def data_state(sampler: ResumableSampler, seed: int, epoch: int, batches_done: int,
               accumulate: int = 1) -> dict[str, int]:
    """The resume state of a run that has trained `batches_done` batches of `epoch`, accumulating
    `accumulate` batches per optimizer step (`data.batch_size auto` keeps the global batch with it)."""
    return {
        "seed": seed,
        "epoch": epoch,
        "batches_done": batches_done,
        "position": sampler.position(epoch, batches_done),
        "batch_size": sampler.batch_size,
        "world_size": sampler.world_size,
        "bucket_size": sampler.plan(epoch).bucket_size,
        "accumulate": accumulate,
    }


def continue_epoch(sampler: ResumableSampler, state: dict[str, int], at_batch_end: bool) -> Optional[str]:
    """Set `sampler` to continue where the checkpoint stopped; returns a line to print when the layout
    changed (None otherwise).

    `at_batch_end`: the checkpoint was written at the end of a training batch (Lightning's counters show
    that batch not yet completed). After an epoch's last batch Lightning then goes on to the next epoch
    with its batch counter where it was, unless that counter reaches this run's batches per epoch.
    """
    saved_world, saved_batch, n, epoch = state["world_size"], state["batch_size"], sampler.num_samples, state["epoch"]
    done = state["batches_done"]
    # Checkpoints of format 1 have no position: every batch before theirs was full.
    position = state.get("position", done * saved_batch * saved_world)
    bucket = state.get("bucket_size", saved_batch * saved_world)
    if n - position >= saved_world:  # mid-epoch: continue that epoch at the same sample
        sampler.resume_from(epoch, position, done, bucket)
    elif whole_epoch_batches(sampler) == done:
        return None  # that epoch ended; Lightning's own count ends it here too
    elif at_batch_end:
        sampler.resume_from(epoch + 1, 0, done)  # the next epoch, whole, counted on from `done`
        epoch += 1
    else:
        sampler.resume_from(epoch, n, done, bucket)  # nothing left: the epoch ends at `done` batches
    sampler.set_epoch(epoch)
    if 0 < position < n and (saved_world, saved_batch) != (sampler.world_size, sampler.batch_size):
        return (f"lit_lora: resuming epoch {epoch} at sample {position} of {n} with "
                f"{sampler.world_size} device(s) x {sampler.batch_size} (the checkpoint ran "
                f"{saved_world} x {saved_batch})")
    return None


def whole_epoch_batches(sampler: ResumableSampler) -> int:
    """Batches per rank in an epoch that is not resumed."""
    return -(-(sampler.num_samples // sampler.world_size) // sampler.batch_size)


def epochs_until_whole(sampler: ResumableSampler, current_epoch: int) -> Optional[int]:
    """When the resumed epoch counts another number of batches than a whole one: after how many epochs
    Lightning must build the train loader again (its `reload_dataloaders_every_n_epochs`, for that one
    reload); None when the counts agree."""
    # Lightning counts an epoch's batches once, when it builds the loader; without a fresh loader the next
    # epoch would stop at the resumed epoch's count. It reloads when current_epoch - (the epoch it last
    # loaded at) reaches the setting, and it loads now.
    if -(-len(sampler) // sampler.batch_size) == whole_epoch_batches(sampler):
        return None
    return sampler.epoch + 1 - current_epoch


class ResumableMarkerLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable (it has `state_dict`). The position itself is kept by
    `LitLoraData.state_dict`, counted in consumed batches (the loader's own count would include the batch
    Lightning prefetches), so there is nothing to store here."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
