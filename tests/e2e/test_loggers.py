"""Any Lightning logger: text samples, the flat hyperparameters with their best metric, and a resume into
the same run work with CSVLogger and MLFlowLogger (a local `file:` store), not only TensorBoard."""

from __future__ import annotations

import csv

import pytest
import yaml

from tests.helpers import cli_output, fit_args, run_cli


def _fit(tmp, model_dir, corpus, logger: list[str], *extra: str):
    return run_cli(fit_args(model_dir, corpus, tmp, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
                            "--samples.prompts", "[The]", "--samples.max_new_tokens", "4", *logger, *extra), cwd=tmp)


def test_csv_logger_gets_samples_hparams_best_metric_and_resumes_in_its_folder(tmp_path, tiny_model_dir, shakespeare):
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "csv",
              "--trainer.logger.name", "run"]
    _fit(tmp_path, tiny_model_dir, shakespeare, logger)
    run = tmp_path / "csv" / "run" / "version_0"
    assert (run / "samples.md").read_text().count("## step ") == 2
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["data/batch_size"] == 4 and hparams["trainer/precision"] == "32-true"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    resumed = _fit(tmp_path, tiny_model_dir, shakespeare, logger, "--trainer.max_steps", "6", "--ckpt_path", str(ckpt))
    assert resumed.trainer.global_step == 6
    assert sorted(p.name for p in (tmp_path / "csv" / "run").iterdir()) == ["version_0"]  # the same run
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    best = [float(r["hp/best_val_loss"]) for r in rows if r.get("hp/best_val_loss")]
    assert len(best) == 3 and best == sorted(best, reverse=True)  # steps 2, 4 and, after the resume, 6


def test_mlflow_logger_gets_samples_hparams_best_metric_and_resumes_the_same_run(tmp_path, tiny_model_dir,
                                                                                 shakespeare, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x asks for this to use a local file: store
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    logger = ["--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger", "--trainer.logger.tracking_uri", uri,
              "--trainer.logger.experiment_name", "lit"]
    first = _fit(tmp_path, tiny_model_dir, shakespeare, logger)
    run_id = first.trainer.logger.run_id
    ckpt = first.trainer.checkpoint_callback.last_model_path
    client = MlflowClient(tracking_uri=uri)
    artifacts = [a.path for a in client.list_artifacts(run_id, "samples")]
    assert artifacts == ["samples/step000002.md", "samples/step000004.md"]
    params = client.get_run(run_id).data.params
    assert params["data/batch_size"] == "4" and params["lora/r"] == "8"
    # `last` finds the run's checkpoint in the MLflow store (mlruns/EXPERIMENT_ID/RUN_ID/checkpoints)
    resumed = _fit(tmp_path, tiny_model_dir, shakespeare, logger, "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert resumed.trainer.ckpt_path == ckpt
    assert resumed.trainer.logger.run_id == run_id and resumed.trainer.global_step == 6
    best = client.get_metric_history(run_id, "hp/best_val_loss")
    assert [m.step for m in best] == [2, 4, 6]
    assert [m.value for m in best] == sorted((m.value for m in best), reverse=True)


def test_a_run_without_a_logger_writes_only_into_a_run_folder_of_its_own(tmp_path, tiny_model_dir, shakespeare):
    (tmp_path / "config.yaml").write_text("mine: 1\n")  # the user's file in the working folder
    out = cli_output(tmp_path, *fit_args(tiny_model_dir, shakespeare, tmp_path, "--trainer.max_steps", "2",
                                         "--samples.prompts", "[]", "--trainer.logger", "false"), notes=True)
    assert (tmp_path / "config.yaml").read_text() == "mine: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "hf-cache", "lightning_logs"]
    run = tmp_path / "lightning_logs" / "lit_lora" / "version_0"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["logger"] is False
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert [line for line in out.splitlines() if "no logger" in line] == [
        "lit_lora: no logger (--trainer.logger false): LearningRateMonitor off; checkpoints and config.yaml go to "
        "lightning_logs/lit_lora/version_0"]


def test_two_loggers_share_one_run_folder_and_a_copied_checkpoint_says_where_it_writes(tmp_path, tiny_model_dir,
                                                                                        shakespeare):
    loggers = ('[{class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {save_dir: lightning_logs, '
               'name: lit_lora}}, {class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: csv}}]')
    args = fit_args(tiny_model_dir, shakespeare, tmp_path, "--samples.prompts", "[]", "--trainer.logger", loggers)
    cli_output(tmp_path, *args, "--trainer.max_steps", "2")
    runs = tmp_path / "lightning_logs" / "lit_lora"
    assert [p.name for p in runs.iterdir()] == ["version_0"] and not (tmp_path / "csv").exists()
    names = {p.name for p in (runs / "version_0").iterdir()}
    assert {"metrics.csv", "config.yaml", "checkpoints"} <= names and any(n.startswith("events.out") for n in names)
    copy = tmp_path / "copy.ckpt"  # a checkpoint moved out of its run folder: the resumed run gets a new one
    copy.write_bytes((runs / "version_0" / "checkpoints" / "last.ckpt").read_bytes())
    out = cli_output(tmp_path, *args, "--trainer.max_steps", "3", "--ckpt_path", str(copy), notes=True)
    assert f"lit_lora: {copy} is not in this logger's run folders; this run writes to lightning_logs/lit_lora/" \
           "version_1" in out.splitlines()
    assert (runs / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
