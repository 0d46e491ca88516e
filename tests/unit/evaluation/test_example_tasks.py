"""The lm-eval tasks shipped in examples/eval: the script rewrites the committed files byte for byte, each
YAML names data files that exist, and lm-eval scores them as intended (a stand-in model that answers a
known share of the questions right gets exactly that share)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from tests.conftest import REPO

EVAL = REPO / "examples" / "eval"
TASKS = ["lit_lora_sequences", "lit_lora_arithmetic"]


def test_script_rewrites_the_committed_files_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tasks", EVAL / "make_tasks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(EVAL) for p in EVAL.rglob("*") if p.is_file() and p.suffix in (".yaml", ".jsonl"))
    assert written == committed
    # Three YAML files, a test and a few-shot split for each example task, the quickstart's test split.
    assert len(written) == 8
    for path in written:
        assert (tmp_path / path).read_bytes() == (EVAL / path).read_bytes(), path


@pytest.mark.parametrize("task", TASKS)
def test_yaml_names_its_splits_and_existing_data_files(task):
    config = yaml.safe_load((EVAL / "tasks" / f"{task}.yaml").read_text(encoding="utf-8"))
    assert config["task"] == task
    assert config["dataset_path"] == "json"
    files = config["dataset_kwargs"]["data_files"]
    assert set(files) == {config["test_split"], config["fewshot_split"]}
    docs = {}
    for split, name in files.items():
        path = REPO / name  # relative to the repository root, where lm-eval must run
        assert path.is_file(), path
        assert path.stat().st_size < 50_000
        docs[split] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(docs["test"]) == 160 and len(docs["fewshot"]) == 20
    key = "query" if task == "lit_lora_sequences" else "question"
    assert not {d[key] for d in docs["test"]} & {d[key] for d in docs["fewshot"]}  # no answer shown in advance
    assert len({d[key] for d in docs["test"]}) == 160


def test_lm_eval_scores_a_stand_in_model_as_its_answers_deserve(monkeypatch):
    """Every third question (doc_id % 3 == 0) is answered wrong and the others right, so both tasks must
    score 2/3 on their first 30 questions; the right generated answer comes with the space after
    "Answer:" and still counts."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    class StandIn(LM):
        def loglikelihood(self, requests):
            out = []
            for r in requests:
                right = r.doc["choices"][r.doc["gold"]]
                wanted = right if r.doc_id % 3 else r.doc["choices"][(r.doc["gold"] + 1) % 4]
                out.append((0.0 if r.args[1].strip() == wanted else -5.0, True))
            return out

        def generate_until(self, requests):
            return [f" {r.doc['answer'] if r.doc_id % 3 else 'seven'}" for r in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    monkeypatch.chdir(REPO)
    manager = TaskManager(include_path=str(EVAL / "tasks"), include_defaults=False)
    results = lm_eval.simple_evaluate(model=StandIn(), tasks=["lit_lora_examples"], task_manager=manager,
                                      limit=30, log_samples=False)["results"]
    assert results["lit_lora_sequences"]["acc,none"] == pytest.approx(2 / 3)
    assert results["lit_lora_arithmetic"]["exact_match,none"] == pytest.approx(2 / 3)
