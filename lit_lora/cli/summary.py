"""`python -m lit_lora.cli summary --config conf/gpt2/lora.yaml`: what `fit` would train, and its peak memory.

Takes everything `fit` takes (config files, `--model.*`/`--data.*`/`--trainer.*` overrides, `--ckpt_path`) and
prints the summary `fit` prints at its start: parameter counts, model class, dtype, device, LoRA settings and
the peak-training-memory estimate for the configured batch size, block size, precision and gradient
checkpointing. It builds the model on the meta device from its config (no weights are read or held) and trains
nothing. It reads no data file (they need not exist), except for `--data.batch_size auto`: then the training
files, when they exist, are tokenized (into the cache `fit` reads) to cap the batch as `fit` does.

    python -m lit_lora.cli summary --config conf/gpt2/lora.yaml --model.model_config '{}' \\
        --model.tokenizer_name_or_path DIR --trainer.accelerator gpu --trainer.precision bf16-mixed
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Optional

from lit_lora.errors import LitLoraError


def _summary_cli_class() -> type:
    # start-up: Lightning loads after --help
    from lit_lora.cli.trainer_cli import ParseOnlyCLI
    from lit_lora.training.devices import default_precision

    class SummaryCLI(ParseOnlyCLI):
        """Parses exactly as `fit` does, then builds the model alone."""

        def before_instantiate_classes(self) -> None:
            # fit's defaulting of the precision, without its check that the data files exist: none is read.
            trainer_cfg = self.config[self.subcommand].trainer
            if trainer_cfg.get("precision") is None:
                trainer_cfg.precision = default_precision(trainer_cfg.get("accelerator"))

        def instantiate_classes(self) -> None:
            from lit_lora.lora.build import without_weights  # start-up: see above
            from lit_lora.training.module import LitLora

            cfg = self.config[self.subcommand]
            with without_weights():  # shapes and counts only: GPT-2 XL in seconds, without its 6 GB
                self.model = LitLora(**cfg.model.clone().as_dict())
            self.datamodule = None
            self.trainer = None

    return SummaryCLI


def _pop_memory_gb(argv: list[str]) -> tuple[list[str], Optional[str]]:
    """`--memory_gb N|gpu` is summary's own option: taken out before the options of `fit` are parsed."""
    rest, value = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--memory_gb" or arg.startswith("--memory_gb="):
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "")
        else:
            rest.append(arg)
    return rest, value


def main(argv: Optional[list[str]] = None) -> int:
    argv, memory_gb = _pop_memory_gb(list(sys.argv[1:] if argv is None else argv))
    from lit_lora.estimate.budget import parse_memory_gb  # start-up: see _summary_cli_class

    memory_bytes = parse_memory_gb(memory_gb)  # None for "gpu": the visible GPU's free memory
    if any(a in ("-h", "--help") for a in argv):
        print("usage: python -m lit_lora.cli summary [--memory_gb GB] [options of fit]\n\nPrints what `fit` would "
              "train and its peak training memory estimate; builds the model on the meta device (no weights, no "
              "data read). --memory_gb GB: will this model (and, for a GPT-2, each GPT-2 size) fit a card of GB (`gpu`: the visible GPU's free memory). "
              "The options of `fit`:\n", flush=True)
    with warnings.catch_warnings():
        # LightningCLI warns when given args while sys.argv holds others; here sys.argv says "summary".
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = _summary_cli_class()(args=["fit", *argv])
    cfg = cli.config["fit"]
    module = cli.model
    precision = str(cfg.trainer.get("precision"))
    from lit_lora.cli import will_it_fit  # start-up: see _summary_cli_class
    from lit_lora.estimate.model_summary import summary_lines
    from lit_lora.training.devices import accelerator_device

    device = accelerator_device(cfg.trainer.get("accelerator"))
    if device not in ("cuda", "cpu") and (memory_bytes is not None or cfg.data.get("batch_size") == "auto"):
        raise LitLoraError(f"--memory_gb and data.batch_size auto estimate CUDA GPUs and CPUs, not accelerator "
                           f"{cfg.trainer.get('accelerator')!r}")
    if memory_gb == "gpu" and device != "cuda":
        raise LitLoraError("--memory_gb gpu reads the visible GPU: add --trainer.accelerator gpu, or give a size in GB")
    model, block, gc = module.model, module.block_size, module.gradient_checkpointing
    # The sequences per row of a preference objective, and whether its reference pass runs each step.
    step_shape = module.objective.step_shape(bool((cfg.get("reference") or {}).get("precompute_ref_log_probs")))
    batch_size = cfg.data.get("batch_size")
    budget = will_it_fit.memory_budget(device, memory_bytes) if memory_gb or batch_size == "auto" else None
    if batch_size == "auto":
        limit = _auto_batch_limit(cfg)
        batch_size, line = will_it_fit.auto_batch_line(model, block, precision, gc, device, budget, limit, step_shape)
        print(f"lit_lora: {line}", flush=True)
    elif not isinstance(batch_size, int) or batch_size < 1:
        raise LitLoraError(f"data.batch_size must be a positive integer or auto, got {batch_size!r}")
    lines = summary_lines(model, module.lora_settings, batch_size, block, precision, device, gc, module.reference,
                          step_shape)
    if memory_gb and budget is not None:
        models = [("this model", model)]
        if model.get_base_model().config.model_type == "gpt2":  # the sizes a GPT-2 user can move between
            build = _gpt2_builder(cfg)
            models += [(name, build(shape)) for name, shape in will_it_fit.GPT2_SIZES.items()]
        lines += will_it_fit.fit_table(models, batch_size, block, precision, gc, device, budget, step_shape)
    for line in lines:
        print(f"lit_lora: {line}", flush=True)
    return 0


def _auto_batch_limit(cfg: Any) -> Optional[int]:
    """fit's cap on an `auto` batch, from the training rows (tokenized as fit does, into the same cache); None
    when no training files are there (summary needs none; a dataset name is not fetched)."""
    from lit_lora.cli.run_folder import check_data_files  # start-up: see _summary_cli_class
    from lit_lora.callbacks.auto_batch import batch_limit
    from lit_lora.data.sources import build_training_splits
    from lit_lora.pretrained.hub import load_tokenizer

    data = cfg.data.as_dict()
    if not data["train_files"]:
        return None
    try:
        check_data_files(cfg.data)
    except LitLoraError:
        return None
    tokenizer = load_tokenizer(data["tokenizer_name_or_path"], trust_remote_code=data["trust_remote_code"])
    train = build_training_splits(data, tokenizer)[0]
    devices = cfg.trainer.get("devices")
    return batch_limit(len(train), devices if isinstance(devices, int) else 1, cfg.trainer.get("val_check_interval"))


def _gpt2_builder(cfg: Any) -> Any:
    """Builds the LoRA model of a GPT-2 shape with this run's settings, on the meta device."""
    from lit_lora.lora.build import without_weights  # start-up: see _summary_cli_class
    from lit_lora.training.module import LitLora

    settings = cfg.model.clone().as_dict()

    def build(shape: dict[str, int]) -> Any:
        with without_weights():
            return LitLora(**dict(settings, model_config=shape, tokenizer_name_or_path="unused",
                                  adapter_path=None)).model

    return build
