"""The command line: `python -m lit_lora.cli SUBCOMMAND`. `main` dispatches and turns our errors into one
line; `trainer_cli` is the LightningCLI for fit/validate/test/predict, `resume` and `run_folder` its checkpoint
and run-folder rules; `summary`, `export`, `merge` and `generate` are one tool command each, their options
built by `tool_parser` from the same settings classes as `fit`."""

from lit_lora.cli.main import cli_main, main

__all__ = ["cli_main", "main"]
