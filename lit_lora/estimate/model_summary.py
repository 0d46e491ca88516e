"""Parameter counts, the model summary and the global-batch line printed at the start of `fit` (and by
`python -m lit_lora.cli summary`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lit_lora.estimate.dry_run import dry_run_failure
from lit_lora.estimate.memory import estimate_training_memory
from lit_lora.lora.parts import base_model, is_lora_layer
from lit_lora.lora.settings import LoraSettings
from lit_lora.objectives.base import StepShape
from lit_lora.pretrained.quantization import is_quantized_weight, logical_numel, quantization_line


@dataclass(frozen=True)
class ParamCounts:
    base: int  # parameters of the model before LoRA (tied weights counted once)
    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_parameters(model: Any) -> ParamCounts:
    """Counts of a PEFT-wrapped model; `parameters()` yields a tied tensor once, as GPT-2's lm_head is."""
    total = trainable = adapter = 0
    for name, p in model.named_parameters():
        numel = logical_numel(p)  # a 4-bit weight's packed tensor holds two values a byte
        total += numel
        if p.requires_grad:
            trainable += numel
        if "lora_" in name or "modules_to_save" in name:
            adapter += numel
    return ParamCounts(base=total - adapter, trainable=trainable, total=total)


def format_counts(c: ParamCounts) -> str:
    return (
        f"{c.base:,} base, {c.trainable:,} trainable, {c.total:,} total, "
        f"{c.trainable_pct:.4f}% trainable"
    )


def summary_lines(
    model: Any,
    lora: LoraSettings,
    batch_size: Optional[int],
    block_size: int,
    precision: str,
    device: str,
    gradient_checkpointing: bool,
    reference: Optional[str] = None,
    shape: StepShape = StepShape(),
) -> list[str]:
    """The model summary printed at the start of `fit` and by `python -m lit_lora.cli summary`: counts, model
    class, dtype, device, LoRA settings, a preference run's `reference` line, and the peak-memory estimate
    for this batch, block and precision (`shape`: what the objective runs per batch row)."""
    counts = count_parameters(model)
    base = base_model(model)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()
                     if not p.requires_grad and not is_quantized_weight(p)})
    lora_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.requires_grad})
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    adapted = sum(1 for m in model.modules() if is_lora_layer(m))
    quantized = quantization_line(model)
    lines = [
        format_counts(counts),
        f"model {type(model).__name__}({type(base).__name__}), {counts.frozen:,} frozen parameters; "
        f"weights {'/'.join(dtypes) or '-'} (LoRA {'/'.join(lora_dtypes) or '-'}), "
        f"precision {precision}, device {device}" + (f"; {quantized}" if quantized else ""),
        f"LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on {targets} ({adapted} modules)"
        + (", rsLoRA" if lora.use_rslora else "") + (", DoRA" if lora.use_dora else "")
        + (f", also training {', '.join(lora.modules_to_save)}" if lora.modules_to_save else ""),
        *([reference] if reference else []),
    ]
    if batch_size:
        try:
            lines += estimate_training_memory(
                model, batch_size, block_size, precision, gradient_checkpointing, device_type=device.split(":")[0],
                shape=shape,
            ).lines()
        except Exception as err:  # custom code the dry run cannot trace: training itself is not affected
            lines.append(f"peak training memory: not estimated (the dry run failed: {dry_run_failure(err)})")
    return lines


def global_batch_line(trainer: Any, batch_size: int) -> str:
    """`global batch = 2 devices x 4 x 1 accumulation = 8 samples`: what one optimizer step sees. Keep it
    constant (lower data.batch_size or accumulation) when adding devices, or retune the learning rate."""
    world, nodes, accumulate = trainer.world_size, trainer.num_nodes, trainer.accumulate_grad_batches
    devices = f"{world} device{'s' if world != 1 else ''}" + (f" ({nodes} nodes)" if nodes > 1 else "")
    return (f"global batch = {devices} x {batch_size} x {accumulate} accumulation = "
            f"{world * batch_size * accumulate} samples")
