"""Memory: the estimate with the chunked loss against MemTracker at GPT-2 small's widths, the
targets `summary` prints for GPT-2 small and XL (and XL's QLoRA) without building their weights, `--data.batch_size auto`
on a faked device size (fresh and resumed), and `summary --memory_gb`."""

from __future__ import annotations

import re

import pytest
import torch

from lit_lora.cli import main
from lit_lora.constants import MB
from lit_lora.errors import LitLoraError
from lit_lora.estimate.budget import HEADROOM_BYTES, HEADROOM_FRACTION, largest_batch, usable_bytes
from lit_lora.estimate.memory import estimate_training_memory
from tests.conftest import REPO
from tests.helpers import fit_args, memtracker_activations, run_cli

GPU_SUMMARY = ["--config", "conf/gpt2/lora.yaml", "--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed",
               "--model.base_dtype", "bfloat16", "--data.batch_size", "8", "--data.block_size", "512"]


def _summary(capsys, monkeypatch, tokenizer, *args):
    monkeypatch.chdir(REPO)
    assert main(["summary", "--model.tokenizer_name_or_path", str(tokenizer), *args]) == 0
    return capsys.readouterr().out


def _estimate_mb(out):
    return float(re.search(r"peak training memory, estimated: ([\d,.]+) MB", out).group(1).replace(",", ""))


# -- the estimate -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, gc", [(1, True), (2, False)])
def test_estimate_is_within_5_percent_of_memtracker_at_gpt2_small_widths(batch, gc):
    from lit_lora.training.module import LitLora

    block = 320  # 320 and 640 positions: the loss runs 2 and 3 chunks of 256
    torch.manual_seed(0)
    # GPT-2 small's widths and vocabulary (768, 3,072, 50,257) at 2 of its 12 layers: the full depth is
    # benchmarks/memory_check.py's (README figures); the dry run counts depth exactly (tests/unit/estimate/test_counts.py).
    module = LitLora(model_config={"n_layer": 2}, tokenizer_name_or_path="unused", gradient_checkpointing=gc,
                     block_size=block)
    estimate = estimate_training_memory(module.model, batch, block, "32-true", gc, device_type="cpu")
    assert estimate.activations == pytest.approx(memtracker_activations(module, batch, block, estimate), rel=0.05)


DPO = {"class_path": "lit_lora.objectives.preference.Preference"}


def test_a_dpo_step_is_estimated_within_5_percent_of_memtracker(tiny_model_dir):
    from lit_lora.training.module import LitLora

    # 4 pairs of 128 tokens: chosen and rejected, 8 sequences in the forward that trains, 8 in the reference's.
    torch.manual_seed(0)
    module = LitLora(model_name_or_path=str(tiny_model_dir), objective=DPO, gradient_checkpointing=False,
                     block_size=128)
    shape = module.objective.step_shape()
    assert shape == (2, 2, "DPO: 2 sequences per row + reference pass")
    estimate = estimate_training_memory(module.model, 4, 128, "32-true", False, "cpu", shape)
    assert "; DPO: 2 sequences per row + reference pass)" in estimate.lines()[0]
    assert estimate.activations == pytest.approx(memtracker_activations(module, 4, 128, estimate), rel=0.05)


def test_auto_batch_of_a_dpo_run_is_smaller_than_sft_on_the_same_budget(tiny_model_dir):
    from lit_lora.cli.will_it_fit import auto_batch_line
    from lit_lora.objectives.base import StepShape
    from lit_lora.training.module import LitLora

    module = LitLora(model_name_or_path=str(tiny_model_dir), objective=DPO, block_size=32)
    shape = module.objective.step_shape()
    # The budget of SFT's batch 8 (auto takes 8 for SFT: the largest batch whose peak fits, tested above);
    # a DPO batch of 8 runs 16 sequences and a reference pass. At most 8 rows: few dry runs.
    budget = estimate_training_memory(module.model, 8, 32, "32-true", True, "cpu", StepShape()).total
    batch, line = auto_batch_line(module.model, 32, "32-true", True, "cpu", (budget, "a test"), 8, shape)
    assert batch == 4 and line.endswith("; at most 8, as the training data allows; DPO: 2 sequences per row + "
                                        "reference pass)")
    assert estimate_training_memory(module.model, 8, 32, "32-true", True, "cpu", shape).total > budget


def test_summary_builds_no_weights_and_meets_the_targets_for_gpt2_small_and_xl(capsys, monkeypatch,
                                                                              gpt2_tokenizer_dir):
    from lit_lora.cli.summary import _summary_cli_class

    built = []
    original = _summary_cli_class

    def spying():  # keep the module `summary` built, to look at its tensors
        cls = original()

        class Spy(cls):
            def instantiate_classes(self):
                super().instantiate_classes()
                built.append(self.model)

        return Spy

    monkeypatch.setattr("lit_lora.cli.summary._summary_cli_class", spying)
    out = _summary(capsys, monkeypatch, gpt2_tokenizer_dir, *GPU_SUMMARY, "--model.model_config", "{}")
    # The reference counts, as fit prints them.
    assert "lit_lora: 124,439,808 base, 811,008 trainable, 125,250,816 total, 0.6475% trainable" in out
    assert all(t.is_meta for t in built[0].parameters())  # shapes only: nothing read, nothing allocated
    assert _estimate_mb(out) <= 800
    xl = '{"n_embd": 1600, "n_layer": 48, "n_head": 25}'
    out = _summary(capsys, monkeypatch, gpt2_tokenizer_dir, *GPU_SUMMARY, "--model.model_config", xl)
    assert "lit_lora: 1,557,611,200 base, 6,758,400 trainable, 1,564,369,600 total" in out
    assert _estimate_mb(out) <= 4_500  # trains on a 6 GB card
    assert all(t.is_meta for t in built[1].parameters())
    pytest.importorskip("bitsandbytes")
    out = _summary(capsys, monkeypatch, gpt2_tokenizer_dir, *GPU_SUMMARY, "--model.model_config", xl,
                   "--model.quantization", "nf4")  # QLoRA: the same counts, a quarter of the weights
    assert "lit_lora: 1,557,611,200 base, 6,758,400 trainable, 1,564,369,600 total" in out
    assert "192 linear layers nf4 (bitsandbytes, compute bfloat16)" in out
    assert _estimate_mb(out) <= 2_500


# -- choosing the batch --------------------------------------------------------------------------------------


def test_largest_batch_is_exact_and_asks_few_estimates():
    asked = []

    def shape(b):  # a loss chunk's constant below 4 samples, then linear: the dry run's shape
        return 1_000 + 40 * max(b, 3) + 7 * b

    def peak(b):
        asked.append(b)
        return shape(b)

    for budget in (1_000, 1_200, 5_000, 123_456):
        fit = largest_batch(peak, budget, limit=4096)
        expected = max((b for b in range(1, 4097) if shape(b) <= budget), default=0)
        assert fit.largest == expected
        assert fit.power_of_two() == (1 << (expected.bit_length() - 1) if expected else 0)
    assert len(asked) <= 4 * 7
    assert largest_batch(peak, 10**9, limit=48).largest == 48


@pytest.fixture
def fake_free(monkeypatch):
    """Set the free memory `data.batch_size auto` sees to what gives `usable` bytes after the headroom."""
    def set_usable(usable):
        free = int((usable + HEADROOM_BYTES) / (1 - HEADROOM_FRACTION)) + 1
        assert usable_bytes(free) >= usable
        monkeypatch.setattr("lit_lora.callbacks.auto_batch.free_bytes", lambda device: free)

    return set_usable


def _peaks(model_dir, *batches):
    from lit_lora.training.module import LitLora

    module = LitLora(model_name_or_path=str(model_dir), block_size=32)  # fit's defaults: checkpointing on
    return [estimate_training_memory(module.model, b, 32, "32-true", True, "cpu").total for b in batches]


def test_auto_batch_takes_the_largest_power_of_two_that_fits_and_keeps_the_global_batch_on_resume(
        in_tmp, tiny_model_dir, shakespeare, fake_free, capsys):
    p4, p8, p16 = _peaks(tiny_model_dir, 4, 8, 16)
    args = fit_args(tiny_model_dir, shakespeare, in_tmp, "--data.batch_size", "auto", "--trainer.max_steps", "2",
                    "--checkpoint.every_n_train_steps", "2", "--trainer.default_root_dir", str(in_tmp))
    fake_free(p8 + (p16 - p8) // 2)  # 8 fits, 16 does not
    cli = run_cli(args)
    assert cli.datamodule.batch_size == 8 and cli.trainer.accumulate_grad_batches == 1
    out = capsys.readouterr().err
    assert "lit_lora: data.batch_size auto: 8 (the largest power of two that fits; estimated peak " in out
    assert "lit_lora: global batch = 1 device x 8 x 1 accumulation = 8 samples" in out
    state = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)["LitLoraData"]
    assert (state["batch_size"], state["accumulate"]) == (8, 1)

    fake_free(p16)  # resumed with room to spare: the checkpoint's own micro-batch
    again = run_cli([*args[:-4], "--trainer.max_steps", "3", "--ckpt_path", "last"])
    assert again.datamodule.batch_size == 8 and again.trainer.accumulate_grad_batches == 1
    assert ("data.batch_size auto: 8 (the checkpoint's micro-batch, which fits; the global batch stays 8 with "
            "accumulation 1; estimated peak") in capsys.readouterr().err

    fake_free(p4 + (p8 - p4) // 2)  # resumed where 8 no longer fits: 4 x 2 keeps the 8 samples a step
    resumed = run_cli([*args[:-4], "--trainer.max_steps", "5", "--ckpt_path", "last"])
    assert resumed.datamodule.batch_size == 4 and resumed.trainer.accumulate_grad_batches == 2
    assert resumed.trainer.global_step == 5
    assert ("data.batch_size auto: 4 (the checkpoint's 8 does not fit; the global batch stays 8 with "
            "accumulation 2; estimated peak") in capsys.readouterr().err


def test_summary_caps_an_auto_batch_on_the_training_data_as_fit_does(capsys, monkeypatch, tmp_path):
    # The quickstart's 1,186 training rows with a validation every 25 steps: fit takes at most 47 a batch.
    out = _summary(capsys, monkeypatch, "examples/quickstart/tokenizer", "--config", "conf/quickstart.yaml",
                   "--data.batch_size", "auto", "--data.cache_dir", str(tmp_path))
    assert re.search(r"^lit_lora: data.batch_size auto: 32 \(the largest power of two that fits [\d,]+ MB usable of "
                     r"[\d,]+ MB free on cpu, 10% \+ 512 MB kept free; at most 47, as the training data allows\)$",
                     out, re.M), out
    monkeypatch.setattr("lit_lora.cli.will_it_fit.free_bytes", lambda device: 600 * MB)  # a short search
    out = _summary(capsys, monkeypatch, "examples/quickstart/tokenizer", "--config", "conf/quickstart.yaml",
                   "--data.batch_size", "auto", "--data.train_files", str(tmp_path / "absent.txt"))
    assert "; the training files were not read, so fit may choose less for a small data set)" in out


def test_auto_batch_when_nothing_fits_is_one_line(in_tmp, tiny_model_dir, shakespeare, fake_free, capsys):
    fake_free(0)
    with pytest.raises(LitLoraError, match=r"^data.batch_size auto: even batch 1 needs an estimated [\d,]+ MB, more "
                                           r"than the 0 MB usable of [\d,]+ MB free on cpu \(10% \+ 512 MB kept "
                                           r"free\), block 32, 32-true; turn on --model.gradient_checkpointing"):
        run_cli(fit_args(tiny_model_dir, shakespeare, in_tmp, "--data.batch_size", "auto",
                         "--trainer.max_steps", "1"))


# -- summary --memory_gb -------------------------------------------------------------------------------------


def test_summary_says_which_gpt2_sizes_fit_and_the_largest_batch(capsys, monkeypatch, gpt2_tokenizer_dir):
    from lit_lora.training.module import LitLora
    from lit_lora.lora.build import without_weights

    sizes = {"gpt2-tiny": {"n_embd": 32, "n_layer": 2, "n_head": 2}, "gpt2-wide": {"n_embd": 256, "n_layer": 2,
                                                                                  "n_head": 4}}
    monkeypatch.setattr("lit_lora.cli.will_it_fit.GPT2_SIZES", sizes)

    def peak(name, batch):
        with without_weights():
            model = LitLora(model_config=sizes[name], tokenizer_name_or_path="unused", block_size=64,
                            base_dtype="bfloat16").model
        return estimate_training_memory(model, batch, 64, "bf16-mixed", True, "cuda").total

    # A card on which the tiny model fits 8 samples of 64 tokens but not 16.
    usable_target = (peak("gpt2-tiny", 8) + peak("gpt2-tiny", 16)) // 2
    memory_gb = (usable_target + HEADROOM_BYTES) / (1 - HEADROOM_FRACTION) / 2**30
    usable = usable_bytes(int(memory_gb * 2**30))
    out = _summary(capsys, monkeypatch, gpt2_tokenizer_dir, *GPU_SUMMARY, "--model.model_config",
                   str(sizes["gpt2-tiny"]), "--data.batch_size", "auto", "--data.block_size", "64",
                   "--memory_gb", str(memory_gb))
    assert (f"lit_lora: data.batch_size auto: 8 (the largest power of two that fits {usable / MB:,.0f} MB usable "
            f"of {memory_gb:g} GB of device memory, 10% + 512 MB kept free; the training files were not read, so fit "
            "may choose less for a small data set)") in out
    assert f"lit_lora: will it fit on {memory_gb:g} GB of device memory ({usable / MB:,.0f} MB usable" in out
    rows = dict(re.findall(r"lit_lora:   (this model|gpt2-\w+) .*batch 8 needs .* MB, (fits|does not fit);", out))
    assert rows == {"this model": "fits", "gpt2-tiny": "fits", "gpt2-wide": "does not fit"}
    assert re.search(r"this model .*; largest batch (\d+)", out).group(1) == re.search(
        r"gpt2-tiny .*; largest batch (\d+)", out).group(1)  # the configured model is gpt2-tiny's shape
    largest = int(re.search(r"gpt2-tiny .*; largest batch (\d+)", out).group(1))
    assert peak("gpt2-tiny", largest) <= usable < peak("gpt2-tiny", largest + 1)
    wide = re.search(r"gpt2-wide .*; (largest batch (\d+)|not even batch 1)", out)
    if wide.group(2):
        assert peak("gpt2-wide", int(wide.group(2))) <= usable < peak("gpt2-wide", int(wide.group(2)) + 1)
    else:
        assert peak("gpt2-wide", 1) > usable


@pytest.mark.parametrize("flags, message", [
    (["--memory_gb", "eight"], "--memory_gb must be a number of GB above 0 (an 8 GB card: 8) or gpu, got 'eight'"),
    (["--memory_gb", "0"], "--memory_gb must be a number of GB above 0 (an 8 GB card: 8) or gpu, got '0'"),
    (["--memory_gb", "8", "--trainer.accelerator", "mps"],
     "--memory_gb and data.batch_size auto estimate CUDA GPUs and CPUs, not accelerator 'mps'"),
    (["--memory_gb", "gpu", "--trainer.accelerator", "cpu"],
     "--memory_gb gpu reads the visible GPU: add --trainer.accelerator gpu, or give a size in GB"),
    (["--data.batch_size", "auto"], "--trainer.accelerator gpu with no GPU here: give the card's size (e.g. "
                                    "--memory_gb 8) for data.batch_size auto or --memory_gb gpu"),
    (["--data.batch_size", "0"], "data.batch_size must be a positive integer or auto, got 0"),
])
def test_bad_memory_options_are_one_line(flags, message, monkeypatch, capsys, gpt2_tokenizer_dir):
    if torch.cuda.is_available() and ("auto" in flags or "gpu" in flags):
        pytest.skip("a GPU is visible: auto reads it")
    monkeypatch.chdir(REPO)
    assert main(["summary", *GPU_SUMMARY, "--model.model_config", '{"n_layer": 1, "n_embd": 32, "n_head": 2}',
                 "--model.tokenizer_name_or_path", str(gpt2_tokenizer_dir), *flags]) == 2
    assert capsys.readouterr().err.splitlines() == [f"lit_lora: error: {message}"]


def test_gpu_check_dry_run_writes_its_rows_on_a_cpu(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "rows.md"
    assert gpu_check.main(["--dry_run", "--only", "memory", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[2].startswith("| setup | cpu | ok | torch ")
    assert "| memory | gpt2 (small) 8 x 512 | estimated | 711.2 MB (no GPU: not measured) |" in rows[3]
    assert "| memory | gpt2-xl 8 x 512 | estimated | 4,463.7 MB (no GPU: not measured) |" in rows[4]
