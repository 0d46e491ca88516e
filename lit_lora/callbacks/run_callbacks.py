"""The callbacks every `fit` of the CLI gets, in the order they must run, for a Trainer of your own too:

    trainer = Trainer(callbacks=run_callbacks(), ...)
    trainer.fit(LitLora(...), LitLoraData(...))

Each hook of theirs runs after the data module's own (Lightning calls the data module first): the batch size
is chosen (`setup`), the data's decisions reach the trainer and the model (`setup`, `on_train_start`), the
summary prints (`on_fit_start`), and the loss is watched from the first step.
"""

from __future__ import annotations

from typing import Any, Optional

from lit_lora.callbacks.auto_batch import AutoBatchSize
from lit_lora.callbacks.data_plan import DataPlan
from lit_lora.callbacks.finite_loss import FiniteLossStop
from lit_lora.callbacks.quantized_layout import QuantizedTrainingLayout
from lit_lora.callbacks.run_summary import RunSummary
from lit_lora.callbacks.start_loss import StartValLoss


def run_callbacks(saved_layout: Optional[dict[str, int]] = None) -> list[Any]:
    """`saved_layout`: the data state of the checkpoint a run resumes from (`AutoBatchSize`)."""
    return [AutoBatchSize(saved_layout), DataPlan(), RunSummary(), FiniteLossStop(), StartValLoss(),
            QuantizedTrainingLayout()]
