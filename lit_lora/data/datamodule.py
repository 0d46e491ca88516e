"""`LitLoraData`: the LightningDataModule that turns a corpus into resumable batches.

Sources (`sources.py`): plain-text files or globs (a file is one document), JSONL with a text field,
prompt/completion JSONL (loss on the completion only), conversations (messages, ShareGPT, Alpaca; loss on
the assistant's turns), or a Hugging Face dataset by name or local path. This module keeps the loaders and
the resume state; every setting is read from `self.hparams`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_lora.data.auto_batch import AUTO, batch_size_for
from lit_lora.data.batches import Collator, PromptCollator, PromptRows, RowsView
from lit_lora.data.report import data_lines, padding_efficiency, row_stats
from lit_lora.data.resume import ResumableMarkerLoader, continue_epoch, data_state, reload_after, whole_epoch_batches
from lit_lora.data.samplers import EvalShardSampler, ResumableSampler
from lit_lora.data.sources import build_eval_split, build_training_splits, check_options, eval_files_only
from lit_lora.errors import LitLoraError
from lit_lora.generation.chat import end_of_turn_note, resolve_template
from lit_lora.generation.prompts import read_prompts
from lit_lora.hub import check_vocabulary, load_tokenizer
from lit_lora.notes import print_note


class LitLoraData(pl.LightningDataModule):
    def __init__(
        self,
        train_files: Union[str, list[str], None] = None,
        val_files: Union[str, list[str], None] = None,
        val_fraction: float = 0.05,
        format: Literal["auto", "text", "jsonl", "prompt_completion", "messages", "sharegpt", "alpaca"] = "auto",
        text_field: str = "text",
        chat_template: str = "auto",
        train_on: Literal["assistant", "last", "all"] = "assistant",
        packing: Optional[bool] = None,
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
            train_files: Training files or globs: plain text (a file is one document) or JSONL of one format
                (see `format`). Not needed by `validate` or `test` given `val_files`/`test_files`.
            val_files: Validation files or globs, same formats. When omitted, `val_fraction` is split off.
            val_fraction: Fraction of training blocks (or examples) held out for validation, with `seed`.
            format: "auto" detects it from the extension and the first record's fields (and says so): `text`
                (`text_field`), `prompt_completion` (strings, or TRL's message lists), `messages`, `sharegpt`
                (`conversations`), `alpaca` (`instruction`, `input`, `output`); plain files are `text`.
            text_field: Name of the text field in JSONL files and Hugging Face datasets.
            chat_template: For conversations: "auto" (the tokenizer's own, else the built-in "plain"),
                "tokenizer", "plain", or a Jinja file. Saved with checkpoints, adapters and merged models.
            train_on: Which conversation tokens train: "assistant" (every assistant turn with its end-of-turn
                token), "last" (the final assistant turn), "all". Alpaca trains its `output`.
            packing: Join documents or examples into full blocks, each attending only to itself (positions
                restart per document). Default: on for text, off for examples (length-bucketed batches
                instead; see docs/data-and-chat.md for the measurement).
            dataset_name: A Hugging Face dataset instead of train_files: a hub id, a `save_to_disk` folder, a
                folder of data files, or one .json/.jsonl/.parquet/.csv file.
            dataset_config: The dataset's configuration name, if it has several.
            train_split: Split of `dataset_name` to train on.
            val_split: Split of `dataset_name` to validate on; if it has none, `val_fraction` applies.
            block_size: Tokens per packed block (and the longest prompt+completion kept).
            batch_size: Samples per batch on each device; "auto": the largest power of two whose estimated
                peak memory fits the device's free memory (said at the start of `fit`).
            shuffle: Reshuffle the training data every epoch (seeded, so resumable).
            seed: Seed of the data order and of the validation split.
            num_workers: DataLoader worker processes.
            length_bucketing: For examples (prompt/completion, conversations), batch those of similar length
                together so padding stays small (still seeded and resumable).
            cache_dir: Where `datasets` keeps its Arrow cache (default: its own, ~/.cache/huggingface/datasets).
            num_proc: Processes for tokenization (default: all cores for corpora of several MB).
            tokenizer_name_or_path: Tokenizer to use; set from the model's options by the CLI.
            test_files: Files or globs `test` evaluates, same formats; default: the validation split.
            predict_file: Prompts `predict` completes: one per line (blank lines skipped), or JSONL with a
                `prompt` field. Training data is not needed for predict.
            trust_remote_code: Let the tokenizer's repository run its own code; set from --model.* by the CLI.
        """
        super().__init__()
        check_options(locals())
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
        self.counts: dict[str, int] = {}  # what corpus.build_split reports on the training data
        self.chat_template: Optional[str] = None  # the template conversations were rendered with
        self._resume: Optional[dict[str, int]] = None
        self._sampler: Optional[ResumableSampler] = None
        self._reload_setting: Optional[int] = None  # the user's reload_dataloaders_every_n_epochs, while changed
        self._step_tokens: Optional[tuple[tuple[int, int], np.ndarray]] = None  # ((epoch, accumulate), totals)
        self._stats: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._template_name = ""
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
            # Before any tokenizing: the model is built by now (fit, validate, test, predict).
            check_vocabulary(getattr(self.trainer and self.trainer.lightning_module, "model", None), self.tokenizer)
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
            data = next(d for d in (self.train_ds, self.val_ds, self.test_ds, self.predict_prompts) if d is not None)
            self._auto_batch = batch_size_for(self.trainer, len(data), self.hparams.block_size, self.resume_checkpoint,
                                              type(self).__qualname__)

    def data_lines(self, batch_size: int) -> list[str]:
        """What the training data holds (`report.data_lines`), for batches of `batch_size`."""
        lengths, targets = self._row_stats()
        order = self._train_sampler(0, 1, batch_size).epoch_order(0)
        batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        settings = dict(self.hparams, detected=self.data_format, packed="position_ids" in self.train_ds.column_names,
                        template=self.chat_template and self._template_name,
                        end_of_turn_note=self.chat_template and end_of_turn_note(self.tokenizer, self.chat_template))
        return data_lines(lengths, targets, self.counts, padding_efficiency(lengths, batches), settings)

    def _build(self, stage: Optional[str]) -> None:
        if stage == "predict":
            if not self.hparams.predict_file:
                raise LitLoraError(
                    "predict needs prompts: give --data.predict_file FILE (one prompt per line, or JSONL)"
                )
            self.predict_prompts = read_prompts(self.hparams.predict_file)
            if any(isinstance(p, list) for p in self.predict_prompts):
                self._template_name, self.chat_template = resolve_template(self._load_tokenizer(),
                                                                          self.hparams.chat_template)
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
        train, val, self.data_format = build_training_splits(self.hparams, self._load_tokenizer(), self.counts)
        if self.counts.get("conversations"):
            self._template_name, self.chat_template = resolve_template(self.tokenizer, self.hparams.chat_template)
        self.train_ds, self.val_ds = train, val
        if val is None and self.trainer is not None:
            self.trainer.limit_val_batches = 0  # no validation; Lightning would warn its loader is empty

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

    def _train_sampler(self, rank: int, world: int, batch_size: int) -> ResumableSampler:
        hp = self.hparams
        lengths = self._row_stats()[0] if hp.length_bucketing and "labels" in self.train_ds.column_names else None
        return ResumableSampler(len(self.train_ds), seed=hp.seed, shuffle=hp.shuffle, rank=rank, world_size=world,
                                batch_size=batch_size, lengths=lengths, bucket_size=batch_size * world)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        if self._sampler is None and rank == 0:  # the first loader of fit: after the model's summary lines
            for line in self.data_lines(self.batch_size):
                print_note(line)
        sampler = self._train_sampler(rank, world, self.batch_size)
        if self._reload_setting is not None:  # the loader after a resumed epoch: the user's setting is back
            self.trainer.reload_dataloaders_every_n_epochs, self._reload_setting = self._reload_setting, None
        if self._resume is not None:
            state, self._resume = self._resume, None
            progress = self.trainer.fit_loop.epoch_loop.batch_progress.current  # as restored
            note = continue_epoch(sampler, state, at_batch_end=progress.completed < progress.ready)
            if note and rank == 0:
                print_note(note)
            self._reload_setting = reload_after(self.trainer, sampler)
        self._sampler = sampler
        return self._loader(self.train_ds, sampler)

    def step_target_tokens(self, epoch: int, batch_idx: int, accumulate: int) -> Optional[int]:
        """Target tokens of the whole optimizer step that training batch `batch_idx` of `epoch` belongs to:
        its `accumulate` micro-batches on every process. None for rows that all predict the same number."""
        if self._sampler is None or not {"labels", "position_ids"} & set(self.train_ds.column_names):
            return None
        key = (epoch, accumulate)
        if self._step_tokens is None or self._step_tokens[0] != key:
            self._step_tokens = (key, self._sampler.step_totals(epoch, self._row_stats()[1], accumulate))
        return int(self._step_tokens[1][batch_idx // accumulate])

    def steps_left(self, epoch: int, accumulate: int, max_epochs: int) -> Optional[int]:
        """Optimizer steps from now to the end of the run when `epoch` is a resumed one laid out anew, whose
        batch count Lightning's estimate would take for every epoch; None when that estimate holds."""
        sampler = self._sampler
        if sampler is None or sampler.plan(epoch).start == 0:
            return None
        whole_epoch = -(-whole_epoch_batches(sampler) // accumulate)
        return sampler.steps_left(epoch, accumulate) + (max_epochs - epoch - 1) * whole_epoch

    def _row_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, predicted tokens) per training row (`report.row_stats`), computed once."""
        if self._stats is None:
            self._stats = row_stats(self.train_ds)
        return self._stats

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
                          collate_fn=PromptCollator(self._load_tokenizer(), self.chat_template), num_workers=self.hparams.num_workers)

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
            print_note(f"data.seed changed from {state.get('seed')} to {self.hparams.seed}; the data order "
                       "differs from the checkpointed run")
        self._resume = dict(state)
