"""An exported adapter names its base by hub id where one is recorded, else by the folder it was trained from."""

from __future__ import annotations

import json

from lit_lora.pretrained.hub_id import hub_id


def _folder(path, name_or_path=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **(
        {"_name_or_path": name_or_path} if name_or_path is not None else {})}))
    return str(path)


def test_a_hub_id_is_kept():
    assert hub_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B" and hub_id("gpt2") == "gpt2"


def test_a_local_folder_gives_the_id_it_records(tmp_path):
    # transformers before 5 wrote the id a model was loaded from into the config.json it saved.
    assert hub_id(_folder(tmp_path / "a", "HuggingFaceTB/SmolLM2-135M")) == "HuggingFaceTB/SmolLM2-135M"
    cached = _folder(tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc123")
    assert hub_id(cached) == "Qwen/Qwen2.5-0.5B"


def test_a_local_folder_without_a_recorded_id_is_kept(tmp_path):
    plain = _folder(tmp_path / "plain")
    assert hub_id(plain) == plain
    local = _folder(tmp_path / "local", str(tmp_path / "plain"))  # saved from another folder: a path, not an id
    assert hub_id(local) == local
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("[1, 2]")
    assert hub_id(str(broken)) == str(broken)
