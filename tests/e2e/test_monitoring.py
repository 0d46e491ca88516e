"""Watching a run: TensorBoard tags (memory, throughput, samples, HPARAMS), FLOPs per token, the memory
estimate, early stopping across a resume, the progress bar and the `summary` subcommand."""

from __future__ import annotations

import glob
import os
from contextlib import redirect_stderr
from io import StringIO
from types import SimpleNamespace

import pytest
import torch

from lit_lora.callbacks import RunProgressBar, RunRichProgressBar, SampleGenerator, format_samples
from lit_lora.cli import main
from tests.conftest import REPO
from tests.helpers import fit_args, run_cli, scalars

PROMPTS = ["The", "To be"]


def _events(log_dir: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accs = []
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        accs.append(acc)
    return accs


def _texts(log_dir: str, tag: str) -> list[tuple[int, str]]:
    from tensorboard.util import tensor_util

    out = []
    for acc in _events(log_dir):
        if f"{tag}/text_summary" in acc.Tags()["tensors"]:
            for e in acc.Tensors(f"{tag}/text_summary"):
                out.append((e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()))
    return out


def _hparams_plugin(log_dir: str) -> list:
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = []
    for acc in _events(log_dir):
        try:
            contents = acc.PluginTagToContent("hparams")
        except KeyError:  # this events file holds no HPARAMS data
            continue
        out += [plugin_data_pb2.HParamsPluginData.FromString(c) for c in contents.values()]
    return out


def _values(log_dir: str, tag: str) -> list[float]:
    return [v for _, v in scalars(log_dir, tag)]


# -- one short fit, read back from the event files -----------------------------------------------------------


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory, tiny_model_dir, shakespeare):
    tmp = tmp_path_factory.mktemp("watched")
    out = StringIO()
    with redirect_stderr(out):  # lit_lora's notes
        cli = run_cli(fit_args(
            tiny_model_dir, shakespeare, tmp, "--trainer.max_steps", "8", "--trainer.val_check_interval", "4",
            "--trainer.log_every_n_steps", "2", "--model.learning_rate", "1e-2",
            "--trainer.enable_progress_bar", "true",
            "--samples.prompts", str(PROMPTS), "--samples.max_new_tokens", "12", "--samples.temperature", "1.0",
        ), cwd=tmp)
    run_dir = str(tmp / "lightning_logs" / "lit_lora" / "version_0")
    return SimpleNamespace(cli=cli, run_dir=run_dir, notes=out.getvalue())


def test_memory_tags_are_logged_with_sensible_values(watched_run):
    run_dir = watched_run.run_dir
    rss, peak = _values(run_dir, "memory/rss_mb"), _values(run_dir, "memory/peak_rss_mb")
    # Every 2 steps, at the same x as train_loss.
    assert [s for s, _ in scalars(run_dir, "memory/rss_mb")] == [s for s, _ in scalars(run_dir, "train_loss")]
    assert [s for s, _ in scalars(run_dir, "memory/rss_mb")] == [1, 3, 5, 7]
    assert all(v > 0 for v in rss)
    assert all(p >= r for p, r in zip(peak, rss))
    for tag in ("after_model_load", "after_lora", "at_train_start", "after_first_forward", "estimated_peak",
                "estimated_static"):
        values = _values(run_dir, f"memory/{tag}_mb")
        assert len(values) == 1 and values[0] > 0, tag
    assert not scalars(run_dir, "memory/allocated_mb")  # CUDA-only tags stay absent on CPU


def test_throughput_tags_count_real_tokens(watched_run):
    run_dir = watched_run.run_dir
    tokens, samples = scalars(run_dir, "throughput/tokens_per_sec"), scalars(run_dir, "throughput/samples_per_sec")
    assert [s for s, _ in tokens] == [1, 3, 5, 7]
    assert all(v > 0 for _, v in tokens) and all(v > 0 for _, v in samples)
    # Packed blocks of 32 tokens, no padding: per interval, tokens / samples is the block size exactly.
    for (_, t), (_, s) in zip(tokens, samples):
        assert t / s == pytest.approx(32)
    assert all(v > 0 for v in _values(run_dir, "throughput/steps_per_sec"))
    assert not scalars(run_dir, "throughput/mfu")  # no known peak FLOP/s for a CPU


def test_samples_are_logged_and_change_between_validations(watched_run):
    texts = _texts(watched_run.run_dir, "samples")
    assert [s for s, _ in texts] == [4, 8]  # each validation, not the sanity check
    for _, text in texts:
        for prompt in PROMPTS:
            assert f"**{prompt}**" in text.replace("\\ ", " ")
    first, second = texts[0][1], texts[1][1]
    assert first != second
    samples = watched_run.cli.trainer.callbacks
    generator = next(c for c in samples if isinstance(c, SampleGenerator))
    assert [p for p, _ in generator.last_samples] == PROMPTS
    for prompt, continuation in generator.last_samples:
        assert continuation  # generated text, not just the prompt
        assert "    " + (prompt + continuation).split("\n")[0] in second
    assert format_samples(generator.last_samples) == second


def test_hparams_tab_metric_is_the_best_val_loss(watched_run):
    run_dir = watched_run.run_dir
    val = _values(run_dir, "val_loss")[1:]  # after step 0's, which counts for nothing
    best = scalars(run_dir, "hp/best_val_loss")
    assert len(val) == 2 and [s for s, _ in best] == [4, 8]
    assert best[-1][1] == pytest.approx(min(val), abs=1e-6)
    assert best[0][1] == pytest.approx(val[0], abs=1e-6)
    plugin = _hparams_plugin(run_dir)
    experiments = [p.experiment for p in plugin if p.HasField("experiment")]
    sessions = [p.session_start_info for p in plugin if p.HasField("session_start_info")]
    assert experiments and sessions
    assert [m.name.tag for m in experiments[0].metric_infos] == ["hp/best_val_loss"]
    hp = sessions[0].hparams
    assert hp["learning_rate"].number_value == pytest.approx(1e-2)
    assert hp["lora/r"].number_value == 8 and hp["data/batch_size"].number_value == 4
    assert hp["trainer/precision"].string_value == "32-true"
    assert not scalars(run_dir, "hp_metric")  # Lightning's -1 placeholder is off


def test_val_loss_starts_at_step_0_with_the_base_models_loss(watched_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from lit_lora.objectives.nll import model_nll

    val = scalars(watched_run.run_dir, "val_loss")
    assert [s for s, _ in val] == [0, 3, 7]  # Lightning logs a validation at the step before its count
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    nll = n = 0
    with torch.no_grad():
        for batch in watched_run.cli.datamodule.val_dataloader():
            s, c = model_nll(base, batch["input_ids"], batch.get("attention_mask"), batch["labels"])
            nll, n = nll + float(s), n + int(c)
    assert val[0][1] == pytest.approx(nll / n, abs=1e-5)  # the whole validation set, before any update
    assert scalars(watched_run.run_dir, "val_ppl")[0][0] == 0
    assert f"lit_lora: val_loss {val[0][1]:.4f} at step 0 (the model before any update)" in watched_run.notes
    # Neither early stopping nor the checkpoints saw it, even were it the lowest.
    callbacks = watched_run.cli.trainer.callbacks
    stopper = next(c for c in callbacks if type(c).__name__ == "EarlyStopping")
    assert float(stopper.best_score) == pytest.approx(min(v for _, v in val[1:]), abs=1e-6)
    ckpts = os.listdir(os.path.join(watched_run.run_dir, "checkpoints"))
    assert ckpts and not any(name.startswith("step000000") for name in ckpts)


def test_learning_rate_is_logged_at_every_logging_step(watched_run):
    assert [s for s, _ in scalars(watched_run.run_dir, "lr-AdamW")] == [1, 3, 5, 7]


def test_fit_prints_the_summary_and_the_bar_shows_loss_tokens_and_eta(watched_run):
    out = watched_run.notes
    lines = [line for line in out.splitlines() if line.startswith("lit_lora: ")]
    assert lines[0].endswith("% trainable") and " base, " in lines[0]
    assert any("model PeftModelForCausalLM(GPT2LMHeadModel)" in line for line in lines)
    assert any(line.startswith("lit_lora: LoRA r=8 alpha=16") for line in lines)
    assert any("peak training memory, estimated" in line and "batch 4 x block 32" in line for line in lines)
    trainer = watched_run.cli.trainer
    bar = trainer.progress_bar_callback
    assert isinstance(bar, (RunProgressBar, RunRichProgressBar))  # rich is Lightning's default when installed
    items = bar.get_metrics(trainer, trainer.lightning_module)
    assert "train_loss" in items and items["tok/s"] > 0 and "v_num" not in items
    assert items["eta"] == "0:00:00"  # the run is over


# -- early stopping ---------------------------------------------------------------------------------------------


def _early_stopping_state(ckpt_path: str) -> dict:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith("EarlyStopping"))


# min_delta 100: the first validation sets the best, no later one can beat it by that much.
NO_IMPROVEMENT = (
    "--early_stopping.min_delta", "100", "--early_stopping.patience", "2", "--trainer.val_check_interval", "2",
    "--trainer.max_steps", "40", "--trainer.num_sanity_val_steps", "0", "--samples.prompts", "[]",
)


def test_early_stopping_stops_a_run_that_cannot_improve_and_again_after_resume(in_tmp, tiny_model_dir, shakespeare):
    cli = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, *NO_IMPROVEMENT))
    # Validations at steps 2 (best), 4 (wait 1), 6 (wait 2 = patience): stop.
    assert cli.trainer.global_step == 6 and cli.trainer.should_stop
    run_dir = in_tmp / "lightning_logs" / "lit_lora" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert _early_stopping_state(str(last))["wait_count"] == 2
    cli = run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, *NO_IMPROVEMENT, "--ckpt_path", str(last)))
    # The counter came back from the checkpoint: the first validation after resuming (step 8) is one more
    # without improvement, and the run stops again. A fresh counter would have trained on to step 12.
    assert cli.trainer.global_step == 8 and cli.trainer.should_stop
    assert _early_stopping_state(str(last))["wait_count"] == 3
    # The HPARAMS metric continued from the checkpoint too: the best over both sessions.
    val = _values(str(run_dir), "val_loss")
    assert len(val) == 4
    assert _values(str(run_dir), "hp/best_val_loss")[-1] == pytest.approx(min(val), abs=1e-6)


# -- the summary subcommand ----------------------------------------------------------------------------------------


def test_summary_takes_fit_configs_without_data_files(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["summary", "--config", "conf/quickstart.yaml", "--data.train_files", "no/such/file.txt"]) == 0
    out = capsys.readouterr().out
    assert "lit_lora: 478,720 base, 65,536 trainable, 544,256 total, 12.0414% trainable" in out  # as fit prints
    assert "478,720 frozen parameters" in out and "precision 32-true, device cpu" in out
    assert "LoRA r=16 alpha=32 dropout=0.05 on c_attn, c_proj, c_fc (8 modules)" in out
    assert "batch 16 x block 64, 32-true, gradient checkpointing off" in out


def test_summary_reads_a_printed_fit_config_and_overrides(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "conf/quickstart.yaml", "--print_config"])
    printed = tmp_path / "my.yaml"
    printed.write_text(capsys.readouterr().out)
    small = '{"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 512}'
    assert main(["summary", "--config", str(printed), "--model.model_config", small, "--data.batch_size", "2",
                 "--data.block_size", "32", "--model.gradient_checkpointing", "true",
                 "--trainer.precision", "bf16-mixed"]) == 0
    out = capsys.readouterr().out
    assert "batch 2 x block 32, bf16-mixed, gradient checkpointing on" in out
    assert "(exact)" in out
