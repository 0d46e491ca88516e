"""`TokenThroughput`: tokens/s, samples/s, steps/s and, on CUDA, model FLOP utilisation."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.callbacks.intervals import batch_step, log_metrics, should_log
from lit_lora.estimate.dry_run import dry_run_failure
from lit_lora.estimate.flops import peak_flops, training_flops_per_token
from lit_lora.notes import print_note
from lit_lora.settings import check_number
from lit_lora.training.contracts import TrainedModule


# Sequences of a batch that run without gradients (KTO's KL rows): their tokens count, their work is not MFU's.
NO_GRAD_PREFIXES = frozenset({"kl_"})


def sequence_groups(batch: Any) -> list[tuple[str, torch.Tensor, Optional[torch.Tensor]]]:
    """(key prefix, input_ids, attention_mask or None) of each group of sequences a batch holds: SFT's
    `input_ids`, a preference pair's `chosen_` and `rejected_`, KTO's `completion_` and `kl_` rows."""
    if not isinstance(batch, dict):
        return []
    return [(key[: -len("input_ids")], ids, batch.get(f"{key[: -len('input_ids')]}attention_mask"))
            for key, ids in batch.items() if key.endswith("input_ids") and isinstance(ids, torch.Tensor)]


class TokenThroughput(Callback):
    """Logs tokens/s (real tokens: attention_mask ones, or every token of packed blocks), samples/s,
    optimizer steps/s and, on CUDA, model FLOP utilisation against the device's peak for the precision.
    A preference batch counts the tokens of all its sequences (chosen and rejected, or KTO's completion and
    KL rows) and its rows (pairs) as samples; MFU counts the sequences that train, not the passes without
    gradients (the reference's, KTO's KL rows), as it leaves out gradient checkpointing's recomputation.

    Values are per process, averaged over each logging interval; validation and checkpointing time is
    left out, data loading is in. The first interval includes warm-up.
    """

    def __init__(self, log_every_n_steps: Optional[int] = None, prog_bar: bool = True) -> None:
        """
        Args:
            log_every_n_steps: Log every this many optimizer steps; default: the trainer's log_every_n_steps.
            prog_bar: Show tokens/s in the progress bar.
        """
        if log_every_n_steps is not None:
            check_number("throughput.log_every_n_steps", log_every_n_steps, at_least=1, integer=True)
        self.log_every_n_steps = log_every_n_steps
        self.prog_bar = prog_bar
        self.steps_per_sec: Optional[float] = None
        self.tokens_per_sec: Optional[float] = None
        self._last = -1
        self._reset()
        self._t0: Optional[float] = None
        self._flops_coeffs: tuple[int, int] = (0, 0)
        self._peak: Optional[float] = None

    def _reset(self) -> None:
        self._elapsed = 0.0
        self._tokens = 0
        self._tokens_on_device: Optional[torch.Tensor] = None
        self._samples = 0
        self._flops = 0
        self._steps_at_start: Optional[int] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._reset()
        self._t0 = None
        self._last = trainer.global_step
        if isinstance(pl_module, TrainedModule):
            model = pl_module.model
            # FLOPs per token are linear in the sequence length (attention); two points give the line, so
            # padded batches of any width cost no extra work per step.
            try:
                f0 = training_flops_per_token(model, 0).model
                f1 = training_flops_per_token(model, 1).model
                self._flops_coeffs = (f0, f1 - f0)
            except Exception as err:  # custom code the dry run cannot trace: no MFU, training goes on
                if trainer.is_global_zero:
                    print_note(f"no MFU: counting FLOPs failed ({dry_run_failure(err)})")
        self._peak = peak_flops(pl_module.device, trainer.precision)

    def _pause(self) -> None:
        if self._t0 is not None:
            self._elapsed += time.perf_counter() - self._t0
            self._t0 = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if self._steps_at_start is None:
            self._steps_at_start = trainer.global_step

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._pause()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._pause()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        groups = sequence_groups(batch)
        if not groups:
            return
        c0, c1 = self._flops_coeffs
        for prefix, ids, mask in groups:
            b, t = ids.shape
            if prefix == "" and batch.get("num_tokens") is not None:  # packed rows: the collator counted them
                self._tokens += int(batch["num_tokens"])
            elif mask is None:  # blocks of text: every token is real
                self._tokens += b * t
            else:  # summed on the device; read once per interval
                count = mask.sum()
                self._tokens_on_device = count if self._tokens_on_device is None else self._tokens_on_device + count
            if prefix not in NO_GRAD_PREFIXES:
                self._flops += b * t * (c0 + c1 * t)
        self._samples += groups[0][1].shape[0]
        if should_log(trainer, self.log_every_n_steps, self._last):
            self._last = trainer.global_step
            self._emit(trainer, pl_module)

    def _emit(self, trainer: Any, pl_module: Any) -> None:
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per interval, so the clock covers the queued work
        tokens = self._tokens + (int(self._tokens_on_device.item()) if self._tokens_on_device is not None else 0)
        self._pause()
        elapsed = self._elapsed
        steps = trainer.global_step - (self._steps_at_start or 0)
        flops, samples = self._flops, self._samples
        self._reset()
        self._steps_at_start = trainer.global_step
        self._t0 = time.perf_counter()
        if elapsed <= 0:
            return
        self.tokens_per_sec = tokens / elapsed
        self.steps_per_sec = steps / elapsed if steps > 0 else self.steps_per_sec
        metrics = {
            "throughput/tokens_per_sec": self.tokens_per_sec,
            "throughput/samples_per_sec": samples / elapsed,
            "throughput/steps_per_sec": steps / elapsed,
        }
        if self._peak:
            metrics["throughput/tflops_per_sec"] = flops / elapsed / 1e12
            metrics["throughput/mfu"] = flops / elapsed / self._peak
        log_metrics(trainer, metrics, batch_step(trainer))
