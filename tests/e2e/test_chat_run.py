"""A chat fine-tune end to end, as docs/data-and-chat.md runs it: fit on conversations, the template
carried into the checkpoint, the exported adapter and the merged model, `generate --chat` from each,
`predict` on conversations, and `preview`."""

from __future__ import annotations

import contextlib
import json
import re
import warnings

import pytest

from lit_lora.generation.chat import PLAIN
from tests.conftest import QUICKSTART
from tests.helpers import cli_output

ROOT = QUICKSTART.parent.parent
QUESTION = [{"role": "user", "content": "What does Fern sell?"}]


@contextlib.contextmanager
def _no_warnings():
    """Fails if a command in it warns (lit_lora's quiet filters, added by main(), go in front of "always").
    In-process only, LightningCLI says args were given instead of sys.argv: that one is left out."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    foreign = [str(w.message)[:120] for w in caught if not str(w.message).startswith("LightningCLI's args parameter")]
    assert foreign == []


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    lines = (ROOT / "examples" / "chat" / "messages.jsonl").read_text(encoding="utf-8").splitlines()[:48]
    (tmp / "chats.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    flags = ["--config", str(ROOT / "conf" / "chat.yaml"), "--model.tokenizer_name_or_path",
             str(QUICKSTART / "tokenizer"), "--data.train_files", str(tmp / "chats.jsonl"),
             "--data.cache_dir", str(tmp / "cache"), "--data.batch_size", "8", "--trainer.max_steps", "6",
             "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false"]
    out = cli_output(tmp, "fit", *flags, notes=True)
    version = tmp / "lightning_logs" / "lit_lora" / "version_0"
    ckpt = version / "checkpoints" / "last.ckpt"
    cli_output(tmp, "merge", "--ckpt_path", str(ckpt), "--output_dir", str(tmp / "merged"))
    return dict(tmp=tmp, flags=flags, out=out, ckpt=ckpt, adapter=version / "adapter", merged=tmp / "merged")


def test_fit_says_what_it_read_and_how_full_its_batches_are(chat_run):
    out = chat_run["out"]
    assert "data: messages (data.format auto: by extension and first record), 48 example(s) -> " in out
    assert "data: chat template plain (built in: the tokenizer has none), train_on assistant" in out
    assert "padding efficiency" in out
    lines = [line for line in out.splitlines() if line.startswith("lit_lora: ")]
    assert lines[0].endswith("% trainable"), "the parameter counts come first, then what the data holds"


def test_the_template_travels_with_checkpoint_adapter_and_merged_model(chat_run):
    import torch
    from transformers import AutoTokenizer

    from lit_lora.generation.chat import render
    from lit_lora.pretrained.hub import load_tokenizer

    ckpt = torch.load(chat_run["ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["lit_lora"]["chat_template"] == PLAIN
    ours = load_tokenizer(str(QUICKSTART / "tokenizer"))
    trained = render(ours, PLAIN, QUESTION + [{"role": "assistant", "content": "Fern sells apples."}])
    prompt = render(ours, PLAIN, QUESTION, generation_prompt=True)
    # Training trains what follows the prompt, so the prompt plain transformers renders must be this one.
    assert trained == prompt + " Fern sells apples." + ours.eos_token + "\n\n"
    from lit_lora.generation.chat import chat_prompt_ids

    for folder in (chat_run["adapter"], chat_run["merged"]):
        theirs = AutoTokenizer.from_pretrained(str(folder))
        assert theirs.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False) == prompt
        # ... and the tokens `generate --chat` feeds the model are the ones transformers' template gives.
        tokens = theirs.apply_chat_template(QUESTION, add_generation_prompt=True)["input_ids"]
        assert chat_prompt_ids(ours, PLAIN, QUESTION) == tokens


def test_generate_chat_prints_the_same_reply_alone_from_each_source(chat_run):
    replies = set()
    for source in (["--ckpt_path", str(chat_run["ckpt"])], ["--adapter_path", str(chat_run["adapter"])],
                   ["--model_dir", str(chat_run["merged"])]):
        out = cli_output(chat_run["tmp"], "generate", *source, "--chat", "--prompt", QUESTION[0]["content"],
                         "--temperature", "0", "--max_new_tokens", "12")
        assert "User:" not in out and "Assistant:" not in out and "<|endoftext|>" not in out
        assert not out.startswith(" "), "the reply is printed as the records hold it"
        replies.add(out.strip())
    assert len(replies) == 1 and replies != {""}


def test_samples_logged_at_validation_are_replies_as_generate_chat_gives_them(chat_run):
    from lit_lora.pretrained.hub import load_tokenizer
    from lit_lora.callbacks.samples import SampleGenerator
    from lit_lora.loading import module_from_checkpoint

    module = module_from_checkpoint(str(chat_run["ckpt"])).module
    tokenizer = load_tokenizer(str(QUICKSTART / "tokenizer"))
    sample = SampleGenerator(prompts=[QUESTION[0]["content"]], max_new_tokens=12, temperature=0)
    reply = sample.complete(module.model, tokenizer, QUESTION[0]["content"], PLAIN)
    out = cli_output(chat_run["tmp"], "generate", "--ckpt_path", str(chat_run["ckpt"]), "--chat", "--prompt",
                     QUESTION[0]["content"], "--temperature", "0", "--max_new_tokens", "12")
    assert reply.strip() == out.strip() and "User:" not in reply


def test_messages_files_go_through_generate_and_predict(chat_run):
    tmp = chat_run["tmp"]
    # A bare message list may come first: it is a conversation, not a whole-file JSON array.
    (tmp / "ask.jsonl").write_text(json.dumps(QUESTION) + "\n" + json.dumps({"messages": QUESTION}) + "\n")
    with _no_warnings():
        cli_output(tmp, "generate", "--ckpt_path", str(chat_run["ckpt"]), "--messages_file", str(tmp / "ask.jsonl"),
                   "--temperature", "0", "--max_new_tokens", "12", "--output", str(tmp / "gen.jsonl"))
        cli_output(tmp, "predict", *chat_run["flags"], "--ckpt_path", str(chat_run["ckpt"]), "--data.predict_file",
                   str(tmp / "ask.jsonl"), "--model.generation.temperature", "0", "--model.generation.max_new_tokens",
                   "12", "--predict_writer.output_file", str(tmp / "pred.jsonl"))
    generated = [json.loads(line) for line in (tmp / "gen.jsonl").read_text().splitlines()]
    predicted = [json.loads(line) for line in (tmp / "pred.jsonl").read_text().splitlines()][:1]
    assert [r["prompt"] for r in generated] == [QUESTION, QUESTION]
    reply = generated[0]["completion"]
    assert reply[0]["role"] == "assistant" and reply == generated[1]["completion"]
    assert predicted[0]["prompt"] == QUESTION and predicted[0]["completion"] == reply


def test_preview_shows_the_trained_spans_and_its_json_is_what_trains(chat_run, capsys):
    tmp = chat_run["tmp"]
    out = cli_output(tmp, "preview", *chat_run["flags"], "--num_examples", "2")
    assert out.count("=== training sequence") == 2
    assert "Assistant:[[ " in out and "<|endoftext|>]]" in out and "[[User" not in out
    lines = cli_output(tmp, "preview", *chat_run["flags"], "--num_examples", "3", "--json").splitlines()
    records = [json.loads(line) for line in lines]
    from lit_lora.generation.chat import render
    from lit_lora.pretrained.hub import load_tokenizer

    tokenizer = load_tokenizer(str(QUICKSTART / "tokenizer"))
    chats = [json.loads(line)["messages"] for line in (tmp / "chats.jsonl").read_text(encoding="utf-8").splitlines()]
    by_text = {render(tokenizer, PLAIN, c): c for c in chats}
    assert len(records) == 3
    for record in records:  # each sequence is one conversation (unpacked), and exactly its replies train
        chat = by_text[record["text"]]
        assert record["trained_text"] == "".join(f" {m['content']}<|endoftext|>" for m in chat
                                                 if m["role"] == "assistant")
    assert set(records[0]) == {"input_ids", "labels", "text", "trained_text"}
    assert len(records[0]["labels"]) == len(records[0]["input_ids"])


def test_a_bad_conversation_stops_fit_with_one_line(chat_run, tmp_path, capsys, monkeypatch):
    from lit_lora.cli import main

    monkeypatch.chdir(tmp_path)  # the run's folders go there, not into the repository

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": QUESTION + [{"role": "bot", "content": "x"}]}) + "\n")
    code = main(["fit", *chat_run["flags"], "--data.train_files", str(bad), "--data.cache_dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (f"lit_lora: error: {bad}:1: message 2 has role 'bot'; expected one of system, user, "
                   "assistant, tool")


ARROWS = ("{% for m in messages %}{{ m.role }}> {{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}"
          "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant>{% endif %}")


def test_a_template_file_is_recorded_and_validate_renders_with_it(chat_run, tmp_path):
    import torch

    template = tmp_path / "arrows.jinja"
    template.write_text(ARROWS)
    flags = [*chat_run["flags"], "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_steps", "3"]
    cli_output(tmp_path, "fit", *flags, "--data.chat_template", str(template))
    ckpt = tmp_path / "lightning_logs" / "lit_lora" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["lit_lora"]
    assert saved["chat_template"] == ARROWS

    with _no_warnings():
        out = cli_output(tmp_path, "validate", *flags, "--ckpt_path", str(ckpt))
    # Without --data.chat_template, validate renders as the checkpoint's run did: its val_loss comes back
    # (measured once with `--data.chat_template plain` instead: 6.2287, not 6.1952).
    assert float(re.search(r"val_loss\s*│\s*([0-9.]+)", out).group(1)) == pytest.approx(saved["val_loss"], abs=1e-6)

