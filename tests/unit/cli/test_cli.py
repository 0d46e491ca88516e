"""The command line: shipped configs parse, --help documents every option, `fit` runs end to end."""

from __future__ import annotations

import inspect

import pytest
import yaml

from lit_lora.cli import main
from lit_lora.data import LitLoraData
from lit_lora.model import LitLora
from tests.conftest import REPO
from tests.helpers import fit_args, run_cli, scalars

CONFIGS = sorted((REPO / "conf").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_config_parses_through_the_cli(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "--config", str(config), "--data.train_files", "x.txt", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(printed["seed_everything"], int)  # a re-run of the printed config draws the same seed
    assert printed["model"]["lora"]["r"] > 0


def test_gpt2_config_is_the_reference_run():
    cfg = yaml.safe_load((REPO / "conf" / "gpt2.yaml").read_text())
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


def test_fit_end_to_end_on_local_model(in_tmp, tiny_model_dir, shakespeare, capsys):
    run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "12",
                     "--trainer.val_check_interval", "6", "--model.learning_rate", "3e-3"))
    out = capsys.readouterr().err
    assert "lit_lora: " in out and "trainable" in out
    run_dir = in_tmp / "lightning_logs" / "lit_lora" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    val = scalars(str(run_dir), "val_loss")
    ppl = scalars(str(run_dir), "val_ppl")
    assert [s for s, _ in val] == [0, 5, 11] and val[2][1] < val[1][1] < val[0][1]  # step 0: the base
    assert ppl[-1][1] == pytest.approx(2.718281828 ** val[-1][1], rel=1e-4)
    assert len(scalars(str(run_dir), "train_loss")) == 12
    assert scalars(str(run_dir), "lr-AdamW")


def test_ckpt_path_last_without_checkpoint_is_an_error(in_tmp, tiny_model_dir, shakespeare, capsys):
    code = main(fit_args(tiny_model_dir, shakespeare, in_tmp, "--ckpt_path", "last"))
    assert code == 2
    assert "no last.ckpt under lightning_logs/lit_lora/version_*/checkpoints" in capsys.readouterr().err


def test_the_readmes_multi_file_example_parses(capsys):
    import re
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"`(--data\.train_files '\[[^`]*)`", readme).group(1)
    with pytest.raises(SystemExit):
        run_cli(["fit", *shlex.split(example), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train_files"] == ["a.txt", "books/*.txt"]
