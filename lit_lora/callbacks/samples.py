"""`SampleGenerator`: a few completions at each validation, logged as text (TensorBoard's TEXT tab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from lit_lora.eval_mode import evaluating
from lit_lora.generation.chat import chat_prompt_ids, stop_ids
from lit_lora.generation.decode import sample_tokens
from lit_lora.generation.prompts import prompt_ids
from lit_lora.generation.settings import GenerationSettings
from lit_lora.pretrained.hub import load_tokenizer, tokenizer_source
from lit_lora.settings import build_settings
from lit_lora.training.contracts import TrainingData


class SampleGenerator(Callback):
    """At the end of each validation, completes a few prompts and logs the text to TensorBoard (tag
    `samples`), so you can read the model change.

    Sampling draws from a private generator seeded with `seed` at each validation, never from the global
    RNG (exact resume depends on it), so two validations differ only because the weights did. The model's
    train/eval mode is restored afterwards.
    """

    def __init__(
        self,
        prompts: list[str] = ["The", "Once upon a time"],  # noqa: B006  (copied below, never mutated)
        max_new_tokens: int = 32,
        temperature: float = 0.8,
        top_k: Optional[int] = 50,
        seed: int = 0,
    ) -> None:
        """
        Args:
            prompts: Prompts to complete at each validation; [] turns samples off.
            max_new_tokens: Tokens generated per prompt (fewer when the model emits EOS).
            temperature: 0 is greedy decoding; above 0 samples, higher is more random.
            top_k: When sampling, draw only from the k most likely tokens; None: no limit.
            seed: Seed of the private sampling generator, reset at each validation.
        """
        # The checks and the decoding of `generate`, under this group's option names.
        values = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
        self.settings = build_settings(GenerationSettings, "samples.", values)
        self.prompts = list(prompts)
        self.last_samples: list[tuple[str, str]] = []  # (prompt, continuation) of the latest validation
        self._tokenizer: Any = None

    def _get_tokenizer(self, trainer: Any, pl_module: Any) -> Any:
        if self._tokenizer is None:
            self._tokenizer = run_tokenizer(trainer, pl_module)
        return self._tokenizer

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.prompts or trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        tokenizer = self._get_tokenizer(trainer, pl_module)
        data = trainer.datamodule
        template = data.chat_template if isinstance(data, TrainingData) else None  # a chat run: replies
        self.last_samples = [(p, self.complete(pl_module.model, tokenizer, p, template)) for p in self.prompts]
        text = format_samples(self.last_samples)
        for logger in trainer.loggers:
            log_text(logger, text, trainer.global_step)

    def complete(self, model: Any, tokenizer: Any, prompt: str, chat_template: Optional[str] = None) -> str:
        """The continuation of `prompt` (the prompt itself not included); with `chat_template`, the reply to
        it as a user message."""
        if chat_template:
            ids, stop = chat_prompt_ids(tokenizer, chat_template, [{"role": "user", "content": prompt}]), \
                stop_ids(tokenizer, chat_template)
        else:
            ids, stop = prompt_ids(tokenizer, prompt), [tokenizer.eos_token_id]
        with evaluating(model):
            ids = sample_tokens(model, ids, self.settings, stop)
        return tokenizer.decode(ids, skip_special_tokens=True)


def run_tokenizer(trainer: Any, pl_module: Any) -> Any:
    """The run's tokenizer: the data module's, else the one the model's hyperparameters name."""
    if isinstance(trainer.datamodule, TrainingData):
        return trainer.datamodule.tokenizer
    hp = pl_module.hparams
    source = tokenizer_source(hp.get("tokenizer_name_or_path"), hp["model_name_or_path"])
    return load_tokenizer(source, trust_remote_code=bool(hp.get("trust_remote_code")))


def log_text(logger: Any, text: str, step: int) -> None:
    """The samples' markdown in whatever the logger keeps text in: TensorBoard's TEXT tab (tag `samples`),
    an MLflow artifact (`samples/step000100.md`), or, for a logger with a folder (CSV), `samples.md` there."""
    experiment = logger.experiment
    if hasattr(experiment, "add_text"):  # TensorBoard's SummaryWriter
        experiment.add_text("samples", text, global_step=step)
    elif hasattr(experiment, "log_text") and getattr(logger, "run_id", None):  # MLflow's client
        experiment.log_text(logger.run_id, text, f"samples/step{step:06d}.md")
    elif getattr(logger, "log_dir", None):
        Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(logger.log_dir) / "samples.md", "a", encoding="utf-8") as fh:
            fh.write(f"## step {step}\n\n{text}\n\n")


def format_samples(samples: list[tuple[str, str]]) -> str:
    """Markdown for TensorBoard's TEXT tab: the prompt in bold, then prompt + continuation as a code block
    (TensorBoard renders markdown; an indented block keeps the text's own newlines and symbols)."""
    parts = []
    for prompt, continuation in samples:
        body = "\n".join("    " + line for line in (prompt + continuation).split("\n"))
        parts.append(f"**{_md_escape(prompt)}**\n\n{body}")
    return "\n\n".join(parts)


def _md_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>" else c for c in text.replace("\n", " "))
