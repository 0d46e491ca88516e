"""`python -m lit_lora.cli summary --config conf/gpt2.yaml`: what `fit` would train, and its peak memory.

Takes everything `fit` takes (config files, `--model.*`/`--data.*`/`--trainer.*` overrides, `--ckpt_path`) and
prints the summary `fit` prints at its start: parameter counts, model class, dtype, device, LoRA settings and
the peak-training-memory estimate for the configured batch size, block size, precision and gradient
checkpointing. It builds the model on the meta device from its config (no weights are read or held), reads no
data file (they need not exist) and trains nothing.

    python -m lit_lora.cli summary --config conf/gpt2.yaml --model.model_config '{}' \\
        --model.tokenizer_name_or_path DIR --trainer.accelerator gpu --trainer.precision bf16-mixed
"""

from __future__ import annotations

import sys
import warnings
from typing import Optional

from lit_lora.errors import LitLoraError


def _summary_cli_class() -> type:
    # start-up: Lightning loads after --help
    from lit_lora.cli.trainer_cli import LitLoraCLI
    from lit_lora.training.devices import default_precision

    class SummaryCLI(LitLoraCLI):
        """Parses exactly as `fit` does, then builds the model alone."""

        resumes_training = False

        def before_instantiate_classes(self) -> None:
            # fit's defaulting of the precision, without its check that the data files exist: none is read.
            trainer_cfg = self.config[self.subcommand].trainer
            if trainer_cfg.get("precision") is None:
                trainer_cfg.precision = default_precision(trainer_cfg.get("accelerator"))

        def instantiate_classes(self) -> None:
            from lit_lora.model.build import without_weights  # start-up: see above
            from lit_lora.model.module import LitLora

            cfg = self.config[self.subcommand]
            with without_weights():  # shapes and counts only: GPT-2 XL in seconds, without its 6 GB
                self.model = LitLora(**cfg.model.clone().as_dict())
            self.datamodule = None
            self.trainer = None

        def after_instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: Optional[str]) -> None:
            pass  # summary only: no Trainer.fit

    return SummaryCLI


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print("usage: python -m lit_lora.cli summary [options of fit]\n\nPrints what `fit` would train and its "
              "peak training memory estimate; builds the model only (no data read). The options of `fit`:\n",
              flush=True)
    with warnings.catch_warnings():
        # LightningCLI warns when given args while sys.argv holds others; here sys.argv says "summary".
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = _summary_cli_class()(args=["fit", *argv])
    cfg = cli.config["fit"]
    module = cli.model
    precision = str(cfg.trainer.get("precision"))
    from lit_lora.measure.summary import summary_lines  # start-up: see _summary_cli_class

    batch_size = cfg.data.get("batch_size")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LitLoraError(f"data.batch_size must be a positive integer, got {batch_size!r}")
    from lit_lora.training.devices import accelerator_device  # start-up: see _summary_cli_class

    device = accelerator_device(cfg.trainer.get("accelerator"))
    for line in summary_lines(module.model, module.lora_settings, batch_size, module.block_size, precision, device,
                              module.gradient_checkpointing):
        print(f"lit_lora: {line}", flush=True)
    return 0
