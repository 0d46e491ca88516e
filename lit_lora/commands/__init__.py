"""Subcommands of `python -m lit_lora.cli` that are not Trainer methods; each module has main(argv)."""
