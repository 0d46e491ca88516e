"""What objects read from each other, declared. The model and the callbacks check these with `isinstance`
instead of looking up undeclared attribute names; a data module or model of your own that provides them
works with ours."""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class TrainingData(Protocol):
    """What `LitLora`, `RunCheckpoint` and the callbacks need from the data module (`LitLoraData` is one)."""

    batch_size: int  # samples per batch on each device
    tokenizer: Any  # loaded by setup(); None before
    val_ds: Any  # None when there is no validation data
    chat_template: Optional[str]  # the Jinja text conversations were rendered with; None for text

    def step_target_tokens(self, epoch: int, batch_idx: int, accumulate: int) -> Optional[int]:
        """Target tokens of the whole optimizer step batch `batch_idx` belongs to (None: the micro-batch mean
        already weighs every token alike)."""
        ...


@runtime_checkable
class TrainedModule(Protocol):
    """What the monitoring callbacks read from the LightningModule (`LitLora` is one)."""

    model: Any  # the PEFT-wrapped model
    block_size: int
    gradient_checkpointing: bool
    memory_marks: dict[str, float]  # host RSS in MB at named points of the model build
