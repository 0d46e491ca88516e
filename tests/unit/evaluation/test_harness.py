"""lm-eval on a model object: the caller's random generators and the model's mode survive it; a missing
lm-eval is a one-line error naming the extra. (Unknown tasks: tests/e2e/test_eval.py.)"""

import json
import random
import sys

import numpy as np
import pytest
import torch

from lit_lora.errors import LitLoraError
from lit_lora.evaluation.harness import evaluate_tasks, require_lm_eval
from lit_lora.evaluation.settings import TaskSettings
from tests.helpers import TOKENIZER

TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tasks")
    rows = [{"question": f"{n} plus one is", "choices": [str(n + 1), str(n + 2)], "label": 0} for n in range(6)]
    (folder / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_choice.yaml").write_text(TASK.format(data=folder / "tiny.jsonl"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=512))
    return model, AutoTokenizer.from_pretrained(TOKENIZER), TaskSettings(tasks="tiny_choice", include_path=str(folder))


def test_evaluation_leaves_the_callers_random_generators_and_the_models_mode_as_they_were(tiny):
    model, tokenizer, settings = tiny
    model.train()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    results = evaluate_tasks(model, tokenizer, settings)
    assert results["results"]["tiny_choice"]["sample_len"] == 6
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # lm-eval seeds all three
    assert model.training


def test_without_lm_eval_the_error_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when it is not installed
    with pytest.raises(LitLoraError, match=r"pip install -e '\.\[eval\]'"):
        require_lm_eval()
