"""`TrainOrder`: the order training reads its split in: the sampler of each train loader, where a resumed
run continues, the target tokens of each optimizer step (carried by the batches), the steps left and the
resume state a checkpoint keeps (seed, epoch and position, never a permutation). The data module builds the
splits and loaders and leaves the order to this."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from lit_lora.data import preference_batches
from lit_lora.data.report import row_stats
from lit_lora.data.resume import continue_epoch, data_state, epochs_until_whole, whole_epoch_batches
from lit_lora.data.samplers import ResumableSampler, WithStepTokens
from lit_lora.notes import print_note


class TrainOrder:
    """The training split `ds`'s order, with the data options `seed`, `shuffle` and `length_bucketing`."""

    def __init__(self, ds: Any, seed: int, shuffle: bool, length_bucketing: bool) -> None:
        self.ds, self.seed, self.shuffle, self.length_bucketing = ds, seed, shuffle, length_bucketing
        self.sampler: Optional[ResumableSampler] = None  # the last train loader's
        self._resume: Optional[dict[str, int]] = None
        self._stats: Optional[tuple[np.ndarray, np.ndarray]] = None

    @property
    def preference(self) -> bool:
        """Rows of preference data (a prompt and its completions) rather than SFT's sequences."""
        return "prompt_ids" in self.ds.column_names

    def row_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, predicted tokens) per training row (`report.row_stats`), computed once; for preference rows
        (the prompt plus its longer completion, 1): the step's count is then its pairs, or KTO's rows
        (`preference_batches.row_stats`)."""
        if self._stats is None:
            self._stats = preference_batches.row_stats(self.ds) if self.preference else row_stats(self.ds)
        return self._stats

    def sampler_for(self, rank: int, world: int, batch_size: int) -> ResumableSampler:
        bucketed = self.length_bucketing and ("labels" in self.ds.column_names or self.preference)
        lengths = self.row_stats()[0] if bucketed else None
        return ResumableSampler(len(self.ds), seed=self.seed, shuffle=self.shuffle, rank=rank, world_size=world,
                                batch_size=batch_size, lengths=lengths, bucket_size=batch_size * world)

    def loader_sampler(self, trainer: Any, rank: int, world: int, batch_size: int) -> tuple[Any, Optional[int]]:
        """(the sampler of a new train loader, the epochs after which Lightning must build the loader anew
        because a resumed epoch counts differently from a whole one, else None)."""
        sampler, reload = self.sampler_for(rank, world, batch_size), None
        if self._resume is not None:
            state, self._resume = self._resume, None
            progress = trainer.fit_loop.epoch_loop.batch_progress.current  # as restored
            note = continue_epoch(sampler, state, at_batch_end=progress.completed < progress.ready)
            if note and rank == 0:
                print_note(note)
            reload = epochs_until_whole(sampler, trainer.current_epoch)
        self.sampler = sampler
        # Each batch carries the target tokens of its whole optimizer step (every micro-batch, every process),
        # so the loss is a mean over the step's tokens; not needed where every row predicts the same number.
        if not {"labels", "position_ids"} & set(self.ds.column_names) and not self.preference:
            return sampler, reload
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        return WithStepTokens(sampler, self.row_stats()[1], accumulate), reload

    def steps_left(self, epoch: int, accumulate: int, max_epochs: int) -> Optional[int]:
        """Optimizer steps from now to the end of the run when `epoch` is a resumed one laid out anew, whose
        batch count Lightning's estimate would take for every epoch; None when that estimate holds."""
        sampler = self.sampler
        if sampler is None or sampler.plan(epoch).start == 0:
            return None
        whole_epoch = -(-whole_epoch_batches(sampler) // accumulate)
        return sampler.steps_left(epoch, accumulate) + (max_epochs - epoch - 1) * whole_epoch

    def state_dict(self, trainer: Any) -> dict[str, int]:
        if trainer is None or self.sampler is None:
            return {}
        # Batches consumed by training steps this epoch; the loader's own count would include the batch
        # Lightning prefetches.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return data_state(self.sampler, self.seed, trainer.current_epoch, done, trainer.accumulate_grad_batches)

    def resume(self, state: dict[str, int]) -> None:
        if state.get("seed") != self.seed:
            print_note(f"data.seed changed from {state.get('seed')} to {self.seed}; the data order "
                       "differs from the checkpointed run")
        self._resume = dict(state)
