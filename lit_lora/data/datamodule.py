"""`LitLoraData`: the LightningDataModule that turns a corpus into resumable batches.

Sources (`sources.py`): plain-text files or globs (a file is one document), JSONL with a text field,
prompt/completion JSONL (loss on the completion only), conversations (messages, ShareGPT, Alpaca; loss on
the assistant's turns), preference data (TRL's forms: `prompt`/`chosen`/`rejected`, an implicit prompt, or
KTO's `prompt`/`completion`/`label`; batches for `lit_lora.objectives.preference` and `.kto`), or a Hugging
Face dataset by name or local path. This module keeps the loaders and the resume state; every setting is
read from `self.hparams`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lit_lora.data.batches import PromptCollator, PromptRows, RowsView, batch_keys, collator_for
from lit_lora.data.report import training_data_lines
from lit_lora.data.resume import ResumableMarkerLoader
from lit_lora.data.samplers import EvalShardSampler
from lit_lora.data.sources import build_eval_split, build_training_splits, check_options, eval_files_only
from lit_lora.data.stages import build_stage
from lit_lora.data.train_order import TrainOrder
from lit_lora.errors import LitLoraError
from lit_lora.pretrained.hub import load_tokenizer

AUTO = "auto"


class LitLoraData(pl.LightningDataModule):
    def __init__(
        self,
        train_files: Union[str, list[str], None] = None,
        val_files: Union[str, list[str], None] = None,
        val_fraction: float = 0.05,
        format: Literal["auto", "text", "jsonl_text", "prompt_completion", "messages", "sharegpt", "alpaca",
                        "jsonl", "preference", "implicit_preference", "unpaired_preference"] = "auto",
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
            format: "auto" detects it from the extension and the first record's fields (and says so):
                `jsonl_text` (JSONL with a `text_field`; `jsonl` is the same), `prompt_completion` (strings, or
                TRL's message lists), `messages`, `sharegpt` (`conversations`), `alpaca` (`instruction`,
                `input`, `output`); plain files are `text`; preference forms: docs/preference-tuning.md.
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
        self.tokenizer_name_or_path, self.trust_remote_code = tokenizer_name_or_path, trust_remote_code
        self.tokenizer: Any = None
        self.train_ds: Any = None
        self.val_ds: Any = None
        self.test_ds: Any = None
        self.predict_prompts: Optional[list[str]] = None
        self.data_format: Optional[str] = None
        self.counts: dict[str, int] = {}  # what corpus.build_split reports on the training data
        self.chat_template: Optional[str] = None  # the template conversations were rendered with
        self.order: Optional[TrainOrder] = None  # the training split's order, once built
        self.resume_state: Optional[dict[str, int]] = None  # a checkpoint's, until the order takes it up
        # Epochs after which the train loader must be built anew (a resumed epoch counted differently from
        # a whole one); None otherwise. The DataPlan callback applies it to the trainer.
        self.reload_after_epochs: Optional[int] = None
        self.template_name = ""
        self._chosen_batch: Optional[int] = None  # what data.batch_size auto chose (AutoBatchSize callback)

    @property
    def batch_size(self) -> Optional[int]:
        """Samples per batch on each device (what the callbacks read; see training.contracts); None while
        "auto" is not chosen yet."""
        return self._chosen_batch if self.hparams.batch_size == AUTO else self.hparams.batch_size

    def wants_batch_size(self) -> bool:
        """True while `batch_size` is "auto" and not chosen yet."""
        return self.hparams.batch_size == AUTO and self._chosen_batch is None

    def use_batch_size(self, batch_size: int) -> None:
        self._chosen_batch = batch_size

    def rows(self, stage: str) -> int:
        """Rows (blocks or examples) of the split `stage` reads: what caps an automatic batch size."""
        return len(next(d for d in (self.train_ds, self.val_ds, self.test_ds, self.predict_prompts) if d is not None))

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            if not self.tokenizer_name_or_path:
                raise LitLoraError("data.tokenizer_name_or_path is not set (the CLI sets it from --model.*)")
            self.tokenizer = load_tokenizer(self.tokenizer_name_or_path, trust_remote_code=self.trust_remote_code)
        return self.tokenizer

    def eval_files_only(self) -> Optional[tuple[list[str], str]]:
        return eval_files_only(self.hparams, self.trainer.state.fn if self.trainer is not None else None)

    def prepare_data(self) -> None:
        # Runs on one process per node: fills the datasets cache so setup() on every rank only reads it.
        if self.trainer is not None and self.trainer.predicting:
            return  # predict reads only its prompts file
        eval_only = self.eval_files_only()
        if eval_only:
            build_eval_split(*eval_only, self.hparams, self.load_tokenizer())
        else:
            build_training_splits(self.hparams, self.load_tokenizer())

    def setup(self, stage: Optional[str] = None) -> None:
        build_stage(self, stage)

    def data_lines(self, batch_size: int) -> list[str]:
        """What the training data holds, for batches of `batch_size` (`report.training_data_lines`)."""
        return training_data_lines(self, batch_size)

    # -- loaders ------------------------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _batch(self) -> int:
        if self.batch_size is None:
            raise LitLoraError("data.batch_size auto is chosen by the AutoBatchSize callback, which the CLI adds; "
                               "give a number when you build the Trainer yourself")
        return self.batch_size

    def batch_keys(self) -> Optional[list[str]]:  # what DataPlan checks the objective against, before a step
        ds = next((d for d in (self.train_ds, self.val_ds, self.test_ds) if d is not None), None)
        return None if ds is None else batch_keys(ds, self.load_tokenizer(), self.hparams.block_size)

    def _loader(self, ds: Any, sampler: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return ResumableMarkerLoader(
            RowsView(ds),
            batch_size=self._batch(),
            sampler=sampler,
            collate_fn=collator_for(ds, self.load_tokenizer(), self.hparams.block_size),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            # A private generator: creating a loader iterator must not draw from the global RNG, which
            # would shift dropout masks after a resume.
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def train_dataloader(self) -> DataLoader:
        sampler, self.reload_after_epochs = self.order.loader_sampler(self.trainer, *self._rank_world(), self._batch())
        return self._loader(self.train_ds, sampler)

    def steps_left(self, epoch: int, accumulate: int, max_epochs: int) -> Optional[int]:
        """Optimizer steps left in the run when a resumed epoch is laid out anew (`TrainOrder.steps_left`)."""
        return self.order.steps_left(epoch, accumulate, max_epochs) if self.order is not None else None

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
        return DataLoader(PromptRows(prompts), batch_size=self._batch(),
                          sampler=EvalShardSampler(len(prompts), *self._rank_world()),
                          collate_fn=PromptCollator(self.load_tokenizer(), self.chat_template), num_workers=self.hparams.num_workers)

    def state_dict(self) -> dict[str, int]:
        """The resume state: seed, epoch and position, never a permutation (`TrainOrder`)."""
        return self.order.state_dict(self.trainer) if self.order is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state and self.order is not None:
            self.order.resume(state)
        elif state:
            self.resume_state = dict(state)  # taken up by the order once the training split is built
