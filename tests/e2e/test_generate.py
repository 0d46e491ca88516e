"""Using the fine-tuned model: `generate` from a checkpoint / exported adapter / merged folder, `validate` and
`test` perplexity checked against a plain loop, and `predict` to JSONL.

One short fit (shared, tests/conftest.py) gives a checkpoint whose LoRA weights are trained (lora_B != 0), so an adapter
that silently does nothing cannot pass.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_lora.cli import main
from tests.helpers import run_cli

PROMPTS = ["The king", "", "To be or not to be, that is the question: whether", "O"]

# Prompt/completion pairs of very different lengths: with batch_size 3 the batches hold very different
# numbers of target tokens, so a mean of per-batch losses is not the split's token-weighted loss.
RAGGED = [
    ("Q: first? A:", " yes"),
    ("Q: second one, a little longer? A:", " no, and here the answer goes on for a good many words indeed"),
    ("Q:", " a"),
    ("Tell me a story.", " Once upon a time there was a king who had three daughters and one small dog"),
    ("Hi", " there, friend; how have you been all this long winter?"),
    ("Q: x? A:", " y"),
    ("Summarise: the cat sat on the mat.", " A cat sat."),
]


def _write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared 2-core machine two OpenMP threads
    waiting on each other made this file 2-3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(trained_run):
    """The shared short fit (tests/conftest.py): its last.ckpt, the folder it ran in, its base model."""
    return trained_run


@pytest.fixture(scope="module")
def exported(trained):
    """The checkpoint as a PEFT adapter folder (`export`) and as a merged model folder (`merge`)."""
    adapter, merged = trained.dir / "adapter-out", trained.dir / "merged-out"
    assert main(["export", "--ckpt_path", str(trained.ckpt), "--output_dir", str(adapter)]) == 0
    assert main(["merge", "--ckpt_path", str(trained.ckpt), "--output_dir", str(merged)]) == 0
    return SimpleNamespace(adapter=adapter, merged=merged)


@pytest.fixture(scope="module")
def ckpt_model(trained):
    """(model, tokenizer) of the checkpoint, loaded once for the tests that call the generation API directly."""
    from lit_lora.loading import load_generation_model

    return load_generation_model(ckpt_path=str(trained.ckpt))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _generate(tmp: Path, name: str, source: list[str], *extra: str, prompts=PROMPTS) -> list[dict]:
    out = tmp / f"{name}.jsonl"
    args = ["generate", *source, "--max_new_tokens", "12", "--output", str(out), "--device", "cpu", *extra]
    for p in prompts:
        args += ["--prompt", p]
    assert main(args) == 0
    return _read_jsonl(out)


# -- the adapter is real ------------------------------------------------------------------------------------


def test_trained_adapter_changes_the_logits(trained):
    from transformers import AutoModelForCausalLM

    from lit_lora.loading import module_from_checkpoint

    module = module_from_checkpoint(str(trained.ckpt)).module
    assert any(float(p.detach().abs().max()) > 0 for n, p in module.model.named_parameters() if "lora_B" in n)
    base = AutoModelForCausalLM.from_pretrained(trained.base).eval()
    ids = torch.arange(1, 20)[None]
    assert float((_logits(module.model, ids) - _logits(base, ids)).abs().max()) > 1e-3


def test_every_source_loads_the_same_model(trained, exported):
    from transformers import AutoModelForCausalLM

    from lit_lora.loading import load_generation_model

    ids = torch.arange(1, 20)[None]
    ref, _ = load_generation_model(ckpt_path=str(trained.ckpt))
    adapter, _ = load_generation_model(adapter_path=str(exported.adapter))
    merged, _ = load_generation_model(model_dir=str(exported.merged))
    base_alone, _ = load_generation_model(model_name_or_path=str(trained.base))
    base = AutoModelForCausalLM.from_pretrained(trained.base).eval()
    expected = _logits(ref, ids)
    torch.testing.assert_close(_logits(adapter, ids), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(merged, ids), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(_logits(base_alone, ids), _logits(base, ids), rtol=0, atol=0)
    assert float((expected - _logits(base, ids)).abs().max()) > 1e-3


# -- generate -------------------------------------------------------------------------------------------------


def test_greedy_text_is_the_same_from_checkpoint_adapter_and_merged(trained, exported, tmp_path):
    greedy = ("--temperature", "0")
    from_ckpt = _generate(tmp_path, "ckpt", ["--ckpt_path", str(trained.ckpt)], *greedy)
    from_adapter = _generate(tmp_path, "adapter", ["--adapter_path", str(exported.adapter)], *greedy)
    from_merged = _generate(tmp_path, "merged", ["--model_dir", str(exported.merged)], *greedy)
    assert [r["prompt"] for r in from_ckpt] == PROMPTS
    assert [r["id"] for r in from_ckpt] == list(range(len(PROMPTS)))
    assert any(r["completion"] for r in from_ckpt)
    assert from_adapter == from_ckpt
    assert from_merged == from_ckpt


def test_adapter_on_an_overridden_base_with_other_weights_is_refused(trained, exported, tmp_path, capsys):
    from tests.conftest import QUICKSTART, save_tiny_gpt2

    other = save_tiny_gpt2(tmp_path / "other", QUICKSTART / "tokenizer", seed=1)
    code = main(["generate", "--adapter_path", str(exported.adapter), "--model.model_name_or_path", str(other),
                 "--prompt", "x"])
    assert code == 2
    assert "base model's weights differ" in capsys.readouterr().err


def test_adapter_of_a_random_init_base_is_rebuilt_from_its_seed(tmp_path):
    """The quickstart's case: no base weights on disk, only model_config + the run's seed in lit_lora.json."""
    from lit_lora.lora.export import export_adapter
    from lit_lora.loading import load_generation_model
    from lit_lora.training.module import LitLora
    from tests.conftest import QUICKSTART, TINY_SHAPE

    torch.manual_seed(5)
    module = LitLora(model_name_or_path="random-init", model_config=dict(TINY_SHAPE, vocab_size=512),
                     tokenizer_name_or_path=str(QUICKSTART / "tokenizer"), block_size=32, gradient_checkpointing=False)
    for name, param in module.model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)  # a "trained" adapter
    export_adapter(module.eval(), str(tmp_path / "adapter"), checkpoint={"lit_lora": {"seed": 5}})
    model, _ = load_generation_model(adapter_path=str(tmp_path / "adapter"))
    ids = torch.arange(1, 20)[None]
    torch.testing.assert_close(_logits(model, ids), _logits(module.model, ids), rtol=0, atol=1e-5)


def test_sampling_with_the_same_seed_gives_the_same_text(ckpt_model):
    from lit_lora.generation.prompts import generate_records
    from lit_lora.generation.settings import GenerationSettings

    def sample(seed: int) -> list[dict]:
        settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=0, num_return_sequences=2, seed=seed)
        return list(generate_records(*ckpt_model, PROMPTS, settings))

    first, again, other = sample(7), sample(7), sample(8)
    assert len(first) == 2 * len(PROMPTS) and [r["sample"] for r in first[:2]] == [0, 1]
    assert first == again
    assert [r["completion"] for r in other] != [r["completion"] for r in first]


def test_batched_greedy_equals_one_prompt_at_a_time(ckpt_model):
    from lit_lora.generation.prompts import generate_records
    from lit_lora.generation.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=16, temperature=0)
    batched = list(generate_records(*ckpt_model, PROMPTS, settings, batch_size=4))
    single = list(generate_records(*ckpt_model, PROMPTS, settings, batch_size=1))
    assert batched == single


def test_ctrl_c_after_a_streamed_prompt_ends_its_line(trained, capsys, monkeypatch):
    def interrupted(self, text, stream_end=False):
        raise KeyboardInterrupt  # the user's Ctrl-C while the reply streams

    monkeypatch.setattr("transformers.TextStreamer.on_finalized_text", interrupted)
    assert main(["generate", "--ckpt_path", str(trained.ckpt), "--prompt", "The king", "--max_new_tokens", "4"]) == 130
    captured = capsys.readouterr()
    assert captured.out == "The king\n"  # the error line below starts a line of its own on a terminal
    assert captured.err.splitlines() == ["lit_lora: interrupted (Ctrl-C) before finishing; nothing was saved"]


def test_single_prompt_streams_to_the_terminal_and_notes_go_to_stderr(trained, tmp_path, capsys):
    src = ["--ckpt_path", str(trained.ckpt), "--temperature", "0"]
    record = _generate(tmp_path, "one", src, prompts=["The king"])[0]
    assert "lit_lora: wrote 1 completion(s) to " in capsys.readouterr().err
    assert main(["generate", *src, "--max_new_tokens", "12", "--prompt", "The king"]) == 0
    assert capsys.readouterr().out == record["prompt"] + record["completion"] + "\n"  # `> out.txt`: the text alone


def test_greedy_generation_runs_in_bfloat16_on_cpu(trained):
    from lit_lora.generation.prompts import generate_records
    from lit_lora.generation.settings import GenerationSettings
    from lit_lora.loading import load_generation_model

    model, tokenizer = load_generation_model(ckpt_path=str(trained.ckpt), dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    records = list(generate_records(model, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=12, temperature=0)))
    assert len(records) == len(PROMPTS) and any(r["completion"] for r in records)


def test_prompts_are_left_padded_and_long_prompts_keep_their_end(ckpt_model, capsys):
    from lit_lora.generation.decode import generate_ids
    from lit_lora.generation.prompts import encode_prompts
    from lit_lora.generation.settings import GenerationSettings

    model, tokenizer = ckpt_model
    enc = encode_prompts(tokenizer, ["The king", ""])
    assert enc["attention_mask"][1].tolist() == [0] * (enc["input_ids"].shape[1] - 1) + [1]  # "" is EOS alone
    assert enc["input_ids"][1, -1] == tokenizer.eos_token_id
    long = encode_prompts(tokenizer, ["word " * 300])  # > the tiny model's 128 positions
    settings = GenerationSettings(temperature=0, max_new_tokens=8)
    tokens = generate_ids(model, long["input_ids"], long["attention_mask"], settings, tokenizer.eos_token_id)
    assert tokens.shape[0] == 1 and 1 <= tokens.shape[1] <= 8
    assert "keep their last 120" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "x"], "no model"),
        (["--model_dir", "a", "--adapter_path", "b", "--prompt", "x"], "give one model source"),
        (["--model_dir", "nowhere"], "no prompts"),
        (["--model_dir", "nowhere", "--prompt", "x"], "not a transformers model folder"),
        (["--model_dir", "nowhere", "--prompt", "x", "--temperature", "0", "--num_return_sequences", "2"],
         "needs sampling"),
    ],
)
def test_generate_errors_are_one_line(args, message, capsys):
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# -- validate / test: token-weighted perplexity -------------------------------------------------------------


def _plain_loop_nll(model, tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
    """(summed NLL, predicted tokens) per example: completion tokens + EOS, prompt not scored."""
    out = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p + c])
        logp = torch.log_softmax(_logits(model, ids)[0, :-1].double(), dim=-1)
        targets = ids[0, 1:]
        scored = torch.arange(len(p) - 1, ids.shape[1] - 1)  # positions whose next token is a completion token
        out.append((float(-logp[scored, targets[scored]].sum()), len(scored)))
    return out


def _eval_args(sub: str, trained, tmp: Path, val: Path, *extra: str) -> list[str]:
    # No training files: validate and test build only the split they evaluate.
    return [sub, "--model.model_name_or_path", str(trained.base), "--data.val_files", str(val), "--data.batch_size", "3", "--data.block_size", "64",
            "--data.cache_dir", str(tmp / "hf-cache"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


def test_validate_and_test_perplexity_match_a_plain_loop_on_ragged_data(trained, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from lit_lora.loading import module_from_checkpoint
    from lit_lora.pretrained.hub import load_tokenizer

    monkeypatch.chdir(tmp_path)
    val = _write_jsonl(tmp_path / "ragged.jsonl", RAGGED)
    other = _write_jsonl(tmp_path / "other.jsonl", RAGGED[:2])
    tokenizer = load_tokenizer(str(trained.base))
    fine_tuned = module_from_checkpoint(str(trained.ckpt)).module.model
    base = AutoModelForCausalLM.from_pretrained(trained.base).eval()

    def expected(model) -> tuple[float, float]:
        per_example = _plain_loop_nll(model, tokenizer, RAGGED)
        nll, tokens = sum(x for x, _ in per_example), sum(n for _, n in per_example)
        batches = [per_example[i : i + 3] for i in range(0, len(per_example), 3)]  # data.batch_size 3, in order
        assert len({sum(n for _, n in b) for b in batches}) == len(batches)  # ragged: different token counts
        batch_mean = sum(sum(x for x, _ in b) / sum(n for _, n in b) for b in batches) / len(batches)
        return math.exp(nll / tokens), math.exp(batch_mean)

    ppl, wrong = expected(fine_tuned)
    cli = run_cli(_eval_args("validate", trained, tmp_path, val, "--ckpt_path", str(trained.ckpt)))
    val_ppl = float(cli.trainer.callback_metrics["val_ppl"])
    assert val_ppl == pytest.approx(ppl, rel=1e-4)
    assert float(cli.trainer.callback_metrics["val_loss"]) == pytest.approx(math.log(ppl), rel=1e-4)
    assert abs(wrong - ppl) / ppl > 1e-3  # the mean of per-batch losses would be a different number
    assert cli.datamodule.train_ds is None

    # `test` on its own files (the validation files here are others).
    cli = run_cli(_eval_args("test", trained, tmp_path, other, "--data.test_files", str(val),
                             "--ckpt_path", str(trained.ckpt)))
    assert float(cli.trainer.callback_metrics["test_ppl"]) == pytest.approx(ppl, rel=1e-4)

    # Without --ckpt_path: the base model alone (LoRA's B starts at zero), for comparison.
    base_ppl, _ = expected(base)
    cli = run_cli(_eval_args("validate", trained, tmp_path, val))
    assert float(cli.trainer.callback_metrics["val_ppl"]) == pytest.approx(base_ppl, rel=1e-4)
    assert abs(base_ppl - ppl) / ppl > 1e-3


# -- predict ----------------------------------------------------------------------------------------------------


def test_predict_writes_the_same_completions_as_generate(trained, ckpt_model, tmp_path, monkeypatch):
    from lit_lora.generation.prompts import generate_records
    from lit_lora.generation.settings import GenerationSettings

    monkeypatch.chdir(tmp_path)
    prompts_file = tmp_path / "prompts.txt"
    prompts = [p for p in PROMPTS if p]  # a text file cannot hold an empty prompt (blank lines are skipped)
    prompts_file.write_text("\n".join(prompts) + "\n\n", encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    # No training files: predict needs only the model and its prompts.
    run_cli(["predict", "--model.model_name_or_path", str(trained.base), "--data.predict_file", str(prompts_file),
             "--data.batch_size", "2", "--data.block_size", "64", "--model.generation.temperature", "0",
             "--model.generation.max_new_tokens", "12", "--predict_writer.output_file", str(out),
             "--trainer.enable_progress_bar", "false", "--ckpt_path", str(trained.ckpt)])
    predicted = _read_jsonl(out)
    generated = list(generate_records(*ckpt_model, prompts, GenerationSettings(max_new_tokens=12, temperature=0)))
    assert [r["prompt"] for r in predicted] == prompts
    assert predicted == generated
