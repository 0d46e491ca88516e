"""Bad data files are one line naming the file, the line and what was expected, for every encoding and
shape of file; a byte-order mark is not an error; prompts files follow the same rules."""

from __future__ import annotations

import json
import re

import pytest

from lit_lora.cli import main
from lit_lora.data import LitLoraData
from lit_lora.errors import LitLoraError
from lit_lora.generation.prompts import read_prompts

GOOD = '{"text": "fine line of text"}\n'
ARRAY = r"d.json:1: this is a JSON array; JSON Lines is expected"
CASES = {  # name: (file name, content, the one line expected)
    "jsonl-first-line-not-utf8": ("d.jsonl", b'{"text": "caf\xe9"}\n',
                                  r"d.jsonl:1: not UTF-8: invalid byte 0xe9 at column 14"),
    "bad-json-after-blank-lines": ("d.jsonl", b"\n\nnot json\n", r"d.jsonl:3: line is not valid JSON"),
    "bad-byte-on-line-300": ("d.jsonl", GOOD.encode() * 299 + b'{"text": "\xff"}\n',
                             r"d.jsonl:300: not UTF-8: invalid byte 0xff at column 11"),
    "text-bad-byte-on-line-300": ("d.txt", b"a line\n" * 299 + b"bad \xfe\n",
                                  r"d.txt:300: not UTF-8: invalid byte 0xfe at byte offset 2097"),
    "json-array": ("d.json", json.dumps([{"text": "a"}, {"text": "b"}]).encode(), ARRAY),
    "json-array-over-lines": ("d.json", b'[\n  {"text": "a"}\n]\n', ARRAY),
    "a-folder": ("folder", None, r"data.train_files: '.*folder' is a folder; give files or a glob such as '.*/\*.txt'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_files_are_one_line_naming_file_and_line(tmp_path, tiny_model_dir, case):
    name, content, message = CASES[case]
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(LitLoraError, match=message) as err:
        LitLoraData(train_files=str(path), tokenizer_name_or_path=str(tiny_model_dir), block_size=4,
                    cache_dir=str(tmp_path / "c")).setup("fit")
    assert "\n" not in str(err.value)


def test_the_cli_prints_the_same_line(in_tmp, tiny_model_dir, capsys):
    (in_tmp / "d.jsonl").write_bytes(b"\n\nnot json\n")
    assert main(["fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.train_files",
                 str(in_tmp / "d.jsonl"), "--data.cache_dir", str(in_tmp / "c"), "--data.block_size", "4"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_lora:")]
    assert len(err) == 1 and re.search(r"d.jsonl:3: line is not valid JSON", err[0]), err


def test_a_byte_order_mark_is_not_text(tmp_path, tiny_model_dir):
    jsonl, text = tmp_path / "bom.jsonl", tmp_path / "bom.txt"
    jsonl.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() * 40)
    text.write_bytes(b"\xef\xbb\xbf" + b"plain words here\n" * 40)
    for path in (jsonl, text):
        dm = LitLoraData(train_files=str(path), tokenizer_name_or_path=str(tiny_model_dir), block_size=4,
                         val_fraction=0, cache_dir=str(tmp_path / "c"))
        dm.setup("fit")
        first = dm.tokenizer.decode(dm.train_ds[0]["input_ids"])
        assert "\ufeff" not in first and first.startswith(("fine", "plain")), first


def test_prompts_files_follow_the_same_rules(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfHello\r\n\r\nWorld\r\n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["Hello", "World"]
    (tmp_path / "p.jsonl").write_bytes(b'\n{"prompt": "a"}\n{"prompt": "\xff"}\n')
    with pytest.raises(LitLoraError, match=r"p.jsonl:3: not UTF-8: invalid byte 0xff"):
        read_prompts(str(tmp_path / "p.jsonl"))
