"""`LitLora`: the LightningModule that fine-tunes a PEFT-LoRA-adapted causal LM. It keeps the steps, the
optimiser and the checkpoint hooks; the model build, the loss, the schedule and the checkpoint section
live beside it in this package.

    python -m lit_lora.cli fit --config conf/gpt2.yaml --data.train_files my.txt
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from torchmetrics import SumMetric

from lit_lora.errors import LitLoraError
from lit_lora.generation.decode import generate_ids
from lit_lora.generation.settings import GenerationSettings
from lit_lora.lora.layers import context_length, frozen_weights_fingerprint
from lit_lora.lora.settings import LoraSettings
from lit_lora.measure.summary import global_batch_line, summary_lines
from lit_lora.model.build import build_peft_model
from lit_lora.model.checkpoint_meta import check_checkpoint, checkpoint_section, keep_lora_only
from lit_lora.model.loss import model_nll, step_loss
from lit_lora.model.rng import restore_rng
from lit_lora.model.schedule import (check_optimizer_device, check_optimizer_settings, current_lr, kept_length,
                                     optimizer_and_schedule)
from lit_lora.quantization import check_device, check_quantization, quantization_key
from lit_lora.training.contracts import TrainingData
from lit_lora.training.distributed import clip_gradients, unwrapped_name
from lit_lora.training.faults import FiniteLossGuard
from lit_lora.training.speed import check_compile_options, compile_in_place, compile_target, enable_tf32, is_compiled
from lit_lora.training.steps import planned_steps
from lit_lora.notes import print_note


class LitLora(pl.LightningModule):
    def __init__(
        self,
        model_name_or_path: str = "gpt2",
        model_config: Optional[dict[str, Any]] = None,
        tokenizer_name_or_path: Optional[str] = None,
        lora: LoraSettings = LoraSettings(),  # noqa: B008  (dataclass default: jsonargparse expands its fields)
        adapter_path: Optional[str] = None,
        gradient_checkpointing: bool = True,
        learning_rate: float = 7e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        optimizer: Literal["adamw", "paged_adamw"] = "adamw",
        warmup_steps: Optional[int] = None,
        warmup_ratio: Optional[float] = None,
        min_lr_ratio: float = 0.1,
        block_size: int = 512,
        base_dtype: Optional[str] = None,
        quantization: Optional[Literal["nf4", "fp4", "int8"]] = None,
        quantization_options: Optional[dict[str, Any]] = None,
        attn_implementation: Optional[str] = None,
        tf32: bool = True,
        compile: bool = False,
        compile_options: Optional[dict[str, Any]] = None,
        trust_remote_code: bool = False,
        generation: GenerationSettings = GenerationSettings(),  # noqa: B008  (expanded like lora)
    ) -> None:
        """
        Args:
            model_name_or_path: Hub id or local directory of the base causal LM (`from_pretrained`).
            model_config: Config fields: a randomly initialised model of that shape instead of weights (no
                download); `model_type` names the family ("llama", ...), else GPT-2 (`{}`: GPT-2 small).
            tokenizer_name_or_path: Tokenizer hub id or directory; default: model_name_or_path. Required with
                model_config, so nothing is fetched from the hub behind your back.
            lora: LoRA settings (PEFT's LoraConfig names).
            adapter_path: A PEFT adapter directory to start training from (its LoRA settings replace `lora`).
            gradient_checkpointing: Recompute activations in the backward pass (non-reentrant) to save memory.
            learning_rate: Peak AdamW learning rate. The default was measured on small models: for GPT-2 small
                and wider ones start lower (docs/models-and-training.md).
            weight_decay: AdamW weight decay on the trainable (LoRA) parameters.
            betas: AdamW betas.
            optimizer: "adamw" (torch's fused AdamW) or "paged_adamw" (bitsandbytes' paged AdamW, CUDA only: its
                state moves to host memory when the GPU runs short, as in QLoRA).
            warmup_steps: Linear warm-up steps before the cosine decay (instead of warmup_ratio).
            warmup_ratio: Warm-up as a fraction of the run's optimizer steps (Hugging Face's name). Neither
                set: 0.05. A resumed run keeps the step count its schedule started with.
            min_lr_ratio: Cosine decay floor, as a fraction of the peak learning rate.
            block_size: Sequence length the data is packed to; set from --data.block_size by the CLI.
            base_dtype: Hold the frozen base weights in this dtype ("bfloat16", "float16"); LoRA weights and
                optimizer state stay float32. Default: float32.
            quantization: QLoRA: bitsandbytes quantizes the base's linear layers as they load, "nf4" or "fp4"
                (4-bit) or "int8"; the other layers keep base_dtype (docs/memory-and-qlora.md; needs the qlora extra).
            quantization_options: BitsAndBytesConfig fields: bnb_4bit_use_double_quant, bnb_4bit_compute_dtype
                (default: base_dtype), bnb_4bit_quant_storage, llm_int8_skip_modules, llm_int8_threshold.
            attn_implementation: Attention kernel ("sdpa", "eager", ...); default SDPA, else eager (said).
            tf32: On CUDA GPUs with TensorFloat-32 (Ampere and newer), let float32 matmuls use it
                (`torch.set_float32_matmul_precision("high")`). No effect on CPUs.
            compile: Compile the model's forward with `torch.compile` for `fit` (in place: checkpoint keys
                keep their names). The first steps are slower while it compiles; pays off on long GPU runs.
            compile_options: Keyword arguments for `torch.compile`, e.g. `{"mode": "max-autotune"}`.
            trust_remote_code: Allow model repositories to run their own code. Off unless you turn it on.
            generation: How `predict` completes prompts (the settings of `python -m lit_lora.cli generate`).
        """
        super().__init__()
        self.save_hyperparameters()
        self.hparams["lora"] = LoraSettings.coerce(lora).as_dict()  # plain values: torch.load(weights_only=True)
        # Chosen at predict time: kept out of checkpoints and of what a `--ckpt_path` run merges back.
        self.hparams.pop("generation", None)
        self.generation = GenerationSettings.coerce(generation)
        if model_config is not None and not tokenizer_name_or_path:
            raise LitLoraError("model.model_config builds a model without downloading it, so model.tokenizer_"
                               "name_or_path must name a local tokenizer directory too (nothing falls back to the hub)")
        check_optimizer_settings(self.hparams)
        check_quantization(quantization, quantization_options)
        if compile:
            check_compile_options(compile_options)
        self.model, lora_settings, self.memory_marks = build_peft_model(self.hparams)
        # The resolved targets (or an adapter_path's), also in what Lightning logs first (MLflow refuses changes).
        self.hparams["lora"] = lora_settings.as_dict()
        self._hparams_initial = copy.deepcopy(self._hparams)
        n_ctx = context_length(self.model)
        if n_ctx is not None and block_size > n_ctx:
            raise LitLoraError(f"data.block_size={block_size} is larger than the model's context of {n_ctx} tokens")
        self.val_nll = SumMetric()
        self.val_tokens = SumMetric()
        self.finite_loss = FiniteLossGuard()
        self.finite_loss.rate = lambda: current_lr(self._trainer)
        self._step_nll: Optional[torch.Tensor] = None  # the step's NLL and target count so far
        self._step_n: Optional[torch.Tensor] = None
        self._total_steps: Optional[int] = None
        self._started_total: Optional[int] = None  # the schedule length of the run a checkpoint resumes
        self._rng_to_restore: Optional[dict[str, Any]] = None
        # Checkpoints hold only the LoRA weights (the base is rebuilt): loading must not demand the base's keys.
        self.strict_loading = False
        # Taken now, before a strategy wraps or shards the weights (FSDP leaves each rank a slice of them).
        self._fingerprint = frozen_weights_fingerprint(self.model, linear_weights=quantization is None)
        self._quantization = quantization_key(quantization, quantization_options)  # checkpoints record it

    # Settings are read from self.hparams; these name the ones other objects read (training.contracts).
    @property
    def lora_settings(self) -> LoraSettings:
        return LoraSettings.coerce(self.hparams.lora)

    @property
    def block_size(self) -> int:
        return self.hparams.block_size

    @property
    def gradient_checkpointing(self) -> bool:
        return self.hparams.gradient_checkpointing

    def base_fingerprint(self) -> str:
        """A cheap fingerprint of the frozen base weights (`lora.layers.frozen_weights_fingerprint`)."""
        return self._fingerprint

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the trainable (LoRA) tensors, without FSDP's wrapper names (which appear in
        `named_parameters()` but not in the state dicts it gathers)."""
        return {f"model.{unwrapped_name(n)}" for n, p in self.model.named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable (LoRA) tensors, under the same keys as `self.state_dict()`."""
        names = self.trainable_keys()
        return {k: v for k, v in self.state_dict().items() if k in names}

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return model_nll(self.model, batch["input_ids"], batch.get("attention_mask"), batch["labels"],
                         position_ids=batch.get("position_ids"))

    def _data(self) -> Optional[TrainingData]:
        data = self.trainer.datamodule
        return data if isinstance(data, TrainingData) else None

    def on_fit_start(self) -> None:
        if not self.trainer.is_global_zero:
            return
        # The first line is the parameter counts; the rest is what `lit_lora.cli summary` prints.
        batch_size = self._data().batch_size if self._data() is not None else None
        for line in summary_lines(self.model, self.lora_settings, batch_size, self.block_size,
                                  str(self.trainer.precision), str(self.device), self.gradient_checkpointing):
            print_note(line)
        if batch_size:
            print_note(global_batch_line(self.trainer, batch_size))

    # -- steps ---------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, n = self._nll(batch)
        accumulate, world = self.trainer.accumulate_grad_batches, self.trainer.world_size
        data = self._data()
        step_tokens = None
        if (accumulate > 1 or world > 1) and data is not None:
            step_tokens = data.step_target_tokens(self.current_epoch, batch_idx, accumulate)
        loss = step_loss(nll, n, step_tokens, accumulate, world)
        self.finite_loss.observe(loss, self.global_step)
        # Logged: this process's token mean over the step's micro-batches so far (all of them at the last one,
        # which is the value Lightning logs).
        if batch_idx % accumulate == 0 or self._step_nll is None:
            self._step_nll, self._step_n = nll.detach(), n
        else:
            self._step_nll, self._step_n = self._step_nll + nll.detach(), self._step_n + n
        # Not prog_bar=True: Lightning would read it back from the device after every step. The bar shows
        # the value logged at each logging step (monitoring.progress.RunProgressBar).
        self.log("train_loss", self._step_nll / self._step_n.clamp(min=1), batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.finite_loss.check_everywhere(self.trainer.strategy, self.global_step)

    def on_train_end(self) -> None:
        self.finite_loss.check_everywhere(self.trainer.strategy, self.global_step)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, n = self._nll(batch)
        self.val_nll.update(nll)
        self.val_tokens.update(n)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)  # the same sums; _log_eval("test") names and resets them

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """New tokens for a batch of left-padded prompts (`--data.predict_file`), decoded and written by
        `JsonlPredictionWriter`: the generation code and settings of `python -m lit_lora.cli generate`."""
        return generate_ids(self.model, batch["input_ids"], batch["attention_mask"], self.generation,
                            batch["eos_token_id"], seed_offset=batch_idx)

    def _log_eval(self, split: str) -> None:
        # Token-weighted: exp(total NLL / total tokens), not a mean of per-batch values.
        nll, n = self.val_nll.compute(), self.val_tokens.compute()
        self.val_nll.reset()
        self.val_tokens.reset()
        if n == 0:
            return
        loss = nll / n
        self.log(f"{split}_loss", loss, prog_bar=True, sync_dist=False)
        self.log(f"{split}_ppl", torch.exp(loss), sync_dist=False)

    # -- optimisation ------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        # The schedule's length is read in on_train_start: estimating it here loads the data before resume.
        return optimizer_and_schedule(params, self.hparams, lambda: self._total_steps)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Optional[float] = None, gradient_clip_algorithm: Optional[str] = None
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def setup(self, stage: str) -> None:
        check_device(self.hparams.quantization, self.trainer.strategy.root_device.type,
                     sharded=type(self.trainer.strategy).__name__ == "FSDPStrategy")
        check_optimizer_device(self.hparams.optimizer, self.trainer.strategy.root_device.type)
        if self.hparams.tf32:
            enable_tf32(self.trainer.strategy.root_device)
        target = compile_target(self.model)
        if stage == "fit" and self.hparams.compile and not is_compiled(target):
            compile_in_place(target, self.hparams.compile_options)
        if self.trainer.world_size > 1 and self.finite_loss.defer is None:
            # Checked at the points where all processes check together (FiniteLossGuard.check_everywhere).
            self.finite_loss.defer = True

    def on_train_start(self) -> None:
        total = planned_steps(self.trainer)
        self._total_steps, note = kept_length(int(total) if math.isfinite(total) else None, self._started_total)
        if note and self.trainer.is_global_zero:
            print_note(note)
        # After the sanity check, so its draws do not shift the restored dropout masks.
        restore_rng(self._rng_to_restore)
        self._rng_to_restore = None

    # -- checkpoints: LoRA weights + what resume needs -------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self._trainer.training:
            # Never save weights a non-finite loss has updated.
            self.finite_loss.check_everywhere(self.trainer.strategy, self.global_step)
        keep_lora_only(checkpoint, self.trainable_keys(), self.state_dict)
        template = self._data().chat_template if self._trainer is not None and self._data() is not None else None
        checkpoint["lit_lora"] = checkpoint_section(self.base_fingerprint(), self._trainer, template, self._total_steps,
                                                    self._quantization)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = self.check_checkpoint(checkpoint)
        self._rng_to_restore, self._started_total = meta.get("rng"), meta.get("schedule_steps")

    def check_checkpoint(self, checkpoint: dict[str, Any], dequantized: bool = False) -> dict[str, Any]:
        """The checkpoint's `lit_lora` section once it fits this model (`checkpoint_meta.check_checkpoint`).
        `dequantized`: this model is the full-precision base of a run trained quantized (`merge`)."""
        shapes = lambda: {k: tuple(v.shape) for k, v in self.trainable_state_dict().items()}  # noqa: E731
        fingerprint = frozen_weights_fingerprint(self.model, linear_weights=False) if dequantized else self._fingerprint
        return check_checkpoint(checkpoint, shapes, fingerprint, self._quantization, dequantized)
