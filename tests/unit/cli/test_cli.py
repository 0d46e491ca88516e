"""The command line: shipped configs parse, --help documents every option, `fit` runs end to end."""

from __future__ import annotations

import inspect

import pytest
import yaml

from lit_lora.cli import main
from lit_lora.data import LitLoraData
from lit_lora.training.module import LitLora
from tests.conftest import REPO
from tests.helpers import run_cli

CONFIGS = sorted(p for p in (REPO / "conf").rglob("*.yaml") if p.parent.name != "shared")  # conf/MODEL/JOB.yaml


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO / "conf")) for c in CONFIGS])
def test_shipped_config_parses_through_the_cli(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "--config", str(config), "--data.train_files", "x.txt", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(printed["seed_everything"], int)  # a re-run of the printed config draws the same seed
    assert printed["model"]["lora"]["r"] > 0


def test_gpt2_config_is_the_reference_run():
    cfg = yaml.safe_load((REPO / "conf" / "gpt2" / "lora.yaml").read_text())
    assert cfg["model"]["model_name_or_path"] == "gpt2" and "model_config" not in cfg["model"]
    assert cfg["model"]["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["c_attn", "c_proj"]}
    assert cfg["model"]["gradient_checkpointing"] is True and cfg["trainer"]["max_epochs"] == 3


def test_fit_help_lists_every_model_and_data_option(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--help"])
    out = capsys.readouterr().out
    for prefix, cls in (("model", LitLora), ("data", LitLoraData)):
        for name in inspect.signature(cls.__init__).parameters:
            if name == "self" or (prefix, name) in {("model", "block_size"), ("data", "tokenizer_name_or_path"),
                                                  ("data", "trust_remote_code")}:
                continue  # linked from another option, so not settable on its own
            assert f"--{prefix}.{name}" in out, f"--{prefix}.{name} missing from fit --help"
    for name in ("r", "alpha", "dropout", "target_modules", "bias", "use_rslora", "use_dora"):
        assert f"--model.lora.{name}" in out


def test_top_level_help_lists_all_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "summary", "preview"):
        assert f"  {name} " in out


def test_unknown_subcommand_is_one_line(capsys):
    assert main(["fitt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit_lora: error: unknown subcommand 'fitt'") and "\n" not in err


def test_a_closed_stdout_pipe_stops_quietly(monkeypatch, capsys):
    """`python -m lit_lora.cli ... | head -1`: the reader goes away; exit 141 (as SIGPIPE), no traceback."""
    import sys

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["summary", "--help"]) == 141  # its usage line is a print()
    assert "Traceback" not in capsys.readouterr().err


def test_the_docs_multi_file_example_parses(capsys):
    import re
    import shlex

    page = (REPO / "docs" / "data-and-chat.md").read_text(encoding="utf-8")
    example = re.search(r"`(--data\.train_files '\[[^`]*)`", page).group(1)
    with pytest.raises(SystemExit):
        run_cli(["fit", *shlex.split(example), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train_files"] == ["a.txt", "books/*.txt"]
