"""Prompts files: text lines and JSONL records, and a bad record named by file and line."""

from __future__ import annotations

import json

import pytest



def test_prompts_file_text_and_jsonl(tmp_path):
    from lit_lora.errors import LitLoraError
    from lit_lora.generation.prompts import read_prompts

    (tmp_path / "p.txt").write_text("first\n\n  \nsecond line\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a\nb"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["first", "second line"]
    assert read_prompts(str(tmp_path / "p.jsonl")) == ["a\nb", ""]
    with pytest.raises(LitLoraError, match="bad.jsonl:1: expected a JSON object with a string 'prompt'"):
        read_prompts(str(tmp_path / "bad.jsonl"))
