"""`QuantizedTrainingLayout`: a quantized base trains and evaluates on the weight layout bitsandbytes trains with,
whatever the CPU (see `lit_lora.pretrained.quantization.hold_training_layout`)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from lit_lora.pretrained.quantization import check_training_layout, hold_training_layout, release_training_layout

# validate and test too: their losses are then the ones training's validation logs, to the last digit.
_STAGES = ("fit", "validate", "test")


class QuantizedTrainingLayout(Callback):
    """Keeps 4-bit layers out of bitsandbytes' CPU inference layout while a run trains or evaluates; `predict`
    keeps the fast layout. Nothing to do for a model without 4-bit layers or a CPU without AVX512-BF16."""

    def __init__(self) -> None:
        self._held: list[Any] = []

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage not in _STAGES:
            return
        if stage == "fit":
            check_training_layout(pl_module)
        self._held = hold_training_layout(pl_module)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        release_training_layout(self._held)
        self._held = []
