"""`python -m lit_lora.cli SUBCOMMAND ...`: LightningCLI's fit/validate/test/predict plus our own tools.

    python -m lit_lora.cli fit --config conf/quickstart.yaml
    python -m lit_lora.cli fit --config conf/gpt2/lora.yaml --data.train_files my.txt
    python -m lit_lora.cli fit --config conf/gpt2/lora.yaml --data.train_files my.txt --ckpt_path last
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import traceback
from typing import Any, Optional

from lit_lora.cli.config_errors import is_configuration_error, option_message
from lit_lora.cli.quiet import quiet_third_parties
from lit_lora.errors import LitLoraError, one_line, verbose_requested
from lit_lora.notes import print_note

TRAINER_COMMANDS = {
    "fit": "Fine-tune: train LoRA adapters, validate, checkpoint, export the best adapter.",
    "validate": "Loss and perplexity of a checkpoint (or of the base model) on the validation split.",
    "test": "Loss and perplexity on the test split (the validation files unless given).",
    "predict": "Complete a prompts file into JSONL with the model's generation settings.",
}
# Our own subcommands: name -> (module with main(argv), one-line help). Imported only when used.
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "summary": ("lit_lora.cli.summary", "Parameter counts and a training-memory estimate for a config."),
    "preview": ("lit_lora.cli.preview", "The first training sequences as the model sees them, trained tokens marked."),
    "export": ("lit_lora.cli.export", "Export a LoRA-only checkpoint as a PEFT adapter folder."),
    "merge": ("lit_lora.cli.merge", "Merge LoRA into the base model: a plain transformers model folder."),
    "generate": ("lit_lora.cli.generate", "Complete prompts with a checkpoint, adapter, merged or base model."),
    "eval": ("lit_lora.cli.eval", "lm-evaluation-harness tasks on a checkpoint, adapter, merged or base model."),
}


def top_level_help() -> str:
    lines = ["usage: python -m lit_lora.cli SUBCOMMAND [options]", "",
             "LoRA fine-tuning of small causal language models of ten families.", ""]
    lines.append("Subcommands (each has its own --help):")
    for name, text in TRAINER_COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    for name, (_, text) in TOOL_COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines += ["", "Options: --verbose (or LIT_LORA_VERBOSE=1) shows full tracebacks on errors."]
    return "\n".join(lines)


def cli_main(args: Optional[list[str]] = None) -> Any:
    """Run LightningCLI in-process (tests call this with a list of arguments)."""
    # Lightning: only for the subcommands that need it
    from lit_lora.cli.run_folder import forget_claimed_folders
    from lit_lora.cli.trainer_cli import LitLoraCLI

    forget_claimed_folders()
    # LightningCLI warns when given args that equal sys.argv; None means "read sys.argv" to it.
    return LitLoraCLI(args=None if args == sys.argv[1:] else args)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = verbose_requested(argv)
    argv = [a for a in argv if a != "--verbose"]
    quiet_third_parties()
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return 0
    try:
        if argv[0] in TOOL_COMMANDS:
            module = importlib.import_module(TOOL_COMMANDS[argv[0]][0])
            return int(module.main(argv[1:]) or 0)
        if argv[0] not in TRAINER_COMMANDS:
            raise LitLoraError(
                f"unknown subcommand {argv[0]!r}; expected one of {', '.join([*TRAINER_COMMANDS, *TOOL_COMMANDS])}"
            )
        cli_main(argv)
        return 0
    except BaseException as err:
        if _interrupted(err):  # Ctrl-C outside a training loop (which saves and stops by itself)
            _remove_unused_run_folders()
            print_note("interrupted (Ctrl-C) before finishing; nothing was saved")
            return 130  # as a shell reports a command ended by SIGINT
        if _is_sigterm_stop(err):  # GracefulStop saved last.ckpt and said so, or said there was nothing to save
            _remove_unused_run_folders()
            return 0
        if isinstance(err, BrokenPipeError):  # stdout's reader went away (`generate ... | head`): stop quietly
            _silence_stdout()
            return 141  # as a tool killed by SIGPIPE
        if not _is_user_error(err):
            raise
        if verbose:
            traceback.print_exc()
        _remove_unused_run_folders()
        message = option_message(err) if is_configuration_error(err) else one_line(err)
        if not isinstance(err, LitLoraError):  # a config/flag the parser or Lightning rejected
            message = f"{message} (see: python -m lit_lora.cli {argv[0]} --help)"
        print_note(f"error: {message}")
        return 2


def _remove_unused_run_folders() -> None:
    """A run stopped before it trained (a bad option, Ctrl-C while tokenizing) leaves no folder of its own."""
    run_folder = sys.modules.get("lit_lora.cli.run_folder")
    if run_folder is not None:
        run_folder.remove_unused_run_folders()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit does not fail on the closed pipe again
    (Python's documented recipe for SIGPIPE)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (a test's capture): nothing will flush into a pipe


def _interrupted(err: BaseException) -> bool:
    """A KeyboardInterrupt, or an error raised while one was being handled: a worker pool's timeout
    (`datasets`), Lightning's `sys.exit(1)` after its own KeyboardInterrupt handling."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _is_sigterm_stop(err: BaseException) -> bool:
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(err, exceptions.SIGTERMException)


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, LitLoraError) or is_configuration_error(err):
        return True
    jsonargparse = sys.modules.get("jsonargparse")
    return jsonargparse is not None and isinstance(err, jsonargparse.ArgumentError)
