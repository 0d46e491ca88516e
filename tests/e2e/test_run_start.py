"""What a run says as it starts: the step-0 validation draws nothing from the global RNG (the training is the
same without it), and the early learning-rate check warns, once, when the training loss rises."""

from __future__ import annotations

import re
from contextlib import redirect_stderr
from io import StringIO


from tests.helpers import fit_args, run_cli, scalars


def _fit(tmp, model_dir, corpus, name: str, *extra: str) -> tuple[list[float], str]:
    out = StringIO()
    with redirect_stderr(out):  # lit_lora's notes
        run_cli(fit_args(model_dir, corpus, tmp, "--trainer.max_steps", "6", "--trainer.val_check_interval", "6",
                         "--trainer.logger.init_args.save_dir", str(tmp / name), *extra), cwd=tmp)
    return [v for _, v in scalars(str(tmp / name / "lit_lora" / "version_0"), "train_loss")], out.getvalue()


def test_the_step_0_validation_leaves_training_unchanged(tmp_path, tiny_model_dir, shakespeare):
    # LoRA dropout 0.05 (the default) and a shuffled loader: any draw from the global RNG would show.
    with_start, said = _fit(tmp_path, tiny_model_dir, shakespeare, "with", "--trainer.num_sanity_val_steps", "-1")
    without, quiet = _fit(tmp_path, tiny_model_dir, shakespeare, "without", "--trainer.num_sanity_val_steps", "0")
    assert len(with_start) == 6 and with_start == without
    assert "at step 0 (the model before any update)" in said and "at step 0" not in quiet


def test_a_learning_rate_too_high_is_said_once_with_its_value(tmp_path, tiny_model_dir, shakespeare):
    # Logged every step (fit_args): the means of steps 1 and 3 are compared, 6.24 -> 6.37 at this rate with
    # the base's dropout kept (without it this tiny model takes the rate, and even 1.0: 6.23 -> 6.18, 6.20).
    losses, out = _fit(tmp_path, tiny_model_dir, shakespeare, "high", "--model.learning_rate", "0.1",
                       "--model.warmup_steps", "0", "--loss_trend.intervals", "3", "--model.base_dropout", "null")
    assert losses[2] > losses[0] * 1.01
    lines = [line for line in out.splitlines() if "training loss rose" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("lit_lora: the training loss rose over the first 3 steps (")
    # The rate in use at step 3 of a 6-step cosine, and the peak.
    assert re.search(r"at learning rate 0\.0\d+ \(peak 0\.1\); if it keeps rising, lower --model\.learning_rate$", lines[0])
