"""TaskSettings: lm-eval's options checked before any model loads, each error one line naming the value."""

import pytest

from lit_lora.errors import LitLoraError
from lit_lora.evaluation.settings import TaskSettings


def test_tasks_are_taken_comma_separated_as_lm_eval_takes_them():
    assert TaskSettings(tasks="a, b,c").tasks == ["a", "b", "c"]
    assert TaskSettings(tasks=["a"]).tasks == ["a"]


@pytest.mark.parametrize("values, message", [
    ({"tasks": []}, "tasks must name at least one lm-eval task, got []"),
    ({"tasks": "a", "include_path": "no/such/folder"}, "include_path 'no/such/folder' is not a folder"),
    ({"tasks": "a", "limit": 2.5}, "limit must be a count (>= 1) or a fraction (< 1), got 2.5"),
    ({"tasks": "a", "limit": 0}, "limit must be a finite number > 0, got 0"),
    ({"tasks": "a", "num_fewshot": -1}, "num_fewshot must be an integer >= 0, got -1"),
    ({"tasks": "a", "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
])
def test_bad_settings_are_one_line_errors(values, message):
    with pytest.raises(LitLoraError) as err:
        TaskSettings(**values)
    assert message in str(err.value)
