"""Tokenizers of the families we name: a tokenizer without a pad token pads with EOS and says so; one that adds
BOS puts it before each document and each prompt, never inside one."""

from __future__ import annotations

import json

import pytest

from tests.conftest import QUICKSTART
from tests.helpers import bos_tokenizer_dir


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory):
    from lit_lora.pretrained.hub import load_tokenizer

    return load_tokenizer(str(bos_tokenizer_dir(tmp_path_factory.mktemp("bos-tokenizer"))))


def test_a_tokenizer_without_pad_token_pads_with_eos_and_says_so(tmp_path, capsys):
    from lit_lora.pretrained.hub import load_tokenizer

    tok = load_tokenizer(str(bos_tokenizer_dir(tmp_path / "tok")))
    assert tok.pad_token_id == tok.eos_token_id
    assert capsys.readouterr().err == (f"lit_lora: tokenizer {tmp_path / 'tok'} has no pad token; padding with its "
                                       "EOS token '<|endoftext|>' (padding is masked out of attention and loss)\n")


def test_bos_starts_each_document_and_each_prompt_never_inside_one(tmp_path, bos_tokenizer, monkeypatch):
    from lit_lora.data import corpus
    from lit_lora.pretrained.hub import bos_prefix

    bos, eos = bos_tokenizer.bos_token_id, bos_tokenizer.eos_token_id
    assert bos_prefix(bos_tokenizer) == [bos] and bos_tokenizer("a")["input_ids"][0] == bos
    # Two files (two documents), the first cut into several rows: BOS before each document only.
    monkeypatch.setattr(corpus, "ROWS_PER_BATCH", 2)
    one, two = tmp_path / "a.txt", tmp_path / "b.txt"
    one.write_text((QUICKSTART / "train.txt").read_text()[:5_000])
    two.write_text("A second document.\n")
    monkeypatch.setattr("lit_lora.data.files.CHUNK_BYTES", 1_000)  # rows of ~1 KB: the first file is 5 rows
    blocks = corpus.build_split([str(one), str(two)], "text", bos_tokenizer, 16, str(tmp_path / "cache"))
    stream = [t for row in blocks["input_ids"] for t in row]
    alone = [bos_tokenizer(p.read_text(), add_special_tokens=False)["input_ids"] for p in (one, two)]
    expected = [bos] + alone[0] + [eos] + [bos] + alone[1] + [eos]
    assert stream == expected[: len(stream)] and stream.count(bos) == expected[: len(stream)].count(bos) == 2
    # Prompt/completion: [BOS] prompt completion [EOS]; BOS is not trained on, nor put before the completion.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Q: hi", "completion": " A: hello"}) + "\n")
    row = corpus.build_split([str(pairs)], "prompt_completion", bos_tokenizer, 64, str(tmp_path / "cache"))[0]
    p = bos_tokenizer("Q: hi", add_special_tokens=False)["input_ids"]
    c = bos_tokenizer(" A: hello", add_special_tokens=False)["input_ids"] + [eos]
    assert row["input_ids"] == [bos] + p + c and row["labels"] == [-100] * (1 + len(p)) + c
    # Cut to the smallest block: BOS and one completion token, never longer than the block.
    short = corpus.build_split([str(pairs)], "prompt_completion", bos_tokenizer, 2, str(tmp_path / "cache"))[0]
    assert short["input_ids"] == [bos, c[0]] and short["labels"] == [-100, c[0]]
