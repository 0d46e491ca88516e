"""The data module: packing, prompt/completion masking, Korean text, the Arrow cache."""

from __future__ import annotations

import json

import pytest
import torch

from lit_lora.data import LitLoraData
from lit_lora.data.batches import Collator
from lit_lora.data.corpus import build_split
from lit_lora.data.files import file_fingerprint, read_text_rows
from lit_lora.errors import LitLoraError
from lit_lora.pretrained.hub import load_tokenizer

KOREAN = (
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.\n"
    "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.\n"
    "한글은 세종대왕이 만든 글자입니다. 안녕하세요! 반갑습니다.\n"
)


def _module(tmp_path, tokenizer_dir, **kw) -> LitLoraData:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    dm = LitLoraData(tokenizer_name_or_path=str(tokenizer_dir), **kw)
    dm.setup("fit")
    return dm


def test_hello_world_uses_real_gpt2_tokenizer(gpt2_tokenizer_dir):
    tok = load_tokenizer(str(gpt2_tokenizer_dir))
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.pad_token_id == tok.eos_token_id == 50256


def test_korean_survives_tokenization_and_packing(tmp_path, gpt2_tokenizer_dir, monkeypatch):
    import lit_lora.data.files as files

    monkeypatch.setattr(files, "CHUNK_BYTES", 64)  # many rows, so blocks straddle row boundaries
    src = tmp_path / "ko.txt"
    src.write_text(KOREAN * 4, encoding="utf-8")
    tok = load_tokenizer(str(gpt2_tokenizer_dir))
    rows = list(read_text_rows(file_fingerprint([str(src)])))
    assert len(rows) > 3 and "".join(r["text"] for r in rows) == KOREAN * 4
    blocks = build_split([str(src)], "text", tok, block_size=16, cache_dir=str(tmp_path / "c"))
    ids = [i for b in blocks["input_ids"] for i in b]
    whole = tok(KOREAN * 4, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # Packing keeps every token in order; only the final partial block is dropped.
    assert len(blocks) == len(whole) // 16 and ids == whole[: len(ids)]
    assert tok.decode(whole) == KOREAN * 4 + "<|endoftext|>"
    # A single block alone may cut a Hangul character's bytes; the concatenation never does.
    assert any("\ufffd" in tok.decode(b) for b in blocks["input_ids"])


def test_packing_carries_remainder_and_separates_documents(tmp_path, gpt2_tokenizer_dir):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one two three four five six seven\n")
    b.write_text("eight nine ten\n")
    tok = load_tokenizer(str(gpt2_tokenizer_dir))
    blocks = build_split([str(a), str(b)], "text", tok, block_size=5, cache_dir=str(tmp_path / "c"))
    flat = [i for blk in blocks["input_ids"] for i in blk]
    expected = (tok(a.read_text())["input_ids"] + [tok.eos_token_id] + tok(b.read_text())["input_ids"]
                + [tok.eos_token_id])
    assert all(len(x) == 5 for x in blocks["input_ids"])
    assert flat == expected[: len(flat)] and len(flat) == len(expected) // 5 * 5
    assert flat.count(tok.eos_token_id) >= 1  # a file is one document: newlines are not boundaries
    assert tok.decode(flat).count("<|endoftext|>") == flat.count(tok.eos_token_id)


def test_prompt_completion_masks_prompt_and_padding_and_truncates(tmp_path, gpt2_tokenizer_dir):
    path = tmp_path / "pc.jsonl"
    rows = [{"prompt": "Q: 2+2?\nA:", "completion": " 4"},
            {"prompt": "Translate: cat\n", "completion": " chat"},
            {"prompt": "Long:", "completion": " word" * 40}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = _module(tmp_path, gpt2_tokenizer_dir, train_files=[str(path)], val_fraction=0.0, block_size=16,
                 batch_size=3, shuffle=False, length_bucketing=False)
    assert dm.data_format == "prompt_completion" and dm.counts["truncated"] == 1
    tok = dm.tokenizer
    batch = next(iter(dm.train_dataloader()))
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    p0 = len(tok(rows[0]["prompt"])["input_ids"])
    assert (labels[0, :p0] == -100).all()
    n0 = int(mask[0].sum())
    assert labels[0, n0 - 1] == tok.eos_token_id  # EOS appended so the model learns to stop
    assert (labels[0, n0:] == -100).all() and (mask[0, n0:] == 0).all()  # padding masked by position
    assert ids.shape[1] == 16 and int(mask[2].sum()) == 16  # truncated to block_size, prompt kept
    assert tok.decode(ids[2][: len(tok(rows[2]["prompt"])["input_ids"])]) == rows[2]["prompt"]


def test_val_fraction_split_is_seeded(tmp_path, tiny_model_dir, shakespeare):
    a = _module(tmp_path, tiny_model_dir, train_files=str(shakespeare), block_size=32, val_fraction=0.1)
    b = _module(tmp_path, tiny_model_dir, train_files=str(shakespeare), block_size=32, val_fraction=0.1)
    assert len(a.val_ds) == len(b.val_ds) > 0 and a.val_ds["input_ids"] == b.val_ds["input_ids"]
    assert len(a.train_ds) + len(a.val_ds) == len(build_split(
        [str(shakespeare)], "text", a.tokenizer, 32, str(tmp_path / "cache")))


def test_the_data_lines_say_whether_text_is_packed(tmp_path, tiny_model_dir):
    path = tmp_path / "docs.jsonl"  # three documents of 20-odd tokens: unpacked, each ends in a short block
    path.write_text("\n".join(json.dumps({"text": f"document number {i} " * 5}) for i in range(3)))
    lines = {packing: _module(tmp_path, tiny_model_dir, train_files=str(path), block_size=16, val_fraction=0,
                              packing=packing).data_lines(4)[-1] for packing in (None, False)}
    assert lines[None].endswith("(tokens / positions of the padded batches, packed into blocks of 16)")
    assert lines[None].startswith("data: packing efficiency 100.0%")
    assert lines[False].startswith("data: padding efficiency ") and "packed" not in lines[False]
    assert lines[False].endswith("(tokens / positions of the padded batches; each document in blocks of 16 of its "
                                 "own (data.packing false), its last one shorter)")


def test_jsonl_text_field(tmp_path, tiny_model_dir):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document number {i} " * 5}) for i in range(20)))
    dm = _module(tmp_path, tiny_model_dir, train_files=[str(path)], text_field="body", block_size=16,
                 val_fraction=0.2)
    assert dm.data_format == "jsonl_text" and len(dm.train_ds) > 0


def test_second_run_reuses_cache_without_tokenizing(tmp_path, tiny_model_dir, shakespeare, monkeypatch):
    import lit_lora.data.corpus as corpus

    _module(tmp_path, tiny_model_dir, train_files=str(shakespeare), block_size=32)
    arrow = set((tmp_path / "cache").rglob("*.arrow"))

    def boom(*a, **k):
        raise AssertionError("the tokenizer was called on a cached corpus")

    from transformers import PreTrainedTokenizerBase

    monkeypatch.setattr(corpus, "_tokenize_text", boom)
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", boom)
    dm = _module(tmp_path, tiny_model_dir, train_files=str(shakespeare), block_size=32)
    assert len(dm.train_ds) > 0
    assert set((tmp_path / "cache").rglob("*.arrow")) == arrow, "a cached run must write no new Arrow files"


def test_collator_stacks_packed_blocks():
    rows = [{"input_ids": [1, 2, 3], "position_ids": [0, 0, 1], "sample_id": 7},
            {"input_ids": [4, 5, 6], "position_ids": [0, 1, 2], "sample_id": 9}]
    out = Collator(0)(rows)
    assert torch.equal(out["input_ids"], torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert out["position_ids"].tolist() == [[0, 0, 1], [0, 1, 2]]
    # A document's first token is not predicted from the end of the one before it.
    assert out["labels"].tolist() == [[-100, -100, 3], [-100, 5, 6]]
    assert out["sample_ids"].tolist() == [7, 9] and "attention_mask" not in out
    # Blocks of one document each keep the model's own positions.
    single = Collator(0)([{"input_ids": [1, 2], "position_ids": [0, 1], "sample_id": 0}])
    assert "position_ids" not in single and single["labels"].tolist() == [[-100, 2]]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"ok text\n\xff\xfe broken", r"not UTF-8: invalid byte 0xff at byte offset 8"),
        (b"short", "shorter than one block of data.block_size=512"),
    ],
)
def test_bad_corpus_errors(tmp_path, tiny_model_dir, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(LitLoraError, match=message):
        _module(tmp_path, tiny_model_dir, train_files=str(path), block_size=512)


def test_missing_file_and_bad_jsonl(tmp_path, tiny_model_dir):
    with pytest.raises(LitLoraError, match=r"data.train_files: no file matches '.*nope\.txt'"):
        _module(tmp_path, tiny_model_dir, train_files=str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(LitLoraError, match=r"bad.jsonl:2: missing string field 'text'"):
        _module(tmp_path, tiny_model_dir, train_files=str(bad))
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(LitLoraError, match=r"bad.jsonl:2: line is not valid JSON"):
        _module(tmp_path, tiny_model_dir, train_files=str(bad))


def _preference_files(tmp_path):
    pairs, kto = tmp_path / "pairs.jsonl", tmp_path / "kto.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q{i}?" + " long" * 20 * (i == 0), "chosen": f" yes {i}",
                                         "rejected": f" no {i}"}) + "\n" for i in range(10)))
    # KTO's records also have `prompt` and `completion`: auto must not read them as prompt/completion.
    kto.write_text("".join(json.dumps({"prompt": f"Q{i}?", "completion": f" a{i}", "label": i % 2 == 0}) + "\n"
                           for i in range(10)))
    return pairs, kto


def test_preference_data_gives_pair_batches_counting_pairs_per_step(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    pairs, _ = _preference_files(tmp_path)
    dm = _module(tmp_path, tiny_model_dir, train_files=str(pairs), block_size=16, val_fraction=0, batch_size=3)
    assert dm.data_format == "preference"
    assert dm.batch_keys() == ["chosen_attention_mask", "chosen_input_ids", "chosen_labels", "rejected_attention_mask",
                               "rejected_input_ids", "rejected_labels", "sample_ids"]
    lines = dm.data_lines(3)
    assert lines[0] == ("data: preference (standard) (data.format auto: by extension and first record), 10 record(s) "
                        "-> 10 training pair(s), the longest 16 tokens (prompt and its longer completion)")
    assert lines[1] == "data: 1 of 10 pairs were cut to block_size 16: prompt from the left, then completions"
    # Two micro-batches of 3 pairs per optimizer step: 10 pairs are steps of 6 and 4 pairs.
    sampler, _ = dm.order.loader_sampler(SimpleNamespace(accumulate_grad_batches=2), 0, 1, 3)
    assert sampler.sampler.lengths is not None  # length-bucketed by the prompt and the longer completion
    assert [total for _, total in sampler] == [6] * 6 + [4] * 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["chosen_input_ids"].shape[0] == 3 and batch["step_target_tokens"].item() == 3


def test_kto_records_are_detected_before_prompt_completion(tmp_path, tiny_model_dir):
    _, kto = _preference_files(tmp_path)
    dm = _module(tmp_path, tiny_model_dir, train_files=str(kto), block_size=32, val_fraction=0, batch_size=4)
    assert dm.data_format == "unpaired_preference"
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].dtype == torch.bool and batch["step_target_tokens"].item() == 4
    assert "kl_input_ids" in batch and dm.data_lines(4)[0].endswith("-> 10 training row(s), the longest 6 tokens "
                                                                    "(prompt and completion)")
    with pytest.raises(LitLoraError, match=r"kto.jsonl: data.format is preference but the first record has fields "
                                           r"\['completion', 'label', 'prompt'\] \(unpaired_preference\)"):
        _module(tmp_path, tiny_model_dir, train_files=str(kto), format="preference")
