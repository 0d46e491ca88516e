"""`LitLoraData`: the LightningDataModule that turns a corpus into resumable batches.

Sources (`sources.py`): plain-text files or globs (a file is one document), JSONL with a text field,
prompt/completion JSONL (loss on the completion only), or a Hugging Face dataset by name or local path.
This module keeps the loaders and the resume state; every setting is read from `self.hparams`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_lora.constants import IGNORE_INDEX
from lit_lora.data.auto_batch import AUTO, choose_batch_size, saved_data_state
from lit_lora.data.batches import Collator, PromptCollator, PromptRows, RowsView
from lit_lora.data.resume import ResumableMarkerLoader, continue_epoch, data_state, reload_after, whole_epoch_batches
from lit_lora.data.samplers import EvalShardSampler, ResumableSampler
from lit_lora.data.sources import NO_TRAINING_DATA, build_eval_split, build_training_splits, eval_files_only
from lit_lora.errors import LitLoraError
from lit_lora.generation.prompts import read_prompts
from lit_lora.hub import load_tokenizer
from lit_lora.settings import check_number


class LitLoraData(pl.LightningDataModule):
    def __init__(
        self,
        train_files: Union[str, list[str], None] = None,
        val_files: Union[str, list[str], None] = None,
        val_fraction: float = 0.05,
        format: Literal["auto", "text", "jsonl", "prompt_completion"] = "auto",
        text_field: str = "text",
        dataset_name: Optional[str] = None,
        dataset_config: Optional[str] = None,
        train_split: str = "train",
        val_split: Optional[str] = "validation",
        block_size: int = 512,
        batch_size: Union[int, Literal["auto"]] = 8,
        shuffle: bool = True,
        seed: int = 42,
        num_workers: int = 0,
        length_bucketing: bool = True,
        cache_dir: Optional[str] = None,
        num_proc: Optional[int] = None,
        tokenizer_name_or_path: Optional[str] = None,
        test_files: Union[str, list[str], None] = None,
        predict_file: Optional[str] = None,
        trust_remote_code: bool = False,
    ) -> None:
        """
        Args:
            train_files: Training files or globs. Plain text (a file is one document), JSONL with a `text`
                field, or prompt/completion JSONL (`prompt`, `completion` fields). Not needed by `validate`
                or `test` given `val_files`/`test_files`.
            val_files: Validation files or globs, same formats. When omitted, `val_fraction` is split off.
            val_fraction: Fraction of training blocks (or examples) held out for validation, with `seed`.
            format: "auto" detects from the extension and the first JSONL record's fields.
            text_field: Name of the text field in JSONL files and Hugging Face datasets.
            dataset_name: A Hugging Face dataset name or local path for `datasets.load_dataset`,
                used instead of train_files.
            dataset_config: The dataset's configuration name, if it has several.
            train_split: Split of `dataset_name` to train on.
            val_split: Split of `dataset_name` to validate on; if it has none, `val_fraction` applies.
            block_size: Tokens per packed block (and the longest prompt+completion kept).
            batch_size: Samples per batch on each device; "auto": the largest power of two whose estimated
                peak memory fits the device's free memory (said at the start of `fit`).
            shuffle: Reshuffle the training data every epoch (seeded, so resumable).
            seed: Seed of the data order and of the validation split.
            num_workers: DataLoader worker processes.
            length_bucketing: For prompt/completion data, batch examples of similar length together so
                padding stays small (still seeded and resumable).
            cache_dir: Where `datasets` keeps its Arrow cache (default: its own, ~/.cache/huggingface/datasets).
            num_proc: Processes for tokenization (default: all cores for corpora of several MB).
            tokenizer_name_or_path: Tokenizer to use; set from the model's options by the CLI.
            test_files: Files or globs `test` evaluates, same formats; default: the validation split.
            predict_file: Prompts `predict` completes: one per line (blank lines skipped), or JSONL with a
                `prompt` field. Training data is not needed for predict.
            trust_remote_code: Let the tokenizer's repository run its own code; set from --model.* by the CLI.
        """
        super().__init__()
        check_number("data.block_size", block_size, at_least=2, integer=True)
        if batch_size != AUTO:
            check_number("data.batch_size", batch_size, at_least=1, integer=True)
        check_number("data.val_fraction", val_fraction, at_least=0, below=1)
        check_number("data.num_workers", num_workers, at_least=0, integer=True)
        if num_proc is not None:
            check_number("data.num_proc", num_proc, at_least=1, integer=True)
        if not (train_files or dataset_name or predict_file or val_files or test_files):
            raise LitLoraError(NO_TRAINING_DATA)
        # The tokenizer options are the model's (linked values); logging them twice would clash with the
        # model's hyperparameters.
        self.save_hyperparameters(ignore=["tokenizer_name_or_path", "trust_remote_code"])
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.trust_remote_code = trust_remote_code
        self.tokenizer: Any = None
        self.train_ds: Any = None
        self.val_ds: Any = None
        self.test_ds: Any = None
        self.predict_prompts: Optional[list[str]] = None
        self.data_format: Optional[str] = None
        self.truncated = 0
        self._resume: Optional[dict[str, int]] = None
        self._sampler: Optional[ResumableSampler] = None
        self._reload_setting: Optional[int] = None  # the user's reload_dataloaders_every_n_epochs, while changed
        self._step_tokens: Optional[tuple[tuple[int, int], np.ndarray]] = None  # ((epoch, accumulate), totals)
        self._counts: Optional[np.ndarray] = None
        self._auto_batch: Optional[int] = None  # what data.batch_size auto chose
        self.resume_checkpoint: Optional[str] = None  # fit's --ckpt_path (set by the CLI): auto reads its layout

    @property
    def batch_size(self) -> int:
        """Samples per batch on each device (what the model and callbacks read; see training.contracts)."""
        return self._auto_batch if self.hparams.batch_size == AUTO else self.hparams.batch_size

    # -- building the splits ----------------------------------------------------------------------------

    def _load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            if not self.tokenizer_name_or_path:
                raise LitLoraError("data.tokenizer_name_or_path is not set (the CLI sets it from --model.*)")
            self.tokenizer = load_tokenizer(self.tokenizer_name_or_path, trust_remote_code=self.trust_remote_code)
        return self.tokenizer

    def _eval_files_only(self) -> Optional[tuple[list[str], str]]:
        return eval_files_only(self.hparams, self.trainer.state.fn if self.trainer is not None else None)

    def prepare_data(self) -> None:
        # Runs on one process per node: fills the datasets cache so setup() on every rank only reads it.
        if self.trainer is not None and self.trainer.predicting:
            return  # predict reads only its prompts file
        eval_only = self._eval_files_only()
        if eval_only:
            build_eval_split(*eval_only, self.hparams, self._load_tokenizer())
        else:
            build_training_splits(self.hparams, self._load_tokenizer())

    def setup(self, stage: Optional[str] = None) -> None:
        self._build(stage)
        if self.hparams.batch_size == AUTO and self._auto_batch is None:
            self._auto_batch = self._choose_batch_size()

    def _build(self, stage: Optional[str]) -> None:
        if stage == "predict":
            if not self.hparams.predict_file:
                raise LitLoraError(
                    "predict needs prompts: give --data.predict_file FILE (one prompt per line, or JSONL)"
                )
            self.predict_prompts = read_prompts(self.hparams.predict_file)
            return
        eval_only = self._eval_files_only() if stage in ("validate", "test") else None
        if eval_only:
            if stage == "test" and self.test_ds is None:
                self.test_ds = build_eval_split(*eval_only, self.hparams, self._load_tokenizer())
            elif stage == "validate" and self.val_ds is None:
                self.val_ds = build_eval_split(*eval_only, self.hparams, self._load_tokenizer())
            return
        if self.train_ds is not None:
            return
        train, val, self.data_format = build_training_splits(self.hparams, self._load_tokenizer())
        if "truncated" in train.column_names:
            self.truncated = int(sum(train["truncated"]))
            if self.truncated:
                print(f"lit_lora: {self.truncated} training example(s) longer than "
                      f"block_size={self.hparams.block_size} were truncated at the end of their completion")
            train = train.remove_columns("truncated")
            val = val.remove_columns("truncated") if val is not None else None
        self.train_ds, self.val_ds = train, val
        if val is None and self.trainer is not None:
            self.trainer.limit_val_batches = 0  # no validation; Lightning would warn its loader is empty

    def _choose_batch_size(self) -> int:
        trainer = self.trainer
        if trainer is None:
            raise LitLoraError("data.batch_size auto needs the trainer (run it through the CLI or Trainer.fit)")
        data = next(d for d in (self.train_ds, self.val_ds, self.test_ds, self.predict_prompts) if d is not None)
        saved = saved_data_state(self.resume_checkpoint, type(self).__qualname__) if trainer.state.fn == "fit" else None
        # No batch larger than the data, nor so large that an epoch is shorter than an integer val_check_interval.
        interval = trainer.val_check_interval if isinstance(trainer.val_check_interval, int) else 1
        per_rank = max(1, len(data) // trainer.world_size // max(1, interval))
        return choose_batch_size(trainer, self.hparams.block_size, saved, per_rank)

    # -- loaders ------------------------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, ds: Any, sampler: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return ResumableMarkerLoader(
            RowsView(ds),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=Collator(self._load_tokenizer().pad_token_id),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            # A private generator: creating a loader iterator must not draw from the global RNG, which
            # would shift dropout masks after a resume.
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        hp = self.hparams
        lengths = None
        if hp.length_bucketing and "labels" in self.train_ds.column_names:
            lengths = [len(x) for x in self.train_ds["input_ids"]]
        sampler = ResumableSampler(
            len(self.train_ds), seed=hp.seed, shuffle=hp.shuffle, rank=rank, world_size=world,
            batch_size=self.batch_size, lengths=lengths, bucket_size=self.batch_size * world,
        )
        if self._reload_setting is not None:  # the loader after a resumed epoch: the user's setting is back
            self.trainer.reload_dataloaders_every_n_epochs, self._reload_setting = self._reload_setting, None
        if self._resume is not None:
            state, self._resume = self._resume, None
            progress = self.trainer.fit_loop.epoch_loop.batch_progress.current  # as restored
            note = continue_epoch(sampler, state, at_batch_end=progress.completed < progress.ready)
            if note and rank == 0:
                print(note)
            self._reload_setting = reload_after(self.trainer, sampler)
        self._sampler = sampler
        return self._loader(self.train_ds, sampler)

    def step_target_tokens(self, epoch: int, batch_idx: int, accumulate: int) -> Optional[int]:
        """Target tokens of the whole optimizer step that training batch `batch_idx` of `epoch` belongs to:
        its `accumulate` micro-batches on every process. None for packed text, whose micro-batches all
        hold the same number, so their means already weigh every token alike."""
        if self._sampler is None or "labels" not in self.train_ds.column_names:
            return None
        key = (epoch, accumulate)
        if self._step_tokens is None or self._step_tokens[0] != key:
            counts = self._target_counts()
            self._step_tokens = (key, self._sampler.step_totals(epoch, counts, accumulate))
        return int(self._step_tokens[1][batch_idx // accumulate])

    def steps_left(self, epoch: int, accumulate: int, max_epochs: int) -> Optional[int]:
        """Optimizer steps from now to the end of the run when `epoch` is a resumed one laid out anew, whose
        batch count Lightning's estimate would take for every epoch; None when that estimate holds."""
        sampler = self._sampler
        if sampler is None or sampler.plan(epoch).start == 0:
            return None
        whole_epoch = -(-whole_epoch_batches(sampler) // accumulate)
        return sampler.steps_left(epoch, accumulate) + (max_epochs - epoch - 1) * whole_epoch

    def _target_counts(self) -> np.ndarray:
        """Predicted tokens per training example (labels after the shift that are not -100)."""
        if self._counts is None:
            labels = self.train_ds.with_format("numpy")["labels"]
            self._counts = np.fromiter(((row[1:] != IGNORE_INDEX).sum() for row in labels), dtype=np.int64,
                                       count=len(labels))
        return self._counts

    def val_dataloader(self) -> Any:
        if self.val_ds is None:
            return []
        return self._loader(self.val_ds, EvalShardSampler(len(self.val_ds), *self._rank_world()))

    def test_dataloader(self) -> Any:
        if self.test_ds is None:
            return self.val_dataloader()
        return self._loader(self.test_ds, EvalShardSampler(len(self.test_ds), *self._rank_world()))

    def predict_dataloader(self) -> DataLoader:
        prompts = self.predict_prompts or []
        return DataLoader(PromptRows(prompts), batch_size=self.batch_size,
                          sampler=EvalShardSampler(len(prompts), *self._rank_world()),
                          collate_fn=PromptCollator(self._load_tokenizer()), num_workers=self.hparams.num_workers)

    # -- resume state: seed + epoch + position, never a permutation ---------------------------------------

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or self._sampler is None:
            return {}
        # Batches consumed by training steps this epoch; the loader's own count would include the batch
        # Lightning prefetches.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return data_state(self._sampler, self.hparams.seed, trainer.current_epoch, done,
                          trainer.accumulate_grad_batches)

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        if state.get("seed") != self.hparams.seed:
            print(f"lit_lora: data.seed changed from {state.get('seed')} to {self.hparams.seed}; the data order "
                  "differs from the checkpointed run")
        self._resume = dict(state)
