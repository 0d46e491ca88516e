"""`LitLora`: the LightningModule that fine-tunes a PEFT-LoRA-adapted causal LM. It owns the network, the
optimizer and the checkpoint; what a step computes from its batch is the objective's (`lit_lora.objectives`),
what watches or decides around the run (summary, non-finite loss, batch size) are callbacks the CLI adds. It
reads nothing but its batch and the trainer's layout, never the data module.

    python -m lit_lora.cli fit --config conf/quickstart.yaml
"""

from __future__ import annotations

import copy
import math
from importlib import import_module
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch

from lit_lora.errors import LitLoraError
from lit_lora.generation.decode import generate_ids
from lit_lora.generation.settings import GenerationSettings
from lit_lora.lora.build import ModelSettings, add_reference, build_peft_model
from lit_lora.lora.parts import check_context, frozen_weights_fingerprint
from lit_lora.lora.settings import LoraSettings
from lit_lora.notes import print_note
from lit_lora.objectives.base import Objective, StepLayout
from lit_lora.objectives.sft import SupervisedNll
from lit_lora.pretrained.quantization import check_device, quantization_key
from lit_lora.training.checkpoint_section import check_checkpoint, checkpoint_section, keep_lora_only
from lit_lora.training.distributed import clip_gradients, unwrapped_name
from lit_lora.training.rng import restore_rng
from lit_lora.training.schedule import OptimizerSettings, check_optimizer_device, kept_length, optimizer_and_schedule
from lit_lora.training.speed import check_compile_options, speed_up


class LitLora(pl.LightningModule):
    def __init__(
        self,
        model_name_or_path: str = "gpt2",
        model_config: Optional[dict[str, Any]] = None,
        tokenizer_name_or_path: Optional[str] = None,
        lora: LoraSettings = LoraSettings(),  # noqa: B008  (dataclass default: jsonargparse expands its fields)
        adapter_path: Optional[str] = None,
        gradient_checkpointing: bool = True,
        base_dropout: Optional[float] = 0.0,
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
        objective: Union[Objective, dict[str, Any], None] = None,
    ) -> None:
        """
        Args:
            model_name_or_path: Hub id or local directory of the base causal LM (`from_pretrained`).
            model_config: Config fields: a randomly initialised model of that shape instead of weights (no
                download); `model_type` names the family ("llama", ...), else GPT-2 (`{}`: GPT-2 small).
            tokenizer_name_or_path: Tokenizer hub id or directory; default: model_name_or_path. Required with
                model_config, so nothing is fetched from the hub behind your back.
            lora: LoRA settings (PEFT's LoraConfig names).
            adapter_path: A PEFT adapter to train further (its LoRA settings replace `lora`; DPO's reference: a frozen copy).
            gradient_checkpointing: Recompute activations in the backward pass (non-reentrant) to save memory.
            base_dropout: Dropout of the frozen base's own layers (GPT-2's config: 0.1). 0: off, LoRA's dropout
                alone regularises, faster (docs/models-and-training.md). None: the config's values.
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
            base_dtype: The frozen base weights' dtype ("bfloat16", ...; default float32); LoRA's stay float32.
            quantization: QLoRA: bitsandbytes quantizes the base's linear layers as they load, "nf4" or "fp4"
                (4-bit) or "int8"; the other layers keep base_dtype (docs/memory-and-qlora.md; needs the qlora extra).
            quantization_options: BitsAndBytesConfig fields: bnb_4bit_use_double_quant, bnb_4bit_compute_dtype
                (default: base_dtype), bnb_4bit_quant_storage, llm_int8_skip_modules, llm_int8_threshold.
            attn_implementation: Attention kernel ("sdpa", "eager", ...); default SDPA, else eager (said).
            tf32: Let float32 matmuls use TensorFloat-32 on CUDA GPUs that have it (Ampere and newer).
            compile: Compile the model's forward with `torch.compile` for `fit` (in place: checkpoint keys
                keep their names). The first steps are slower while it compiles; pays off on long GPU runs.
            compile_options: Keyword arguments for `torch.compile`, e.g. `{"mode": "max-autotune"}`.
            trust_remote_code: Allow model repositories to run their own code. Off unless you turn it on.
            generation: How `predict` completes prompts (the settings of `python -m lit_lora.cli generate`).
            objective: What a step computes from its batch: a class_path to an `lit_lora.objectives.base.Objective`
                subclass; default: next-token NLL on the batch's labels (`lit_lora.objectives.sft.SupervisedNll`).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["objective"])
        self.hparams["lora"] = LoraSettings.coerce(lora).as_dict()  # plain values: torch.load(weights_only=True)
        # Chosen at predict time: kept out of checkpoints and of what a `--ckpt_path` run merges back.
        self.hparams.pop("generation", None)
        self.generation = GenerationSettings.coerce(generation)
        self.objective = _objective(objective)
        # Recorded as a class path and plain arguments; None: the default, so older checkpoints match.
        self.hparams["objective"] = _objective_record(self.objective)
        self.optimizer_settings = OptimizerSettings.from_hparams(self.hparams)
        if compile:
            check_compile_options(compile_options)
        self.model, lora_settings, self.memory_marks, self.initial_lora = build_peft_model(
            ModelSettings.from_hparams(self.hparams))
        self.reference = add_reference(self.model, adapter_path) if self.objective.needs_reference else None
        # The resolved targets (or an adapter_path's), also in what Lightning logs first (MLflow refuses changes).
        self.hparams["lora"] = lora_settings.as_dict()
        self._hparams_initial = copy.deepcopy(self._hparams)
        check_context(self.model, block_size)
        self.block_size, self.gradient_checkpointing = block_size, gradient_checkpointing  # read by the callbacks
        # Handed over by the CLI's DataPlan callback once the data is set up, never read from the data module:
        # the run's optimizer steps as the data counts them, and the chat template its checkpoints record.
        self.schedule_steps: Optional[int] = None
        self.chat_template: Optional[str] = None
        self._total_steps: Optional[int] = None
        self._started_total: Optional[int] = None  # the schedule length of the run a checkpoint resumes
        self._rng_to_restore: Optional[dict[str, Any]] = None
        # Checkpoints hold only the LoRA weights (the base is rebuilt): loading must not demand the base's keys.
        self.strict_loading = False
        # Taken now, before a strategy wraps or shards the weights (FSDP leaves each rank a slice of them).
        self._fingerprint = frozen_weights_fingerprint(self.model, linear_weights=quantization is None)
        self._quantization = quantization_key(quantization, quantization_options)  # checkpoints record it

    @property
    def lora_settings(self) -> LoraSettings:  # what the callbacks read (training.contracts.TrainedModule)
        return LoraSettings.coerce(self.hparams.lora)

    def base_fingerprint(self) -> str:
        """A cheap fingerprint of the frozen base weights (`lora.parts.frozen_weights_fingerprint`)."""
        return self._fingerprint

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the trainable (LoRA) tensors, without the wrapper names FSDP adds to parameters."""
        return {f"model.{unwrapped_name(n)}" for n, p in self.model.named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable (LoRA) tensors, under the same keys as `self.state_dict()`."""
        names = self.trainable_keys()
        return {k: v for k, v in self.state_dict().items() if k in names}

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self.objective.check_batch(batch)
        accumulate = self.trainer.accumulate_grad_batches
        layout = StepLayout(accumulate, self.trainer.world_size)
        loss, metrics = self.objective.training_loss(self.model, batch, batch_idx % accumulate == 0, layout)
        # Not prog_bar=True: Lightning would read it back from the device after every step. The bar shows
        # the value logged at each logging step (callbacks.progress.RunProgressBar).
        for name, value in metrics.items():
            self.log(f"train_{name}", value, batch_size=self.objective.batch_size(batch))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.objective.update_eval(self.model, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.objective.update_eval(self.model, batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, split: str) -> None:
        for i, (name, value) in enumerate(self.objective.compute_eval().items()):
            self.log(f"{split}_{name}", value, prog_bar=i == 0, sync_dist=False)  # summed across ranks already

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """New tokens for a batch of left-padded prompts (`--data.predict_file`), decoded and written by
        `JsonlPredictionWriter`: the generation code and settings of `python -m lit_lora.cli generate`."""
        return generate_ids(self.model, batch["input_ids"], batch["attention_mask"], self.generation,
                            batch["eos_token_id"], seed_offset=batch_idx)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        # The schedule's length is read in on_train_start: estimating it here loads the data before resume.
        return optimizer_and_schedule(params, self.optimizer_settings, lambda: self._total_steps)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Optional[float] = None, gradient_clip_algorithm: Optional[str] = None
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def setup(self, stage: str) -> None:
        device, hp = self.trainer.strategy.root_device, self.hparams
        check_device(hp.quantization, device.type, sharded=type(self.trainer.strategy).__name__ == "FSDPStrategy")
        check_optimizer_device(hp.optimizer, device.type)
        speed_up(self.model, device, hp.tf32, stage == "fit" and hp.compile, hp.compile_options)

    def on_train_start(self) -> None:
        # `schedule_steps` is set by the CLI's ScheduleLength callback from the data's own count; without
        # it, Lightning's estimate.
        total = self.schedule_steps if self.schedule_steps is not None else self.trainer.estimated_stepping_batches
        self._total_steps, note = kept_length(int(total) if math.isfinite(total) else None, self._started_total)
        if note and self.trainer.is_global_zero:
            print_note(note)
        # After the sanity check, so its draws do not shift the restored dropout masks.
        restore_rng(self._rng_to_restore)
        self._rng_to_restore = None

    # -- checkpoints: LoRA weights + what resume needs -------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep_lora_only(checkpoint, self.trainable_keys(), self.state_dict)
        # Updated, not replaced: a callback may have recorded the data's chat template there first.
        checkpoint["lit_lora"] = checkpoint_section(self.base_fingerprint(), self._trainer, self.chat_template,
                                                    self._total_steps, self._quantization)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = self.check_checkpoint(checkpoint)
        self._rng_to_restore, self._started_total = meta.get("rng"), meta.get("schedule_steps")

    def check_checkpoint(self, checkpoint: dict[str, Any], dequantized: bool = False) -> dict[str, Any]:
        """The checkpoint's `lit_lora` section once it fits this model (`checkpoint_section.check_checkpoint`).
        `dequantized`: this model is the full-precision base of a run trained quantized (`merge`)."""
        shapes = lambda: {k: tuple(v.shape) for k, v in self.trainable_state_dict().items()}  # noqa: E731
        fingerprint = frozen_weights_fingerprint(self.model, linear_weights=False) if dequantized else self._fingerprint
        return check_checkpoint(checkpoint, shapes, fingerprint, self._quantization, dequantized)


def _objective(value: Union[Objective, dict[str, Any], None]) -> Objective:
    """The objective given, or built from a checkpoint's record (`_objective_record`), or the default."""
    if value is None:
        return SupervisedNll()
    if isinstance(value, Objective):
        return value
    if isinstance(value, dict) and "class_path" in value:
        module, _, name = value["class_path"].rpartition(".")
        cls = getattr(import_module(module), name, None)
        if isinstance(cls, type) and issubclass(cls, Objective):
            return cls(**(value.get("init_args") or {}))
    if isinstance(value, dict):  # the parser keeps a plain dict when init_args do not fit the class
        raise LitLoraError(f"model.objective={value!r}: no class_path, or init_args the class does not take (a "
                           "misspelt name, or a value outside its choices; `fit --model.objective.help CLASS` "
                           "lists them)")
    raise LitLoraError(f"model.objective={value!r} is not an Objective (expected a class_path to a subclass of "
                       "lit_lora.objectives.base.Objective)")


def _objective_record(objective: Objective) -> Optional[dict[str, Any]]:
    if type(objective) is SupervisedNll:
        return None
    cls = type(objective)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": objective.init_args()}
