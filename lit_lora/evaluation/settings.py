"""Which lm-evaluation-harness tasks run, and how: one settings class for `eval` and the training callback.
The names are lm-eval's own, so a user's `lm_eval` command line carries over."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from lit_lora.errors import LitLoraError
from lit_lora.settings import check_number


@dataclass
class TaskSettings:
    """lm-evaluation-harness tasks, with lm-eval's option names.

    Args:
        tasks: Task (or group) names, a list or comma-separated as lm-eval takes them: ones defined under
            `include_path`, or lm-eval's own (those download their data: they need the network or a filled
            Hugging Face cache).
        include_path: A folder of task YAML files (lm-eval's `--include_path`), e.g. examples/eval/tasks.
        num_fewshot: Examples put before each question; None: each task's own setting.
        limit: Documents per task: a count (>= 1), or a fraction of each task (< 1). None: all of them.
        batch_size: Requests the model scores together.
        apply_chat_template: Render each request with the model's chat template (the one it was trained
            with), as lm-eval's `--apply_chat_template` does.
    """

    tasks: Union[list[str], str] = field(default_factory=list)
    include_path: Optional[str] = None
    num_fewshot: Optional[int] = None
    limit: Optional[Union[int, float]] = None
    batch_size: int = 8
    apply_chat_template: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):  # "a,b" as lm-eval's --tasks takes it
            self.tasks = [t for t in self.tasks.split(",") if t]
        self.tasks = [t.strip() for t in self.tasks]
        if not self.tasks or not all(self.tasks):
            raise LitLoraError(f"tasks must name at least one lm-eval task, got {self.tasks!r}")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise LitLoraError(f"include_path {self.include_path!r} is not a folder of task YAML files")
        if self.num_fewshot is not None:
            check_number("num_fewshot", self.num_fewshot, at_least=0, integer=True)
        if self.limit is not None:
            check_number("limit", self.limit, above=0)
            if self.limit > 1 and not float(self.limit).is_integer():
                raise LitLoraError(f"limit must be a count (>= 1) or a fraction (< 1), got {self.limit!r}")
        check_number("batch_size", self.batch_size, at_least=1, integer=True)
