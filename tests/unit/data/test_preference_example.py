"""The preference example in examples/preference: the script rewrites the committed files byte for byte, and
they hold what conf/dpo.yaml's rule needs (chosen = rejected + the sign-off, validation prompts unseen)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "preference"


def test_script_rewrites_the_committed_files_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("make_pairs", EXAMPLE / "make_pairs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in EXAMPLE.glob("*.jsonl"))
    assert written == ["kto_train.jsonl", "kto_val.jsonl", "train.jsonl", "val.jsonl"]
    for name in written:
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), name
    read = {name: [json.loads(line) for line in (EXAMPLE / name).read_text(encoding="utf-8").splitlines()]
            for name in written}
    train, val = read["train.jsonl"], read["val.jsonl"]
    assert (len(train), len(val)) == (480, 64)
    assert all(r["chosen"] == r["rejected"] + " Bye!" and "Bye" not in r["rejected"] for r in train + val)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}
    assert len({r["prompt"] for r in val}) == 64
    # KTO's rows: each pair unpaired into a desirable and an undesirable row.
    assert read["kto_val.jsonl"][:2] == [{"prompt": val[0]["prompt"], "completion": val[0]["chosen"], "label": True},
                                         {"prompt": val[0]["prompt"], "completion": val[0]["rejected"], "label": False}]
    assert len(read["kto_train.jsonl"]) == 960
