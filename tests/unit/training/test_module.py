"""The LightningModule: parameter counts, LoRA wiring, gradient checkpointing, loss masking."""

from __future__ import annotations

import pytest
import torch

from lit_lora.errors import LitLoraError
from lit_lora.estimate.model_summary import count_parameters, format_counts
from lit_lora.lora import LoraSettings
from lit_lora.objectives.nll import token_nll
from lit_lora.training.module import LitLora
from tests.conftest import QUICKSTART


def test_gpt2_small_reference_counts():
    model = LitLora(model_config={}, tokenizer_name_or_path=str(QUICKSTART / "tokenizer"), gradient_checkpointing=False)
    counts = count_parameters(model.model)
    # No target flag: our table's [c_attn, c_proj], not PEFT's GPT-2 mapping (c_attn alone: 294,912).
    assert model.hparams.lora["target_modules"] == ["c_attn", "c_proj"]
    assert (counts.base, counts.trainable, counts.total) == (124_439_808, 811_008, 125_250_816)
    assert format_counts(counts) == "124,439,808 base, 811,008 trainable, 125,250,816 total, 0.6475% trainable"
    # Only LoRA tensors train, and a LoRA-only state dict is megabytes, not the 500 MB of the full model.
    trainable = model.trainable_state_dict()
    assert trainable and all("lora_" in k for k in trainable)
    assert sum(v.numel() * v.element_size() for v in trainable.values()) == 811_008 * 4


def test_loads_from_local_dir_and_adapts_conv1d_without_warning(tiny_model_dir, recwarn):
    model = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32)
    assert model.model.peft_config["default"].fan_in_fan_out is True
    assert not [w for w in recwarn if "fan_in_fan_out" in str(w.message)]
    assert all(m.training for m in model.model.modules()), "from_pretrained's eval mode must not leak into training"


def test_lora_config_passthrough(tiny_model_dir):
    lora = LoraSettings(r=4, alpha=8, target_modules="all-linear", use_rslora=True, use_dora=True)
    model = LitLora(model_name_or_path=str(tiny_model_dir), lora=lora, block_size=32)
    cfg = model.model.peft_config["default"]
    assert cfg.use_rslora and cfg.use_dora and cfg.r == 4
    names = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert any("c_fc" in n for n in names) and any("magnitude" in n for n in names)  # all-linear + DoRA

    lora = LoraSettings(target_modules=["c_attn"], extra={"layers_to_transform": [0]})
    names = [n for n, p in LitLora(model_name_or_path=str(tiny_model_dir), lora=lora, block_size=32)
             .model.named_parameters() if p.requires_grad]
    assert names and all(".h.0." in n and "c_attn" in n for n in names)


def test_unmatched_target_modules_lists_existing(tiny_model_dir):
    with pytest.raises(LitLoraError, match=r"match no module.*c_attn"):
        LitLora(model_name_or_path=str(tiny_model_dir), lora=LoraSettings(target_modules=["q_proj"]), block_size=32)


def test_model_config_requires_local_tokenizer():
    with pytest.raises(LitLoraError, match="tokenizer_name_or_path"):
        LitLora(model_config={"n_layer": 1})


def _grads(gc: bool, tiny_model_dir, steps: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = LitLora(
        model_name_or_path=str(tiny_model_dir), lora=LoraSettings(dropout=0.0), gradient_checkpointing=gc, block_size=32
    )
    for m in model.modules():  # no dropout anywhere, so both runs see identical computations
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    for _ in range(steps + 1):
        opt.zero_grad()
        nll, n = model.objective.nll(model.model, {"input_ids": batch, "labels": batch})
        loss = nll / n
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
    return grads


def test_gradient_checkpointing_gives_same_lora_gradients(tiny_model_dir):
    on0, off0 = _grads(True, tiny_model_dir, 0), _grads(False, tiny_model_dir, 0)
    assert on0.keys() == off0.keys() and on0
    for name in on0:
        if "lora_A" in name:  # B is zero at init, so A gets exactly zero gradient
            assert torch.count_nonzero(on0[name]) == 0 and torch.count_nonzero(off0[name]) == 0
        else:
            assert torch.count_nonzero(on0[name]) > 0
            torch.testing.assert_close(on0[name], off0[name], rtol=1e-5, atol=1e-7)
    on1, off1 = _grads(True, tiny_model_dir, 1), _grads(False, tiny_model_dir, 1)
    for name in on1:  # after one step B != 0: every LoRA tensor has a gradient, equal with and without
        assert torch.count_nonzero(on1[name]) > 0, name
        torch.testing.assert_close(on1[name], off1[name], rtol=1e-5, atol=1e-7)


def test_token_nll_ignores_masked_positions_not_pad_ids():
    # EOS (id 0 here) doubles as pad: the real EOS at the completion's end is a target, padding is not.
    logits = torch.randn(1, 5, 8)
    labels = torch.tensor([[-100, 3, 0, -100, -100]])
    nll, n = token_nll(logits, labels)
    assert n == 2
    expected = -(logits[0, 0].log_softmax(-1)[3] + logits[0, 1].log_softmax(-1)[0])
    torch.testing.assert_close(nll, expected)


def test_training_step_updates_lora_weights(tiny_model_dir):
    model = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    opt = model.configure_optimizers()["optimizer"]
    batch = torch.randint(0, 512, (2, 32))
    for _ in range(2):
        opt.zero_grad()
        nll, n = model.objective.nll(model.model, {"input_ids": batch, "labels": batch})
        (nll / n).backward()
        opt.step()
    after = model.trainable_state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), "every LoRA tensor must move after two steps"


def test_accumulated_micro_batches_train_like_one_batch_on_ragged_data(in_tmp):
    """With gradient accumulation on prompt/completion data of very different lengths, the loss
    is the mean over the target tokens of the whole optimizer step, not a mean of micro-batch means. Batch 2
    x 2 accumulated must then train the same adapter as batch 4 (same samples per step, no dropout)."""
    import json
    import random

    from tests.conftest import save_tiny_gpt2
    from tests.helpers import run_cli

    model_dir = save_tiny_gpt2(in_tmp / "model", QUICKSTART / "tokenizer", resid_pdrop=0.0, embd_pdrop=0.0,
                               attn_pdrop=0.0)
    rng = random.Random(0)
    words = (QUICKSTART / "train.txt").read_text().split()
    rows = [{"prompt": " ".join(rng.choices(words, k=rng.randint(2, 6))),
             "completion": " " + " ".join(rng.choices(words, k=rng.choice([1, 2, 25, 40])))} for _ in range(24)]
    data = in_tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def fit(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
        cli = run_cli(["fit", "--model.model_name_or_path", str(model_dir), "--model.lora.dropout", "0",
                       "--model.learning_rate", "1e-2", "--model.warmup_steps", "0",
                       "--data.train_files", str(data), "--data.val_fraction", "0", "--data.block_size", "64",
                       "--data.length_bucketing", "false", "--data.batch_size", str(batch_size),
                       "--data.cache_dir", str(in_tmp / "cache"),
                       "--trainer.accumulate_grad_batches", str(accumulate), "--trainer.max_steps", "3",
                       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                       "--trainer.default_root_dir", str(in_tmp / f"run{batch_size}"),
                       "--trainer.logger.init_args.save_dir", str(in_tmp / f"logs{batch_size}")])
        return {k: v.detach().clone() for k, v in cli.model.trainable_state_dict().items()}

    one_batch, accumulated = fit(4, 1), fit(2, 2)
    assert max((one_batch[k] - accumulated[k]).abs().max().item() for k in one_batch) < 1e-5
