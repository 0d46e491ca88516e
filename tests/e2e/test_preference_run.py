"""Preference tuning end to end, as docs/preference-tuning.md runs it: `fit` with the DPO objective on a JSONL
of pairs, the rewards in TensorBoard, a LoRA-only checkpoint that records its objective, the exported adapter
that `generate` loads, `preview` of pairs, a mid-epoch resume that repeats the same losses; and the one-line
errors that a bad pair, or an objective that does not match the data, give."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tests.conftest import QUICKSTART, save_tiny_gpt2
from tests.helpers import assert_resume_repeats, checkpoints_dir, cli_output, fit_in_process, scalars

NAMES = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou", "Max", "Ned", "Oda", "Pat"]
DPO = ["--model.objective", "lit_lora.objectives.preference.Preference", "--model.objective.init_args.beta", "0.1"]


def _pairs(path, long_prompt: bool = True):
    # The chosen answers end with a sign-off the rejected ones lack; one prompt is longer than block_size.
    rows = [{"prompt": f"What does {n} sell?", "chosen": f" {n} sells apples. Bye!", "rejected": f" {n} sells pears."}
            for n in NAMES]
    if long_prompt:
        rows[3]["prompt"] = " ".join(["Tell me"] * 40) + rows[3]["prompt"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _flags(tmp, model, train):
    return ["--model.model_name_or_path", str(model), "--data.train_files", str(train), "--data.block_size", "64",
            "--data.batch_size", "4", "--data.val_fraction", "0.25", "--data.cache_dir", str(tmp / "cache"),
            "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--samples.prompts", "[]"]


# Early stopping and the best checkpoint on a preference metric. No validation can beat the first by a
# min_delta of 2 (an accuracy lies in [0, 1]): with patience 1 the second validation stops the run.
ON_ACCURACY = ["--early_stopping.monitor", "val_rewards/accuracies", "--early_stopping.mode", "max",
               "--early_stopping.min_delta", "2", "--early_stopping.patience", "1",
               "--checkpoint.monitor", "val_rewards/accuracies", "--checkpoint.mode", "max"]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    model = save_tiny_gpt2(tmp / "model", QUICKSTART / "tokenizer")
    flags = _flags(tmp, model, _pairs(tmp / "pairs.jsonl"))
    # 3 steps an epoch, a validation at each epoch's second: steps 2 and 5, where early stopping ends a run
    # of at most 6 steps.
    code, out, err = fit_in_process(tmp / "run", *flags, *DPO, *ON_ACCURACY, "--trainer.max_steps", "6")
    return dict(tmp=tmp, model=model, flags=flags, code=code, err=err, run=tmp / "run")


def test_fit_runs_dpo_and_says_what_it_read(dpo_run):
    assert dpo_run["code"] == 0, dpo_run["err"][-3000:]
    err = dpo_run["err"]
    # 16 records, a quarter held out for validation: 12 training pairs.
    assert "data: preference (standard) (data.format auto: by extension and first record), 16 record(s) -> " \
           "12 training pair(s)" in err
    cut = [line for line in err.splitlines() if "were cut to block_size" in line]
    assert cut == ["lit_lora: data: 1 of 16 pairs were cut to block_size 64: prompt from the left, then completions"]
    # The memory estimate counts the pair and the reference pass.
    assert "lit_lora: peak training memory, estimated: " in err
    assert "(batch 4 x block 64, 32-true, gradient checkpointing on; DPO: 2 sequences per row + reference pass)" in err


def test_rewards_are_logged_and_the_pairs_are_learned(dpo_run):
    logs = str(dpo_run["run"] / "lightning_logs")
    val_loss = dict(scalars(logs, "val_loss"))
    # The policy starts as the reference (LoRA's B is zero): every reward is 0 and the DPO loss log 2.
    assert val_loss[0] == pytest.approx(math.log(2), abs=1e-5)
    assert min(v for s, v in val_loss.items() if s > 0) < math.log(2) - 0.05
    accuracies = [v for _, v in scalars(logs, "val_rewards/accuracies")]
    assert accuracies and accuracies[-1] > 0.5
    margins = [v for _, v in scalars(logs, "train_rewards/margins")]
    assert len(margins) == 5 and margins[-1] > margins[0]
    for tag in ("train_loss", "train_rewards/chosen", "train_logps/rejected", "val_rewards/margins"):
        assert scalars(logs, tag), tag
    # Throughput counts the pairs: each step's tokens (chosen and rejected) per pair, at least a prompt's.
    tokens, samples = scalars(logs, "throughput/tokens_per_sec"), scalars(logs, "throughput/samples_per_sec")
    assert len(tokens) == len(samples) == 5 and all(t / s > 10 for (_, t), (_, s) in zip(tokens, samples))


def test_early_stopping_and_the_best_checkpoint_follow_a_preference_metric(dpo_run):
    accuracies = scalars(str(dpo_run["run"] / "lightning_logs"), "val_rewards/accuracies")
    assert [step for step, _ in accuracies] == [1, 4]  # after steps 2 and 5 (batch indices, as Lightning logs)
    saved = torch.load(checkpoints_dir(dpo_run["run"]) / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 5  # stopped before max_steps 6
    states = {k.split("{")[0]: v for k, v in saved["callbacks"].items()}
    assert "'monitor': 'val_rewards/accuracies', 'mode': 'max'" in next(k for k in saved["callbacks"]
                                                                        if k.startswith("EarlyStopping"))
    assert states["EarlyStopping"]["wait_count"] == 1
    assert float(states["EarlyStopping"]["best_score"]) == pytest.approx(accuracies[0][1])
    best_index, best = max(accuracies, key=lambda logged: logged[1])  # the first of equals, as the checkpoint keeps
    assert float(states["RunCheckpoint"]["best_model_score"]) == pytest.approx(best)
    best_step = {1: 2, 4: 5}[best_index]  # logged at the batch index, saved under the step count
    assert states["RunCheckpoint"]["best_model_path"].split("/")[-1].startswith(f"step{best_step:06d}-")


def test_checkpoint_is_lora_only_and_the_adapter_generates(dpo_run):
    ckpt = checkpoints_dir(dpo_run["run"]) / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])
    objective = saved["hyper_parameters"]["objective"]
    assert objective["class_path"] == "lit_lora.objectives.preference.Preference"
    assert objective["init_args"]["beta"] == 0.1 and objective["init_args"]["loss_type"] == "sigmoid"
    tmp = dpo_run["tmp"]
    cli_output(tmp, "export", "--ckpt_path", str(ckpt), "--output_dir", str(tmp / "adapter"))
    assert (tmp / "adapter" / "adapter_model.safetensors").is_file()
    out = cli_output(tmp, "generate", "--adapter_path", str(tmp / "adapter"), "--prompt", "What does Ann sell?",
                     "--max_new_tokens", "4", "--temperature", "0")
    assert out.startswith("What does Ann sell?")


def test_a_dpo_run_resumed_mid_epoch_repeats_the_same_losses(dpo_run):
    # 12 training pairs, 4 a step in two micro-batches of 2: 3 steps an epoch, so step 2 is mid-epoch and
    # the resumed run crosses into a reshuffled second epoch; each micro-batch's loss is divided by its
    # step's pair count.
    tmp = dpo_run["tmp"]
    saving = ["--data.batch_size", "2", "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "6",
              "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1", "--checkpoint.monitor", "null",
              "--checkpoint.filename", "step{step:03d}"]
    code, _, err = fit_in_process(tmp / "full", *dpo_run["flags"], *DPO, *saving)
    assert code == 0, err[-3000:]
    resumed = checkpoints_dir(tmp / "resumed")
    resumed.mkdir(parents=True)
    shutil.copy(checkpoints_dir(tmp / "full") / "step002.ckpt", resumed / "copy.ckpt")
    code, _, err = fit_in_process(tmp / "resumed", *dpo_run["flags"], *DPO, *saving,
                                  "--ckpt_path", str(resumed / "copy.ckpt"))
    assert code == 0, err[-3000:]
    assert_resume_repeats(tmp / "full", tmp / "resumed", 2, "step006.ckpt")
    full = dict(scalars(str(tmp / "full" / "lightning_logs"), "train_rewards/margins"))
    again = dict(scalars(str(tmp / "resumed" / "lightning_logs"), "train_rewards/margins"))
    assert sorted(again) == [s for s in sorted(full) if s >= 2] and len(again) == 4
    assert max(abs(full[s] - again[s]) for s in again) <= 1e-6


def test_precomputed_reference_logs_the_same_numbers_and_is_reused(dpo_run):
    # The reference runs without dropout either way, so log-probs computed once before training give the
    # numbers that a reference pass at each step gave to the run above (whose base has dropout).
    tmp, precompute = dpo_run["tmp"], ["--reference.precompute_ref_log_probs", "true"]
    tags = ("train_loss", "train_rewards/margins", "train_logps/chosen", "val_loss", "val_rewards/margins",
            "val_rewards/accuracies")
    logged = {}
    for name, extra in (("precomputed", [*ON_ACCURACY, "--trainer.max_steps", "6"]),
                        ("reused", ["--trainer.max_steps", "1"])):
        code, _, err = fit_in_process(tmp / name, *dpo_run["flags"], *DPO, *precompute, *extra)
        assert code == 0, err[-3000:]
        logged[name] = (err, {tag: dict(scalars(str(tmp / name / "lightning_logs"), tag)) for tag in tags})
    assert "reference log-probs: computed for 12 train / 4 val pairs in " in logged["precomputed"][0]
    assert "gradient checkpointing on; DPO: 2 sequences per row, no reference pass)" in logged["precomputed"][0]
    assert "reference log-probs: reused from cache for 12 train / 4 val pairs (cached in " in logged["reused"][0]
    assert "reference log-probs" not in dpo_run["err"]
    each_step = {tag: dict(scalars(str(dpo_run["run"] / "lightning_logs"), tag)) for tag in tags}
    for name, (_, got) in logged.items():
        for tag in tags:
            want = each_step[tag] if name == "precomputed" else {s: each_step[tag][s] for s in got[tag]}
            assert want and sorted(got[tag]) == sorted(want) or name == "reused" and tag.startswith("val"), (name, tag)
            # float32 sums: log-probabilities of about -100 agree to 1e-6 relative
            assert all(abs(got[tag][s] - want[s]) <= 1e-6 * max(1.0, abs(want[s])) for s in want), (name, tag)


def test_a_pair_whose_answers_are_equal_is_one_line_naming_file_and_line(dpo_run):
    tmp = dpo_run["tmp"]
    bad = _pairs(tmp / "bad.jsonl", long_prompt=False)
    lines = bad.read_text().splitlines()
    lines[4] = json.dumps({"prompt": "Hi", "chosen": " same", "rejected": " same"})
    bad.write_text("\n".join(lines) + "\n")
    err = cli_output(tmp, "fit", *_flags(tmp, dpo_run["model"], bad), *DPO, code=2)
    assert err.strip() == f"lit_lora: error: {bad}:5: 'chosen' and 'rejected' are the same; a pair must differ"


def test_sft_objective_on_pairs_is_one_line_before_any_step(dpo_run):
    tmp = dpo_run["tmp"]
    err = cli_output(tmp, "fit", *_flags(tmp, dpo_run["model"], tmp / "pairs.jsonl"), code=2)
    assert err.startswith("lit_lora: error: the SupervisedNll objective needs batches with input_ids, labels; "
                          "the data gave chosen_attention_mask")
    assert "(data.format preference)" in err and len(err.strip().splitlines()) == 1


def test_preview_shows_chosen_and_rejected_with_their_counted_spans(dpo_run):
    out = cli_output(dpo_run["tmp"], "preview", *dpo_run["flags"], "--num_examples", "1")
    shown = out.splitlines()
    assert shown[0].startswith("=== training sequence 0, chosen (") and shown[2].startswith(
        "=== training sequence 0, rejected (")
    # The prompt is shown, not counted; the answer and its EOS are counted.
    assert shown[1].startswith("What does ") and shown[1].endswith(" sells apples. Bye!<|endoftext|>]]")
    assert shown[3].endswith(" sells pears.<|endoftext|>]]") and shown[3].split("[[")[0] == shown[1].split("[[")[0]


def test_an_init_arg_the_objective_does_not_take_is_one_line(dpo_run):
    tmp = dpo_run["tmp"]
    err = cli_output(tmp, "fit", *_flags(tmp, dpo_run["model"], tmp / "pairs.jsonl"), *DPO,
                     "--model.objective.init_args.loss_type", "dpo", code=2)  # TRL calls DPO's loss "sigmoid"
    # The parser hands over what it kept of the init_args, without the class path.
    head, _, tail = err.strip().partition("}: ")
    assert head.startswith("lit_lora: error: model.objective={") and "'loss_type': 'dpo'" in head
    assert tail == ("no class_path, or init_args the class does not take (a misspelt name, or a value outside its "
                    "choices; `fit --model.objective.help CLASS` lists them)")
