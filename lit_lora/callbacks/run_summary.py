"""`RunSummary`: the lines `fit` prints before its first step: the model's parameter counts, LoRA targets and
memory estimate (what `python -m lit_lora.cli summary` prints), the global batch, then what the training data
holds. A callback because it reads both the model and the data, which never read each other."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from lit_lora.callbacks.reference_logps import run_step_shape
from lit_lora.estimate.model_summary import global_batch_line, summary_lines
from lit_lora.lora.serving import fit_line
from lit_lora.notes import print_note
from lit_lora.training.contracts import TrainedModule, TrainingData


class RunSummary(Callback):
    """Prints on rank 0 at the start of `fit`, once the data is set up and its batch size is known."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero or not isinstance(pl_module, TrainedModule):
            return
        data = trainer.datamodule if isinstance(trainer.datamodule, TrainingData) else None
        batch_size = data.batch_size if data is not None else None
        for line in summary_lines(pl_module.model, pl_module.lora_settings, batch_size, pl_module.block_size,
                                  str(trainer.precision), str(pl_module.device), pl_module.gradient_checkpointing,
                                  pl_module.reference, run_step_shape(trainer, pl_module)):
            print_note(line)
        lora = pl_module.lora_settings
        serving = fit_line(lora.use_dora, lora.modules_to_save)
        if serving:
            print_note(serving)
        if batch_size:
            print_note(global_batch_line(trainer, batch_size))
        if data is not None and getattr(data, "train_ds", None) is not None and hasattr(data, "data_lines"):
            for line in data.data_lines(batch_size):
                print_note(line)
