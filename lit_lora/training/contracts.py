"""What objects read from each other, declared. The model and the callbacks check these with `isinstance`
instead of looking up undeclared attribute names; a data module or model of your own that provides them
works with ours."""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class TrainingData(Protocol):
    """What `RunCheckpoint` and the callbacks need from the data module (`LitLoraData` is one). The
    LightningModule reads none of it: what it needs comes in each batch or from the DataPlan callback."""

    batch_size: int  # samples per batch on each device
    tokenizer: Any  # loaded by setup(); None before
    val_ds: Any  # None when there is no validation data
    chat_template: Optional[str]  # the Jinja text conversations were rendered with; None for text


@runtime_checkable
class TrainedModule(Protocol):
    """What the monitoring callbacks read from the LightningModule (`LitLora` is one)."""

    model: Any  # the PEFT-wrapped model
    lora_settings: Any
    block_size: int
    gradient_checkpointing: bool
    memory_marks: dict[str, float]  # host RSS in MB at named points of the model build
    reference: Optional[str]  # a preference loss's reference policy, said in one line; None without one
    objective: Any  # what a step computes (`lit_lora.objectives.base.Objective`): its `step_shape()`
