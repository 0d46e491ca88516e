"""benchmarks/chat_throughput.py compares lit_lora with TRL only if both train the same tokens: TRL's copy of
the built-in template (replies inside `{% generation %}`) must tokenize each conversation to lit_lora's ids,
and its assistant mask (what TRL's `assistant_only_loss` trains) must be lit_lora's labels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_trl_template_trains_the_tokens_lit_lora_trains(tmp_path, gpt2_tokenizer_dir):
    from lit_lora.pretrained.hub import load_tokenizer

    spec = importlib.util.spec_from_file_location("chat_throughput", REPO / "benchmarks" / "chat_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "chats.jsonl"
    chats = bench.skewed_chats(40, seed=0)
    assert sum(len(c["messages"]) > 2 for c in chats) >= 2  # long, multi-turn ones are among them
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    tokenizer = load_tokenizer(str(gpt2_tokenizer_dir))
    ours = bench.lit_lora_rows(path, tokenizer)
    template = bench.trl_template()
    for chat, row in zip(chats, ours):
        # What TRL's tokenize_fn calls for a conversation with assistant_only_loss=True.
        out = tokenizer.apply_chat_template(chat["messages"], chat_template=template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        assert out["input_ids"] == row["input_ids"]
        theirs = [i if m else -100 for i, m in zip(out["input_ids"], out["assistant_masks"])]
        assert theirs == row["labels"]
        # Each reply's EOS trains, in both.
        assert row["labels"].count(tokenizer.eos_token_id) == sum(m["role"] == "assistant" for m in chat["messages"])
