"""`LitLora`: the LightningModule that fine-tunes a PEFT-LoRA-adapted causal LM.

    python -m lit_lora.cli fit --config conf/gpt2.yaml --data.train_files my.txt
"""

from __future__ import annotations

import math
import os
import random
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import SumMetric

from lit_lora.corpus import IGNORE_INDEX
from lit_lora.errors import LitLoraError
from lit_lora.faults import FiniteLossGuard
from lit_lora.generation import GenerationSettings
from lit_lora.lora import LoraSettings, apply_lora

CHECKPOINT_FORMAT = 1
SEED_ENV = "PL_GLOBAL_SEED"  # where Lightning's seed_everything records the seed
# Module-name prefixes FSDP and its activation-checkpoint wrapper insert (torch.distributed.fsdp).
_FSDP_PREFIX = "_fsdp_wrapped_module."
_CKPT_WRAPPER_PREFIX = "_checkpoint_wrapped_module."


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood and the number of predicted tokens.

    logits: (B, T, V); labels: (B, T), -100 where nothing is predicted (prompt, padding).
    """
    # Shift the labels, not the logits: slicing the (B, T, V) logits copies them, and their gradient, on
    # every step. Position t predicts labels[:, t + 1]; the last position predicts nothing (-100).
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    nll = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll, (targets != IGNORE_INDEX).sum()


class LitLora(pl.LightningModule):
    def __init__(
        self,
        model_name_or_path: str = "gpt2",
        model_config: Optional[dict[str, Any]] = None,
        tokenizer_name_or_path: Optional[str] = None,
        lora: LoraSettings = LoraSettings(),  # noqa: B008  (dataclass default: jsonargparse expands its fields)
        adapter_path: Optional[str] = None,
        gradient_checkpointing: bool = True,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        block_size: int = 512,
        base_dtype: Optional[str] = None,
        attn_implementation: Optional[str] = "sdpa",
        tf32: bool = True,
        compile: bool = False,
        compile_options: Optional[dict[str, Any]] = None,
        trust_remote_code: bool = False,
        generation: GenerationSettings = GenerationSettings(),  # noqa: B008  (expanded like lora)
    ) -> None:
        """
        Args:
            model_name_or_path: Hub id or local directory of the base causal LM (`from_pretrained`).
            model_config: GPT2Config fields; when given, a randomly initialised GPT-2 of that shape is built
                instead of loading weights (no download). `{}` is GPT-2 small's shape.
            tokenizer_name_or_path: Tokenizer hub id or directory; default: model_name_or_path. Required with
                model_config, so nothing is fetched from the hub behind your back.
            lora: LoRA settings (PEFT's LoraConfig names).
            adapter_path: A PEFT adapter directory to start training from (its LoRA settings replace `lora`).
            gradient_checkpointing: Recompute activations in the backward pass (non-reentrant) to save memory.
            learning_rate: Peak AdamW learning rate.
            weight_decay: AdamW weight decay on the trainable (LoRA) parameters.
            betas: AdamW betas.
            warmup_steps: Linear warm-up steps before cosine decay.
            min_lr_ratio: Cosine decay floor, as a fraction of the peak learning rate.
            block_size: Sequence length the data is packed to; set from --data.block_size by the CLI.
            base_dtype: Hold the frozen base weights in this dtype ("bfloat16", "float16"); LoRA weights and
                optimizer state stay float32. Default: float32.
            attn_implementation: Attention kernel passed to transformers ("sdpa", "eager", ...).
            tf32: On CUDA GPUs with TensorFloat-32 (Ampere and newer), let float32 matmuls use it
                (`torch.set_float32_matmul_precision("high")`). No effect on CPUs.
            compile: Compile the model's forward with `torch.compile` for `fit` (in place: checkpoint keys
                keep their names). The first steps are slower while it compiles; pays off on long GPU runs.
            compile_options: Keyword arguments for `torch.compile`, e.g. `{"mode": "max-autotune"}`.
            trust_remote_code: Allow model repositories to run their own code. Off unless you turn it on.
            generation: How `predict` completes prompts (the settings of `python -m lit_lora.cli generate`).
        """
        super().__init__()
        lora = LoraSettings.coerce(lora)
        self.save_hyperparameters()
        # Hyperparameters must be plain values so checkpoints load with torch.load(weights_only=True).
        self.hparams["lora"] = lora.as_dict()
        # Chosen at predict time, not learned: kept out of checkpoints and of the hyperparameters a
        # `--ckpt_path` run merges back over the flags.
        self.hparams.pop("generation", None)
        self.generation = GenerationSettings.coerce(generation)
        if model_config is not None and not tokenizer_name_or_path:
            raise LitLoraError(
                "model.model_config builds a model without downloading it, so model.tokenizer_name_or_path must "
                "name a local tokenizer directory too (nothing falls back to the hub)"
            )
        if warmup_steps < 0:
            raise LitLoraError(f"model.warmup_steps must be >= 0, got {warmup_steps}")
        if learning_rate <= 0:
            raise LitLoraError(f"model.learning_rate must be > 0, got {learning_rate}")
        if compile:
            from lit_lora.speedups import check_compile_options

            check_compile_options(compile_options)
        self.lora_settings = lora
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.gradient_checkpointing = gradient_checkpointing
        self.model = self._build_model()
        n_ctx = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", None
        )
        if n_ctx is not None and block_size > n_ctx:
            raise LitLoraError(
                f"data.block_size={block_size} is larger than the model's context of {n_ctx} tokens"
            )
        self.block_size = block_size
        self.val_nll = SumMetric()
        self.val_tokens = SumMetric()
        self.finite_loss = FiniteLossGuard()
        self._step_nll: Optional[torch.Tensor] = None
        self._step_n: Optional[torch.Tensor] = None
        self._total_steps: Optional[int] = None
        self._rng_to_restore: Optional[dict[str, Any]] = None
        # Checkpoints hold only the trainable LoRA weights; the frozen base is rebuilt from
        # model_name_or_path, so loading must not demand its keys.
        self.strict_loading = False
        # Taken now, before a strategy wraps or shards the weights (FSDP leaves each rank a slice of them).
        self._fingerprint: Optional[str] = frozen_weights_fingerprint(self.model)

    # -- model ---------------------------------------------------------------------------------------------

    def _build_model(self) -> Any:
        from lit_lora.hf_loading import load_base_model
        from lit_lora.monitoring import host_memory_mb

        hp = self.hparams
        base = load_base_model(
            hp.model_name_or_path, hp.model_config, hp.base_dtype, hp.attn_implementation, hp.trust_remote_code
        )
        # Host RSS (MB) at the points users compare; MemoryMonitor logs them as memory/after_*_mb.
        self.memory_marks = {"after_model_load": host_memory_mb()[0]}
        if hp.adapter_path:
            from lit_lora.adapter_io import load_adapter_for_training

            model = load_adapter_for_training(base, hp.adapter_path)
            self.lora_settings = LoraSettings.from_peft_config(model.peft_config["default"])
            self.hparams["lora"] = self.lora_settings.as_dict()
        else:
            model = apply_lora(base, self.lora_settings)
        # LoRA weights and optimizer state stay float32 even when the frozen base is bf16/fp16.
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        if self.gradient_checkpointing:
            enable_checkpointing(model)
        self.memory_marks["after_lora"] = host_memory_mb()[0]
        # from_pretrained returns eval mode, and Lightning keeps each module's mode: without this the
        # base model's dropout would silently stay off during training.
        return model.train()

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the trainable (LoRA) tensors. FSDP's wrapper names, which appear in
        `named_parameters()` but not in the state dicts it gathers, are left out."""
        names = (n.replace(_FSDP_PREFIX, "").replace(_CKPT_WRAPPER_PREFIX, "") for n, p in
                 self.model.named_parameters() if p.requires_grad)
        return {f"model.{n}" for n in names}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable (LoRA) tensors, under the same keys as `self.state_dict()`."""
        names = self.trainable_keys()
        return {k: v for k, v in self.state_dict().items() if k in names}

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch.get("attention_mask"))
        return token_nll(logits, batch["labels"])

    def on_fit_start(self) -> None:
        from lit_lora.summary import summary_lines

        if self.trainer.is_global_zero:
            # The first line is the parameter counts; the rest is what `lit_lora.cli summary` prints.
            batch_size = getattr(self.trainer.datamodule, "batch_size", None)
            for line in summary_lines(self, batch_size, self.block_size, str(self.trainer.precision), str(self.device)):
                print(f"lit_lora: {line}", flush=True)
            if batch_size:
                print(f"lit_lora: {global_batch_line(self.trainer, batch_size)}", flush=True)

    # -- steps ---------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, n = self._nll(batch)
        accumulate, world = self.trainer.accumulate_grad_batches, self.trainer.world_size
        step_tokens = None
        if accumulate > 1 or world > 1:
            window = getattr(self.trainer.datamodule, "step_target_tokens", None)
            step_tokens = window(self.current_epoch, batch_idx, accumulate) if window is not None else None
        if step_tokens is None:
            # Mean over the real target tokens of this micro-batch (padding and prompts excluded).
            loss = nll / n.clamp(min=1)
        else:
            # Mean over the target tokens of the whole optimizer step (every micro-batch of every process),
            # not a mean of micro-batch means: Lightning divides each micro-batch's loss by `accumulate` and
            # DDP averages the gradients over processes, so scale back by both.
            loss = nll * (accumulate * world / max(step_tokens, 1))
        self.finite_loss.observe(loss, self.global_step)
        # Logged: this process's token mean over the micro-batches of the step so far (the whole step at
        # its last micro-batch, which is what Lightning logs).
        if batch_idx % accumulate == 0 or self._step_nll is None:
            self._step_nll, self._step_n = nll.detach(), n
        else:
            self._step_nll, self._step_n = self._step_nll + nll.detach(), self._step_n + n
        # Not prog_bar=True: Lightning would read it back from the device after every step. The bar shows
        # the value logged at each logging step (monitoring.RunProgressBar).
        self.log("train_loss", self._step_nll / self._step_n.clamp(min=1), batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self._check_finite_loss()

    def on_train_end(self) -> None:
        self._check_finite_loss()

    def _check_finite_loss(self) -> None:
        """Every process stops together: one whose loss was non-finite tells the others (one collective),
        instead of raising alone while they wait for it in the next gradient all-reduce."""
        try:
            self.finite_loss.check(self.global_step)
            error = None
        except LitLoraError as err:
            error = err
        if self.trainer.strategy.reduce_boolean_decision(error is not None, all=False) and error is None:
            error = LitLoraError(
                f"non-finite training loss in another process, noticed after step {self.global_step}; stopped "
                "before saving a checkpoint. The last checkpoint written before it is intact"
            )
        if error is not None:
            raise error

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, n = self._nll(batch)
        self.val_nll.update(nll)
        self.val_tokens.update(n)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """New tokens for a batch of left-padded prompts (`--data.predict_file`), decoded and written by
        `JsonlPredictionWriter`: the generation code and settings of `python -m lit_lora.cli generate`."""
        from lit_lora.generation import generate_ids

        return generate_ids(
            self.model, batch["input_ids"], batch["attention_mask"], self.generation, batch["eos_token_id"],
            seed_offset=batch_idx,
        )

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
        # PyTorch's fused AdamW (CUDA, and CPU since torch 2.4) updates all LoRA tensors in one kernel
        # instead of ~10 Python-level ops per tensor: GPT-2 small's 72 LoRA tensors on this CPU,
        # 10.3 ms -> 1.6 ms per step.
        fused = bool(params) and all(p.device.type in ("cuda", "cpu") for p in params)
        optimizer = torch.optim.AdamW(
            params, lr=self.learning_rate, weight_decay=self.weight_decay, betas=self.betas, fused=fused or None
        )
        # The schedule's length is read lazily (see on_train_start): calling
        # trainer.estimated_stepping_batches here drops a restored dataloader position in Lightning 2.6.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Optional[float] = None, gradient_clip_algorithm: Optional[str] = None
    ) -> None:
        # Lightning's FSDP refuses norm clipping (torch.nn.utils.clip_grad_norm_ would see only this rank's
        # shards); the root FSDP module's clip_grad_norm_ reduces the norm across ranks.
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and _is_fsdp(self.trainer.model):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        total = self._total_steps
        if not total or total <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (total - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def setup(self, stage: str) -> None:
        from lit_lora.speedups import compile_in_place, enable_tf32, is_compiled

        if self.hparams.tf32:
            enable_tf32(self.trainer.strategy.root_device)
        if stage == "fit" and self.hparams.compile and not is_compiled(self.model):
            compile_in_place(self.model, self.hparams.compile_options)
        if self.trainer.world_size > 1 and self.finite_loss.defer is None:
            # Checked at the points where all processes check together (see _check_finite_loss).
            self.finite_loss.defer = True

    def on_train_start(self) -> None:
        total = self.trainer.estimated_stepping_batches
        self._total_steps = int(total) if math.isfinite(total) else None
        # After the sanity check, so its draws do not shift the restored dropout masks.
        restore_rng(self._rng_to_restore)
        self._rng_to_restore = None

    # -- checkpoints: LoRA weights + what resume needs -------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self._trainer.training:
            self._check_finite_loss()  # never save weights a non-finite loss has updated
        if "state_dict" in checkpoint:
            # Filter the strategy's state dict (under FSDP, the full one gathered on rank 0) rather than
            # calling self.state_dict() again.
            names = self.trainable_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        else:
            checkpoint["state_dict"] = self.trainable_state_dict()
        checkpoint["lit_lora"] = {
            "format": CHECKPOINT_FORMAT,
            "rng": capture_rng(),
            "base_fingerprint": self.base_fingerprint(),
            "log_version": _log_version(self.trainer),
            # A randomly initialised base (model_config) is rebuilt from this seed by export/merge/generate.
            "seed": int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else None,
            "val_loss": _float_metric(self.trainer, "val_loss"),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("lit_lora")
        if not isinstance(meta, dict):
            raise LitLoraError("the checkpoint was not written by lit_lora (no 'lit_lora' section)")
        expected = self.trainable_keys()
        got = set(checkpoint.get("state_dict", {}))
        # FSDP loads the weights itself and pops them before this hook: nothing is left to compare.
        if "state_dict" in checkpoint and got != expected:
            missing, extra = sorted(expected - got), sorted(got - expected)
            raise LitLoraError(
                f"the checkpoint's LoRA weights do not match this model: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}); "
                "were the LoRA settings or base model changed?"
            )
        fingerprint = meta.get("base_fingerprint")
        if fingerprint and fingerprint != self.base_fingerprint():
            raise LitLoraError(
                f"the base model's weights differ from those the checkpoint was trained on "
                f"(fingerprint {self.base_fingerprint()} != {fingerprint}); check model.model_name_or_path"
            )
        self._rng_to_restore = meta.get("rng")

    def base_fingerprint(self) -> str:
        """A cheap fingerprint of the frozen base weights: first values and sums of a few tensors."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = frozen_weights_fingerprint(self.model)
        return self._fingerprint


def _is_fsdp(module: Any) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def global_batch_line(trainer: Any, batch_size: int) -> str:
    """`global batch = 2 devices x 4 x 1 accumulation = 8 samples`: what one optimizer step sees. Keep it
    constant (lower data.batch_size or accumulation) when adding devices, or retune the learning rate."""
    world, nodes, accumulate = trainer.world_size, trainer.num_nodes, trainer.accumulate_grad_batches
    devices = f"{world} device{'s' if world != 1 else ''}" + (f" ({nodes} nodes)" if nodes > 1 else "")
    return (f"global batch = {devices} x {batch_size} x {accumulate} accumulation = "
            f"{world * batch_size * accumulate} samples")


def frozen_weights_fingerprint(model: Any) -> str:
    """`LitLora.base_fingerprint` of a PEFT model whose LoRA weights are trainable (also used by `generate`,
    which loads exported adapters without a LitLora)."""
    import hashlib

    h = hashlib.sha256()
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    for n, p in frozen[:4] + frozen[-4:]:
        flat = p.detach().flatten()
        h.update(n.replace(".base_layer", "").encode())
        h.update(repr([round(float(x), 6) for x in flat[:16]]).encode())
        h.update(repr(round(float(flat.double().sum()), 3)).encode())
    return h.hexdigest()[:16]


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing that also trains adapters over a frozen base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # With reentrant checkpointing a frozen embedding output would cut the graph; harmless otherwise.
    base.enable_input_require_grads()


def capture_rng() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (no numpy state: it breaks weights_only loading)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[dict[str, Any]]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _float_metric(trainer: Any, name: str) -> Optional[float]:
    value = trainer.callback_metrics.get(name) if trainer is not None else None
    return float(value) if value is not None else None


def _log_version(trainer: Any) -> Any:
    logger = trainer.logger if trainer is not None else None
    return getattr(logger, "version", None) if logger is not None else None
