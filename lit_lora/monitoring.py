"""Callbacks for watching a run in TensorBoard and the terminal: memory, throughput, samples, HPARAMS.

    tensorboard --logdir lightning_logs

The CLI adds each as a forced callback with its own option group (`--memory.*`, `--throughput.*`,
`--samples.*`, `--hparams_metric.*`). Tag names are stable; README.md ("Watching a run") lists them.
Nothing here synchronises the GPU on every step: counts stay on the device and are read once per
`log_every_n_steps`.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from datetime import timedelta
from typing import Any, Literal, Optional

import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar

MB = 2**20


# -- memory ----------------------------------------------------------------------------------------------


def host_memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MB. The peak is the OS's high-water mark since
    the process started: it cannot be reset, so unlike the CUDA peak it never goes down between epochs."""
    import psutil

    info = psutil.Process().memory_info()
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
    except ImportError:  # Windows
        peak_bytes = getattr(info, "peak_wset", info.rss)
    return info.rss / MB, max(peak_bytes, info.rss) / MB


def memory_metrics(device: torch.device) -> dict[str, float]:
    """The `memory/*` scalars for `device`: host RSS always, and the CUDA allocator's view on a GPU."""
    rss, peak_rss = host_memory_mb()
    out = {"memory/rss_mb": rss, "memory/peak_rss_mb": peak_rss}
    if device.type == "cuda":
        # Allocator counters and cudaMemGetInfo: host-side queries that do not wait for queued kernels.
        free, total = torch.cuda.mem_get_info(device)
        out.update(
            {
                "memory/allocated_mb": torch.cuda.memory_allocated(device) / MB,
                "memory/reserved_mb": torch.cuda.memory_reserved(device) / MB,
                "memory/peak_allocated_mb": torch.cuda.max_memory_allocated(device) / MB,
                "memory/free_mb": free / MB,
                "memory/total_mb": total / MB,
            }
        )
    return out


def device_memory_mb(device: torch.device) -> float:
    """What the device holding the model uses now: CUDA allocated memory, or this process's RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / MB
    return host_memory_mb()[0]


def _log(trainer: Any, metrics: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def _batch_index(trainer: Any) -> int:
    """The x of a batch's metrics after its optimizer step: the step Lightning logs train_loss and lr-AdamW at."""
    return max(0, trainer.global_step - 1)


def _should_log(trainer: Any, every: Optional[int], last: int) -> bool:
    every = every or trainer.log_every_n_steps or 1
    step = trainer.global_step
    return step != last and step > 0 and (step % every == 0 or trainer.should_stop)


class MemoryMonitor(Callback):
    """Logs memory to the logger: host resident and peak resident memory everywhere; on CUDA also allocated,
    reserved, peak allocated (reset every epoch) and free/total device memory.

    Also logged once: host RSS after the base model loaded and after LoRA was applied (the model is built on
    the host), device memory after the first training forward, and the `summary` estimate of peak memory;
    on CUDA the measured peak is printed next to the estimate after the first logged steps.
    """

    def __init__(self, log_every_n_steps: Optional[int] = None) -> None:
        """
        Args:
            log_every_n_steps: Log every this many optimizer steps; default: the trainer's log_every_n_steps.
        """
        self.log_every_n_steps = log_every_n_steps
        self._last = -1
        self._forward_seen = False
        self._compared = False
        self.estimate_mb: Optional[float] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Here, not in on_fit_start: a resumed run knows its global step only now.
        self._forward_seen = self._compared = False
        step = trainer.global_step
        metrics = {f"memory/{name}_mb": value for name, value in getattr(pl_module, "memory_marks", {}).items()}
        metrics["memory/at_train_start_mb"] = device_memory_mb(pl_module.device)
        estimate = _estimate(trainer, pl_module)
        if estimate is not None:
            self.estimate_mb = estimate.total / MB
            metrics["memory/estimated_peak_mb"] = self.estimate_mb
            metrics["memory/estimated_static_mb"] = estimate.static / MB
        _log(trainer, metrics, step)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        if not self._forward_seen:  # activations of the first step are all alive now
            self._forward_seen = True
            _log(trainer, {"memory/after_first_forward_mb": device_memory_mb(pl_module.device)}, trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not _should_log(trainer, self.log_every_n_steps, self._last):
            return
        self._last = trainer.global_step
        metrics = memory_metrics(pl_module.device)
        _log(trainer, metrics, _batch_index(trainer))
        if not self._compared and "memory/peak_allocated_mb" in metrics and self.estimate_mb and trainer.is_global_zero:
            self._compared = True
            print(
                f"lit_lora: peak GPU memory {metrics['memory/peak_allocated_mb']:,.0f} MB allocated "
                f"(estimated {self.estimate_mb:,.0f} MB; reserved {metrics['memory/reserved_mb']:,.0f} MB)",
                flush=True,
            )


def _estimate(trainer: Any, pl_module: Any) -> Any:
    from lit_lora.memory_estimate import estimate_training_memory

    batch_size = getattr(trainer.datamodule, "batch_size", None)
    block_size = getattr(pl_module, "block_size", None)
    if not batch_size or not block_size or not hasattr(pl_module, "model"):
        return None
    return estimate_training_memory(
        pl_module.model,
        batch_size=batch_size,
        block_size=block_size,
        precision=str(trainer.precision),
        gradient_checkpointing=bool(getattr(pl_module, "gradient_checkpointing", False)),
        device_type=pl_module.device.type,
    )


# -- throughput ------------------------------------------------------------------------------------------


class TokenThroughput(Callback):
    """Logs tokens/s (real tokens: attention_mask ones, or every token of packed blocks), samples/s,
    optimizer steps/s and, on CUDA, model FLOP utilisation against the device's peak for the precision.

    Values are per process, averaged over each logging interval; validation and checkpointing time is
    left out, data loading is in. The first interval includes warm-up.
    """

    def __init__(self, log_every_n_steps: Optional[int] = None, prog_bar: bool = True) -> None:
        """
        Args:
            log_every_n_steps: Log every this many optimizer steps; default: the trainer's log_every_n_steps.
            prog_bar: Show tokens/s in the progress bar.
        """
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
        from lit_lora.flops import peak_flops, training_flops_per_token

        self._reset()
        self._t0 = None
        self._last = trainer.global_step
        model = getattr(pl_module, "model", None)
        if model is not None:
            # FLOPs per token are linear in the sequence length (attention); two points give the line, so
            # padded batches of any width cost no extra work per step.
            f0 = training_flops_per_token(model, 0).model
            f1 = training_flops_per_token(model, 1).model
            self._flops_coeffs = (f0, f1 - f0)
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
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if ids is None:
            return
        b, t = ids.shape
        mask = batch.get("attention_mask")
        if mask is None:  # packed blocks: every token is real
            self._tokens += b * t
        else:  # summed on the device; read once per interval
            count = mask.sum()
            self._tokens_on_device = count if self._tokens_on_device is None else self._tokens_on_device + count
        self._samples += b
        c0, c1 = self._flops_coeffs
        self._flops += b * t * (c0 + c1 * t)
        if _should_log(trainer, self.log_every_n_steps, self._last):
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
        _log(trainer, metrics, _batch_index(trainer))


class _RunEta:
    """Progress-bar mixin: `train_loss` and `tok/s` as of the last logging step, the time left for the whole
    run (`eta`, from the measured step rate; validation time not included) and no version number.

    The loss is read from the device once per logging step, not at every refresh: Lightning reads
    `prog_bar=True` values after every step, which on a GPU makes the host wait for each step to finish.
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)  # type: ignore[misc]
        # The training data is set up by now, so this does not reload the dataloader.
        self._total_steps = trainer.estimated_stepping_batches
        self._loss_read_at: Optional[int] = None
        self._loss: Optional[float] = None

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        items.pop("v_num", None)
        step = trainer.global_step
        logging_step = step % trainer.log_every_n_steps == 0 or not trainer.training
        if logging_step and getattr(self, "_loss_read_at", None) != step:
            loss = trainer.callback_metrics.get("train_loss")
            self._loss_read_at, self._loss = step, (float(loss) if loss is not None else None)
        if getattr(self, "_loss", None) is not None:
            items["train_loss"] = round(self._loss, 4)
        throughput = next((c for c in trainer.callbacks if isinstance(c, TokenThroughput)), None)
        if throughput is not None and throughput.prog_bar and throughput.tokens_per_sec:
            items["tok/s"] = round(throughput.tokens_per_sec)
        rate = throughput.steps_per_sec if throughput is not None else None
        total = getattr(self, "_total_steps", None)
        if rate and total is not None and math.isfinite(total):
            items["eta"] = str(timedelta(seconds=int(max(0.0, total - trainer.global_step) / rate)))
        return items


class RunProgressBar(_RunEta, TQDMProgressBar):
    """Lightning's tqdm bar with the run's `eta`."""


class RunRichProgressBar(_RunEta, RichProgressBar):
    """Lightning's rich bar (its default when `rich` is installed) with the run's `eta`."""


def with_run_eta(bar: Any) -> Any:
    """The same bar with the run's ETA added, or None for a bar class the user chose themselves."""
    for plain, ours in ((TQDMProgressBar, RunProgressBar), (RichProgressBar, RunRichProgressBar)):
        if type(bar) is plain:
            # Not yet attached to a run: copying its state keeps every setting Lightning or the user gave it.
            new = ours.__new__(ours)
            new.__dict__.update(bar.__dict__)
            return new
    return None


# -- samples ---------------------------------------------------------------------------------------------


class SampleGenerator(Callback):
    """At the end of each validation, completes a few prompts and logs the text to TensorBoard (tag
    `samples`), so you can read the model change.

    Sampling draws from a private generator seeded with `seed` at each validation, never from the global
    RNG (exact resume depends on it), so two validations differ only because the weights did. The model's
    train/eval mode is restored afterwards.
    """

    def __init__(
        self,
        prompts: list[str] = ["The", "Once upon a time"],  # noqa: B006  (copied below, never mutated)
        max_new_tokens: int = 32,
        temperature: float = 0.8,
        top_k: Optional[int] = 50,
        seed: int = 0,
    ) -> None:
        """
        Args:
            prompts: Prompts to complete at each validation; [] turns samples off.
            max_new_tokens: Tokens generated per prompt (fewer when the model emits EOS).
            temperature: 0 is greedy decoding; above 0 samples, higher is more random.
            top_k: When sampling, draw only from the k most likely tokens; None: no limit.
            seed: Seed of the private sampling generator, reset at each validation.
        """
        from lit_lora.errors import LitLoraError

        if max_new_tokens < 1:
            raise LitLoraError(f"samples.max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise LitLoraError(f"samples.temperature must be >= 0 (0 is greedy), got {temperature}")
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.last_samples: list[tuple[str, str]] = []  # (prompt, continuation) of the latest validation
        self._tokenizer: Any = None

    def _get_tokenizer(self, trainer: Any, pl_module: Any) -> Any:
        if self._tokenizer is None:
            self._tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if self._tokenizer is None:
            from lit_lora.hf_loading import load_tokenizer

            hp = pl_module.hparams
            self._tokenizer = load_tokenizer(hp.get("tokenizer_name_or_path") or hp["model_name_or_path"])
        return self._tokenizer

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.prompts or trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        tokenizer = self._get_tokenizer(trainer, pl_module)
        self.last_samples = [(p, self.complete(pl_module.model, tokenizer, p)) for p in self.prompts]
        text = format_samples(self.last_samples)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("samples", text, global_step=trainer.global_step)

    def complete(self, model: Any, tokenizer: Any, prompt: str) -> str:
        """The continuation of `prompt` (the prompt itself not included)."""
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            ids = sample_tokens(
                model, tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id],
                self.max_new_tokens, self.temperature, self.top_k, self.seed, tokenizer.eos_token_id,
            )
        finally:
            for m, training in modes:
                m.training = training
        return tokenizer.decode(ids, skip_special_tokens=True)


@torch.no_grad()
def sample_tokens(
    model: Any, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_k: Optional[int], seed: int,
    eos_token_id: Optional[int],
) -> list[int]:
    """New token ids after `prompt_ids`, with a KV cache and a private generator (the global RNG is not used)."""
    device = next(model.parameters()).device
    config = model.config
    n_ctx = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if n_ctx is not None:
        max_new_tokens = min(max_new_tokens, n_ctx - 1)
        prompt_ids = prompt_ids[-(n_ctx - max_new_tokens):]  # keep the prompt's end
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt_ids], device=device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers 5.x renamed past_key_values to cache (the old name warns); older versions know only that.
    cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    past: Any = None
    out: list[int] = []
    for _ in range(max_new_tokens):
        result = model(input_ids=ids, use_cache=True, **{cache_arg: past})
        past = getattr(result, cache_arg)
        logits = result.logits[0, -1].float()
        if temperature == 0:
            token = logits.argmax().view(1)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        value = int(token)
        out.append(value)
        if value == eos_token_id:
            break
        ids = token.view(1, 1)
    return out


def format_samples(samples: list[tuple[str, str]]) -> str:
    """Markdown for TensorBoard's TEXT tab: the prompt in bold, then prompt + continuation as a code block
    (TensorBoard renders markdown; an indented block keeps the text's own newlines and symbols)."""
    parts = []
    for prompt, continuation in samples:
        body = "\n".join("    " + line for line in (prompt + continuation).split("\n"))
        parts.append(f"**{_md_escape(prompt)}**\n\n{body}")
    return "\n\n".join(parts)


def _md_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>" else c for c in text.replace("\n", " "))


# -- hyperparameters -------------------------------------------------------------------------------------


class HparamsMetric(Callback):
    """Fills TensorBoard's HPARAMS tab: the run's hyperparameters (model, data, and the trainer's precision,
    epochs, accumulation) with the best value of `monitor` so far as its metric (`hp/best_val_loss`), in
    place of Lightning's -1 placeholder. The best value is kept in checkpoints, so a resumed run continues it.
    """

    def __init__(self, monitor: str = "val_loss", mode: Literal["min", "max"] = "min") -> None:
        """
        Args:
            monitor: The logged metric whose best value is the HPARAMS metric.
            mode: "min" if lower is better, "max" if higher is.
        """
        self.monitor = monitor
        self.mode = mode
        self.best: Optional[float] = None

    @property
    def tag(self) -> str:
        return f"hp/best_{self.monitor}"

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        params = flat_hparams(trainer, pl_module)
        for logger in trainer.loggers:
            writer = _tensorboard_writer(logger)
            if writer is None:
                continue
            from torch.utils.tensorboard.summary import hparams

            # The session names the metric; its value is the scalar of the same tag, logged at each validation.
            for summary in hparams(params, {self.tag: 0.0}):
                writer.add_summary(summary)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or trainer.state.fn != "fit":
            return
        value = float(value)
        if math.isnan(value):
            return
        better = min if self.mode == "min" else max
        self.best = value if self.best is None else better(self.best, value)
        if trainer.is_global_zero:
            _log(trainer, {self.tag: self.best}, trainer.global_step)


def _tensorboard_writer(logger: Any) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    if not isinstance(logger, TensorBoardLogger):
        return None
    return logger.experiment._get_file_writer()


def flat_hparams(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """Model and data hyperparameters plus the trainer settings that change results, flattened to
    `group/name` keys with values TensorBoard accepts (numbers, strings, booleans)."""
    params: dict[str, Any] = {}
    _flatten("", dict(pl_module.hparams), params)
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "hparams"):
        _flatten("data/", dict(datamodule.hparams), params)
    _flatten(
        "trainer/",
        {
            "precision": str(trainer.precision),
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
        },
        params,
    )
    return params


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        for k, v in value.items():
            if not str(k).startswith("_"):
                _flatten(f"{prefix}{k}/", v, out)
        return
    out[prefix.rstrip("/")] = value if isinstance(value, (int, float, str)) else str(value)
