"""The run watchers without a run: token throughput on padded batches, and samples that leave the global
RNG and the module's modes alone. Their tags in a real run are checked in tests/e2e/test_monitoring.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lit_lora.callbacks import SampleGenerator, TokenThroughput
from lit_lora.training.module import LitLora


class _Recorder:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))


def test_padded_batches_count_only_real_tokens_and_log_once_per_interval():
    recorder = _Recorder()
    trainer = SimpleNamespace(
        global_step=0, log_every_n_steps=2, should_stop=False, loggers=[recorder], precision="32-true"
    )
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda *a, **k: None)
    callback = TokenThroughput()
    callback.on_train_start(trainer, module)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask}
    for step in range(1, 5):
        callback.on_train_batch_start(trainer, module, batch, step - 1)
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, batch, step - 1)
    assert [s for s, _ in recorder.logged] == [1, 3]  # batch indices, as Lightning logs train_loss
    for _, metrics in recorder.logged:
        # 5 real tokens per batch of 2 samples.
        assert metrics["throughput/tokens_per_sec"] / metrics["throughput/samples_per_sec"] == pytest.approx(2.5)


@pytest.mark.parametrize("sides", [("chosen", "rejected"), ("completion", "kl")])
def test_preference_batches_count_the_tokens_of_every_sequence_and_their_rows(sides):
    recorder = _Recorder()
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=1, should_stop=False, loggers=[recorder],
                              precision="32-true")
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda *a, **k: None)
    callback = TokenThroughput()
    callback.on_train_start(trainer, module)
    masks = [torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])]
    batch = {"sample_ids": torch.tensor([0, 1]), "label": torch.tensor([True, False])}
    for side, mask in zip(sides, masks):
        batch |= {f"{side}_input_ids": torch.zeros_like(mask), f"{side}_attention_mask": mask,
                  f"{side}_labels": torch.zeros_like(mask)}
    callback.on_train_batch_start(trainer, module, batch, 0)
    trainer.global_step = 1
    callback.on_train_batch_end(trainer, module, None, batch, 0)
    (_, metrics), = recorder.logged
    # 5 + 8 real tokens in 2 rows (pairs, or KTO's completions with their KL rows).
    assert metrics["throughput/tokens_per_sec"] / metrics["throughput/samples_per_sec"] == pytest.approx(6.5)


def test_sampling_leaves_the_global_rng_and_module_modes_alone(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32)
    peft_model = model.model
    peft_model.train()
    frozen_eval = peft_model.get_base_model().transformer.h[0].mlp.dropout
    frozen_eval.eval()  # a module kept in eval on purpose must stay so
    modes = {name: m.training for name, m in peft_model.named_modules()}
    generator = SampleGenerator(prompts=["The"], max_new_tokens=12, temperature=1.0, seed=3)
    cpu_state = torch.get_rng_state()
    first = generator.complete(peft_model, tokenizer, "The")
    second = generator.complete(peft_model, tokenizer, "The")
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert {name: m.training for name, m in peft_model.named_modules()} == modes
    assert first == second and first  # seeded per call: same weights, same text
    greedy = SampleGenerator(prompts=["The"], max_new_tokens=12, temperature=0.0)
    assert greedy.complete(peft_model, tokenizer, "The") == greedy.complete(peft_model, tokenizer, "The")
