"""Tokenizing a text file in chunks gives exactly the tokens of the whole file (data/cuts.py), for two
tokenizers, on text with blank lines, CRLF and multi-byte characters at the chunk boundaries, and memory
stays bounded for files with no line break at all."""

from __future__ import annotations

import pytest

import lit_lora.data.files as files
from lit_lora.data.corpus import build_split
from lit_lora.data.cuts import agrees, choose_cut
from lit_lora.data.files import file_fingerprint, read_text_rows
from lit_lora.pretrained.hub import load_tokenizer
from tests.conftest import QUICKSTART, SHARED_DATA

# Boundaries the old cut rule got wrong ("!\n\n" + "S": apart, GPT-2 makes the trailing "\n\n" one token),
# CRLF line ends, blank lines, and Hangul and emoji right at line starts.
TRICKY = "".join(
    f"Speak{'!' * (i % 3)}\n\nSecond {i}.\r\n\r\n한국어 문장 {i}\n\n😀 smile\n  indented {i}\n" for i in range(60)
)


def _tokenizers(gpt2_dir):
    return {"gpt2": load_tokenizer(str(gpt2_dir)), "quickstart": load_tokenizer(str(QUICKSTART / "tokenizer"))}


@pytest.fixture(scope="module")
def tokenizers():
    gpt2 = SHARED_DATA / "gpt2-tokenizer"
    if not gpt2.is_dir():
        pytest.skip("../shared/data/gpt2-tokenizer is not present")
    return _tokenizers(gpt2)


@pytest.mark.parametrize("name", ["gpt2", "quickstart"])
@pytest.mark.parametrize("chunk", [48, 97, 256])
def test_chunked_tokens_equal_the_whole_file(tmp_path, monkeypatch, tokenizers, name, chunk):
    monkeypatch.setattr(files, "CHUNK_BYTES", chunk)  # hundreds of boundaries in a few KB
    tok = tokenizers[name]
    src = tmp_path / "t.txt"
    src.write_bytes(TRICKY.encode("utf-8"))
    rows = list(read_text_rows(file_fingerprint([str(src)]), tok))
    assert len(rows) >= len(TRICKY.encode()) // chunk // 2 and all(r["cut_checked"] for r in rows)
    assert "".join(r["text"] for r in rows) == TRICKY  # newline="" semantics: CR LF kept as they are
    chunked = [i for r in rows for i in tok(r["text"], add_special_tokens=False)["input_ids"]]
    assert chunked == tok(TRICKY, add_special_tokens=False)["input_ids"]
    # Two tokenizing processes: their two Arrow files are packed as one stream (no tokens lost between them).
    blocks = build_split([str(src)], "text", tok, block_size=16, cache_dir=str(tmp_path / "c"), num_proc=2)
    packed = [i for b in blocks["input_ids"] for i in b]
    assert packed == (chunked + [tok.eos_token_id])[: len(packed)] and len(packed) == len(chunked) // 16 * 16


def test_the_old_cut_is_refused_where_gpt2_joins_the_blank_line(tokenizers):
    rest = b"Second Citizen: we are accounted poor citizens."
    buf = b"Speak!\n\n" + rest
    old_cut = buf.index(b"S", 1)  # after "\n\n", before "S": the old rule's choice
    assert not agrees(tokenizers["gpt2"], buf, old_cut)
    assert agrees(tokenizers["gpt2"], b"Speak!\n" + rest, len(b"Speak!\n"))


def test_a_file_without_line_breaks_is_cut_into_bounded_rows(tmp_path, monkeypatch, tokenizers):
    monkeypatch.setattr(files, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(files, "MAX_ROW_BYTES", 4096)
    tok = tokenizers["gpt2"]
    text = "word " * 3000 + "x" * 9000  # spaces for a while, then 9 KB with nowhere safe to cut
    src = tmp_path / "one-line.txt"
    src.write_text(text, encoding="utf-8")
    rows = list(read_text_rows(file_fingerprint([str(src)]), tok))
    assert "".join(r["text"] for r in rows) == text
    assert max(len(r["text"].encode()) for r in rows) <= 4096 + 1024
    assert not all(r["cut_checked"] for r in rows)  # the stretch of x's was cut anyway, and that is counted
    spaced = [r for r in rows if r["text"].startswith(" word") or r["text"].startswith("word")]
    assert len(spaced) > 3 and all(r["cut_checked"] for r in spaced[:-1])


def test_carriage_return_only_line_ends_are_cut_too(tmp_path, monkeypatch, tokenizers):
    monkeypatch.setattr(files, "CHUNK_BYTES", 64)
    text = "".join(f"line {i}\r" for i in range(200))
    src = tmp_path / "mac.txt"
    src.write_bytes(text.encode())
    rows = list(read_text_rows(file_fingerprint([str(src)]), tokenizers["gpt2"]))
    assert len(rows) > 10 and all(r["cut_checked"] for r in rows)
    assert choose_cut(b"abc", None, force=False) == (-1, False)
