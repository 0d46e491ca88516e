"""A quiet run: what third-party libraries print that a lit_lora user cannot act on, silenced by exact
message (or logger), each with the reason. What can be fixed where it starts is fixed there instead
(tokenizer calls pass verbose=False; export does not look the base model up on the hub; loading a local
model draws no progress bar). Nothing here imports the libraries it quiets, so `--help` stays fast."""

from __future__ import annotations

import logging
import warnings

_WARNINGS = [
    # transformers 5 deprecates the property PEFT and Lightning still read; nothing for a user to change.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # Lightning 2.6 calls a torch._pytree API that torch 2.13 deprecates.
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # CSVLogger on a resumed run: lit_lora writes the earlier metrics back (cli/run_folder.keep_csv_history).
    (UserWarning, r"Experiment logs directory .* exists and is not empty"),
    # A resumed run saves into its own checkpoint folder on purpose; a new run always gets a fresh one
    # (cli/run_folder.claim_logger_version), so the folder is never another run's.
    (UserWarning, r"Checkpoint directory .* exists and is not empty"),
    # validate/test/predict from a checkpoint log into a new version folder; the checkpoint callback's
    # restored best/last paths of the training run are not what an evaluation needs.
    (UserWarning, r"The dirpath has changed from .* won't be reloaded"),
    # predict/validate from a checkpoint: the CLI builds the same callbacks again; there is nothing to pass.
    (UserWarning, r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"),
    # A checkpoint saved before the first validation (a short run, or every_n_train_steps): there is no
    # val_loss yet; last.ckpt is written and, without any validation, exported.
    (UserWarning, r"`ModelCheckpoint\(monitor='val_loss'\)` could not find the monitored key"),
]
# Log records bitsandbytes writes that a user cannot act on, dropped by logger and the start of the message.
_LOG_MESSAGES = {
    # At import (PEFT imports bitsandbytes), on CPUs with AVX512-BF16, quantized run or not: the optional
    # `kernels` package is not installed, and bitsandbytes uses the CPU kernel it ships instead.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community: ",),
    # int8 layers in eval mode (each layer, each validation batch): int8 quantizes its input as float16, always.
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast from ",),
}
# INFO lines Lightning prints on every run (GPU/TPU availability, a litlogger advert, "Seed set to",
# "`Trainer.fit` stopped"); lit_lora prints its own summary. Warnings and errors still show.
_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.fabric.utilities.distributed", "lightning.pytorch.accelerators.cuda")


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message (the format string, before its arguments) starts so."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.starts))


# One filter object per logger, so that calling quiet_third_parties again adds none twice.
_LOG_FILTERS = {name: _DropMessages(starts) for name, starts in _LOG_MESSAGES.items()}


def quiet_third_parties() -> None:
    for category, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Named before the library creates its logger: logging hands the library this same object.
    for name, record_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(record_filter)
