"""Every bad value is one line naming the option (exit 2), by mechanism: our options are checked where they
are declared (finite, in range), Lightning's configuration errors are mapped in one place. The table holds
the values a careful user tried and others of the same kinds."""

from __future__ import annotations

import pytest
import yaml

from lit_lora.cli import main
from tests.helpers import fit_args

# (flag, value, text the one line must hold). A key without "--" goes into a YAML config file instead: on the
# command line jsonargparse already refuses nan and inf (one line too), a config file passes them through.
CASES = [
    ("--trainer.max_steps", "-5", "trainer.max_steps: `max_steps` must be a non-negative integer"),
    ("--trainer.accumulate_grad_batches", "0", "trainer.accumulate_grad_batches must be an integer >= 1, got 0"),
    ("--trainer.val_check_interval", "0", "trainer.val_check_interval must be a finite number > 0, got 0"),
    ("model.learning_rate", "nan", "model.learning_rate must be a finite number > 0, got nan"),
    ("model.learning_rate", "inf", "model.learning_rate must be a finite number > 0, got inf"),
    ("--model.weight_decay", "-1", "model.weight_decay must be a finite number >= 0, got -1"),
    ("--data.num_workers", "-1", "data.num_workers must be an integer >= 0, got -1"),
    ("--checkpoint.every_n_train_steps", "-1", "checkpoint.every_n_train_steps: Invalid value"),
    ("--model.lora.alpha", "0", "model.lora.alpha must be a finite number > 0, got 0"),
    ("--trainer.gradient_clip_val", "-1", "trainer.gradient_clip_val must be a finite number >= 0, got -1"),
    # not in the report, same kinds
    ("--trainer.max_epochs", "-2", "trainer.max_epochs: `max_epochs` must be a non-negative integer"),
    ("--trainer.limit_train_batches", "-1", "trainer.limit_train_batches: You have passed invalid value -1"),
    ("--checkpoint.save_top_k", "-2", "checkpoint.save_top_k: Invalid value for save_top_k=-2"),
    ("--trainer.log_every_n_steps", "0", "trainer.log_every_n_steps must be an integer >= 1, got 0"),
    ("--model.betas", "[1.5, 0.999]", "model.betas must be a finite number >= 0 and < 1, got 1.5"),
    ("--model.min_lr_ratio", "2", "model.min_lr_ratio must be a finite number >= 0 and <= 1, got 2"),
    ("--model.warmup_steps", "-3", "model.warmup_steps must be an integer >= 0, got -3"),
    ("--model.warmup_ratio", "1", "model.warmup_ratio must be a finite number >= 0 and < 1, got 1"),
    ("--model.warmup_ratio", "0.1", "model.warmup_steps=2 and model.warmup_ratio=0.1 are both set; set one of them"),
    ("model.lora.dropout", "nan", "model.lora.dropout must be a finite number >= 0 and < 1, got nan"),
    ("--data.val_fraction", "1.5", "data.val_fraction must be a finite number >= 0 and < 1, got 1.5"),
    ("--data.num_proc", "0", "data.num_proc must be an integer >= 1, got 0"),
    ("--samples.top_k", "-1", "samples.top_k must be an integer >= 0, got -1"),
    ("samples.temperature", "inf", "samples.temperature must be a finite number >= 0, got inf"),
    ("--throughput.log_every_n_steps", "0", "throughput.log_every_n_steps must be an integer >= 1, got 0"),
    ("--loss_trend.intervals", "-1", "loss_trend.intervals must be an integer >= 0, got -1"),
    ("--model.generation.top_p", "0", "top_p must be a finite number > 0 and <= 1, got 0.0"),
    # Lightning's own checks that raise plain ValueError, mapped by where they are raised
    ("--trainer.strategy", "nonsense", "trainer.strategy: You selected an invalid strategy name"),
    ("--trainer.accelerator", "nonsense", "trainer.accelerator: You selected an invalid accelerator name"),
]


@pytest.mark.parametrize("flag, value, text", CASES, ids=[f"{f.lstrip('-')}={v}" for f, v, _ in CASES])
def test_bad_values_are_one_line_naming_the_option(in_tmp, tiny_model_dir, shakespeare, capsys, flag, value, text):
    given = [flag, value]
    if not flag.startswith("--"):
        *groups, name = flag.split(".")
        config: dict = {}
        inner = config
        for group in groups:
            inner = inner.setdefault(group, {})
        inner[name] = float(value)
        (in_tmp / "bad.yaml").write_text(yaml.safe_dump(config))
        given = ["--config", str(in_tmp / "bad.yaml")]
    assert main(fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "1", *given)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("lit_lora: error: "), err
    assert text in err[0], err[0]
    assert not (in_tmp / "lightning_logs").exists()  # stopped before any run folder was made


def test_a_lightning_check_at_fit_start_is_one_line_and_leaves_no_run_folder(in_tmp, tiny_model_dir, shakespeare,
                                                                             capsys):
    # Lightning checks val_check_interval against the batches of an epoch only once the loader exists, with a
    # plain ValueError, after the run folder was made.
    args = fit_args(tiny_model_dir, shakespeare, in_tmp, "--trainer.max_steps", "2",
                    "--trainer.val_check_interval", "500", "--samples.prompts", "[]")
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in lines if line.startswith("lit_lora: error:")]
    assert all(line.startswith("lit_lora: ") for line in lines), lines  # notes before it, never a traceback
    assert len(err) == 1 and err[0].startswith("lit_lora: error: trainer.val_check_interval: "), err
    assert "must be less than or equal to the number of the training batches" in err[0]
    assert not (in_tmp / "lightning_logs").exists()  # the folder the run made for itself went with it
