"""`TaskEval`: lm-evaluation-harness tasks at each validation, logged as `eval/<task>/<metric>`, so task
accuracy and general ability (a "forgetting" task) can be watched as the loss falls."""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Optional, Union

from lightning.pytorch.callbacks import Callback

from lit_lora.callbacks.samples import run_tokenizer
from lit_lora.errors import LitLoraError
from lit_lora.evaluation.settings import TaskSettings
from lit_lora.notes import print_note
from lit_lora.settings import build_settings, check_number
from lit_lora.training.distributed import is_fsdp


class TaskEval(Callback):
    """At the end of every `every_n_validations`-th validation, runs lm-eval tasks on the model as it trains
    and logs each metric as `eval/<task>/<metric>` on every logger, where `--early_stopping.monitor` and
    `--checkpoint.monitor` can name it too; and once at step 0, on the model the run starts from, when the
    full step-0 validation runs (lit_lora's default).

    Rank 0 evaluates; under DDP the other ranks wait for it and receive its numbers, so nothing runs twice.
    lm-eval's seeding does not reach the run's random generators (exact resume is kept), and a resumed run
    does not evaluate again a step it already evaluated: the evaluated steps are saved in the checkpoint.
    """

    def __init__(
        self,
        tasks: Union[list[str], str] = [],  # noqa: B006  (read once, never mutated)
        include_path: Optional[str] = None,
        num_fewshot: Optional[int] = None,
        limit: Optional[Union[int, float]] = 20,
        batch_size: int = 8,
        apply_chat_template: bool = False,
        every_n_validations: int = 1,
    ) -> None:
        """
        Args:
            tasks: lm-eval task names (a list, or comma-separated); [] turns task evaluation off.
            include_path: A folder of task YAML files, e.g. examples/eval/tasks.
            num_fewshot: Examples put before each question; None: each task's own setting.
            limit: Documents per task at each evaluation (a count, or a fraction below 1); None: all. Keep
                it small: the evaluation's time is added to every validation (printed each time).
            batch_size: Requests the model scores together.
            apply_chat_template: Render requests with the run's chat template (conversation runs).
            every_n_validations: Evaluate at every n-th validation.
        """
        self.settings: Optional[TaskSettings] = None
        if tasks:
            values = dict(tasks=tasks, include_path=include_path, num_fewshot=num_fewshot, limit=limit,
                          batch_size=batch_size, apply_chat_template=apply_chat_template)
            self.settings = build_settings(TaskSettings, "eval_tasks.", values)
        check_number("eval_tasks.every_n_validations", every_n_validations, at_least=1, integer=True)
        self.every_n_validations = every_n_validations
        self.evaluated_steps: list[int] = []
        self._validations = 0
        self._manager: Any = None
        self._tokenizer: Any = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.settings is None or stage != "fit":
            return
        from lit_lora.evaluation.harness import require_lm_eval, task_manager  # lm-eval: only when used

        if is_fsdp(trainer.strategy):
            raise LitLoraError("eval_tasks runs on rank 0, which under FSDP holds only a shard of the model; "
                               "train with DDP, or evaluate the saved checkpoints with `eval`")
        require_lm_eval()
        self._manager = task_manager(self.settings)  # an unknown task stops the run before it trains

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        """The model the run starts from, at step 0, as `StartValLoss` logs its loss: the reference a
        "forgetting" task is read against. Written to the loggers directly, since Lightning discards what
        the sanity check logs."""
        if self.settings is None or trainer.global_step != 0 or 0 in self.evaluated_steps or \
                not math.isinf(trainer.num_sanity_val_steps):
            return
        if trainer.is_global_zero:
            metrics = self._evaluate(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=0)
        trainer.strategy.barrier()
        self.evaluated_steps.append(0)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.settings is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._validations += 1
        step = trainer.global_step
        if self._validations % self.every_n_validations or step in self.evaluated_steps:
            return
        metrics: Optional[dict[str, float]] = None
        if trainer.is_global_zero:
            metrics = self._evaluate(trainer, pl_module)
        metrics = trainer.strategy.broadcast(metrics, src=0)
        for name, value in metrics.items():
            pl_module.log(name, value, on_epoch=True, sync_dist=True)  # the same value on every rank
        self.evaluated_steps.append(step)

    def _evaluate(self, trainer: Any, pl_module: Any) -> dict[str, float]:
        from lit_lora.evaluation.harness import evaluate_tasks  # lm-eval: only when used
        from lit_lora.evaluation.tables import logged_metrics, metrics

        assert self.settings is not None
        started = time.perf_counter()
        with trainer.precision_plugin.forward_context():
            results = evaluate_tasks(pl_module.model, self._get_tokenizer(trainer, pl_module), self.settings,
                                     self._manager)
        shown = ", ".join(f"{m.task} {m.metric} {m.value:.4f}" for m in metrics(results))
        print_note(f"eval_tasks at step {trainer.global_step}: {shown} ({time.perf_counter() - started:.1f} s)")
        return logged_metrics(results)

    def _get_tokenizer(self, trainer: Any, pl_module: Any) -> Any:
        if self._tokenizer is None:
            # A copy: HFLM may set its pad token, and the chat template set below is lm-eval's to read.
            self._tokenizer = copy.copy(run_tokenizer(trainer, pl_module))
            template = getattr(pl_module, "chat_template", None)
            if template:  # lm-eval's --apply_chat_template reads the tokenizer's
                self._tokenizer.chat_template = template
        return self._tokenizer

    def state_dict(self) -> dict[str, Any]:
        return {"evaluated_steps": list(self.evaluated_steps), "validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evaluated_steps = list(state_dict.get("evaluated_steps", []))
        self._validations = int(state_dict.get("validations", 0))
