"""The command line: `python -m lit_lora.cli SUBCOMMAND`. `main` dispatches and turns our errors into one
line; `trainer_cli` is the LightningCLI for fit/validate/test/predict, `resume` its checkpoint rules; the
other files are one tool command each (summary, export, merge, generate)."""

from lit_lora.cli.main import cli_main, main

__all__ = ["cli_main", "main"]
