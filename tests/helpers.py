"""Helpers shared by tests: run the CLI in-process or as processes, read TensorBoard scalars and checkpoints
back, and the tiny models and files several test folders use. Test modules import from here, never from
each other."""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback

from lit_lora.cli import cli_main
from tests.conftest import QUICKSTART, REPO

# The checkpoint lit_lora wrote before the package was layered: the quickstart at step 4, LoRA r=4 on c_attn.
LEGACY = REPO / "tests" / "fixtures" / "legacy-format1.ckpt"
TOKENIZER = str(QUICKSTART / "tokenizer")
# The flags it was trained with, over conf/quickstart.yaml.
TRAINED_WITH = ["--config", str(REPO / "conf" / "quickstart.yaml"), "--model.lora.r", "4", "--model.lora.alpha", "8",
                "--model.lora.target_modules", "[c_attn]", "--trainer.enable_progress_bar", "false",
                "--samples.prompts", "[]"]

# Tiny random models of every family we name (saved with `save_pretrained` by the end-to-end tests).
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128)
GQA = dict(SMALL, num_key_value_heads=2)  # grouped-query attention: 2 key/value heads for 4 query heads
# (model_type, config fields, tokenizer): tied and untied output heads, GQA, and a tokenizer that adds BOS.
FAMILIES = {
    "gpt2": ({"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128}, "plain"),
    "gpt_neo": ({"hidden_size": 32, "num_layers": 2, "num_heads": 4, "max_position_embeddings": 128,
                 "attention_types": [[["global", "local"], 1]], "window_size": 16}, "plain"),
    "gpt_neox": (dict(SMALL, rotary_pct=0.25, tie_word_embeddings=False), "plain"),  # Pythia: untied
    "opt": ({"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 128, "word_embed_proj_dim": 32}, "plain"),
    "llama": (dict(GQA, tie_word_embeddings=True), "bos"),  # SmolLM2: tied, GQA, BOS
    "mistral": (dict(GQA, tie_word_embeddings=False), "bos"),
    "qwen2": (dict(GQA, tie_word_embeddings=True), "plain"),  # Qwen2.5 small: tied, no BOS
    "qwen3": (dict(GQA, head_dim=8, tie_word_embeddings=True), "plain"),
    "phi3": (dict(GQA, tie_word_embeddings=False, pad_token_id=None, original_max_position_embeddings=128), "plain"),
    "gemma2": (dict(GQA, head_dim=8, sliding_window=16, tie_word_embeddings=True), "plain"),
}
VOCAB = 520  # the quickstart tokenizer's 512 tokens, and a BOS added for the "bos" tokenizer
# A one-layer Gemma 2, whose attention has no sdpa implementation.
GEMMA2 = {"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": VOCAB}

# QLoRA's families, at twice the width (bitsandbytes' 4-bit blocks of 64 values).
QLORA_FAMILIES = {
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 128},
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128},
}
QLORA_VOCAB = 512
# Each family's shared run (tests/e2e/conftest.py): 6 steps of 2 x 32 tokens, a checkpoint every 3.
RUN_STEPS, RUN_SAVE_EVERY, RUN_BLOCK, RUN_BATCH = 6, 3, 32, 2


def bos_tokenizer_dir(folder: Any) -> Any:
    """The quickstart tokenizer with a `<s>` BOS that it puts before every text (as Llama's do) and no pad
    token, built with `tokenizers` as the quickstart's was."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(QUICKSTART / "tokenizer"))
    tok.add_special_tokens({"bos_token": "<s>"})
    bos = tok.convert_tokens_to_ids("<s>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                              special_tokens=[("<s>", bos)])
    tok.pad_token = None
    tok.save_pretrained(str(folder))
    return folder


def llama_tokenizer_dir(folder: Any, vocab_size: int = 400) -> int:
    """A Llama-style tokenizer (BPE with byte fallback, `▁` for spaces, `<s>` and `</s>`) trained on the
    quickstart text and saved in `folder`; its length. llama.cpp's converter reads its vocabulary as it reads
    Llama 2's (a byte-level BPE it has no hash for, such as the quickstart's, it refuses)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator((QUICKSTART / "train.txt").read_text(encoding="utf-8").splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(folder))
    return len(fast)


def fit_args(model_dir: Any, train: Any, tmp: Any, *extra: str) -> list[str]:
    return [
        "fit",
        "--model.model_name_or_path", str(model_dir),
        "--data.train_files", str(train),
        "--data.block_size", "32",
        "--data.batch_size", "4",
        "--data.cache_dir", str(os.path.join(tmp, "hf-cache")),
        "--model.warmup_steps", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        *extra,
    ]


def _signalled(trainer: Any) -> bool:
    from lit_lora.callbacks.graceful_stop import GracefulStop

    return trainer.received_sigterm or any(isinstance(c, GracefulStop) and c.signal_name for c in trainer.callbacks)


class Poison(Callback):
    """Test callback: writes NaN into one LoRA weight before step `at_step`, as a diverging run would (in
    process `rank` only, if given)."""

    def __init__(self, at_step: int, rank: Optional[int] = None) -> None:
        self.at_step = at_step
        self.rank = rank

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.at_step and self.rank in (None, trainer.global_rank):
            name, param = next((n, p) for n, p in pl_module.named_parameters() if "lora_B" in n)
            param.data.fill_(float("nan"))


def start_cli(cwd: Any, *args: str) -> Any:
    """`python -m lit_lora.cli ARGS` as a subprocess in `cwd` (for kill -9 and signal tests), output merged."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "lit_lora.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_cli(args: list[str], cwd: Any = None) -> Any:
    """`cli_main(args)` in this process; with `cwd`, run from there (lightning_logs/ lands there) and come back."""
    if cwd is None:
        return cli_main(args)
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return cli_main(args)
    finally:
        os.chdir(previous)


def cli_output(cwd: Any, *args: str, code: int = 0, notes: bool = False) -> str:
    """`python -m lit_lora.cli ARGS` in this process, run from `cwd`: asserts its exit code and returns its
    stdout (the command's output), or its stderr where lit_lora's notes and one-line errors go (`notes`, or
    `code` not 0)."""
    import contextlib
    import io

    from lit_lora.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            got = main(list(args))
    finally:
        os.chdir(previous)
    assert got == code, (args, err.getvalue()[-3000:])
    return err.getvalue() if notes or code != 0 else out.getvalue()


def checkpoints_dir(run: Any) -> Any:
    """Where a run started in folder `run` writes its checkpoints (the default logger's first version)."""
    return run / "lightning_logs" / "lit_lora" / "version_0" / "checkpoints"


def lora_state(path: Any) -> dict[str, torch.Tensor]:
    """The state dict (LoRA weights only) of the checkpoint at `path`."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def records(path: Any) -> list[dict]:
    """The lines of a JSONL file that a recording callback wrote."""
    return [json.loads(line) for line in open(path).read().splitlines()]


def fit_in_process(cwd: Any, *args: str) -> tuple[int, str, str]:
    """`fit ARGS` in this process, run from `cwd` (made if missing), on one device: (exit code, stdout,
    stderr). Module- and session-scoped fixtures cannot use capsys, so the output is captured by hand."""
    import contextlib
    import io

    import pytest

    from lit_lora.cli import main

    os.makedirs(cwd, exist_ok=True)
    mp = pytest.MonkeyPatch()
    out, err = io.StringIO(), io.StringIO()
    try:
        mp.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["fit", *args])
    finally:
        mp.undo()
    return code, out.getvalue(), err.getvalue()


def assert_resume_repeats(full: Any, resumed: Any, from_step: int, last: str) -> None:
    """The run in `resumed`, started from `full`'s checkpoint at `from_step`, logged the same train_loss as
    `full` from there on and ended with the same LoRA weights (checkpoint `last` of each), to 1e-6."""
    full_loss = dict(scalars(str(full / "lightning_logs"), "train_loss"))
    resumed_loss = dict(scalars(str(resumed / "lightning_logs"), "train_loss"))
    after = [s for s in sorted(full_loss) if s >= from_step]
    assert after and all(s in resumed_loss for s in after)
    assert max(abs(full_loss[s] - resumed_loss[s]) for s in after) <= 1e-6
    a = torch.load(checkpoints_dir(full) / last, weights_only=True)["state_dict"]
    b = torch.load(checkpoints_dir(resumed) / last, weights_only=True)["state_dict"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def scalars(log_dir: str, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True))
    out: list[tuple[int, float]] = []
    for path in events:
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out += [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


class RecordBatches(Callback):
    """Test callback: appends each training step's sample ids to a JSONL file; with `pause_at_step`, blocks
    before that step (after the previous step's checkpoint is written) until the test kills the process."""

    def __init__(self, path: str, pause_at_step: int = 0, marker: str = "", until_signal: bool = False) -> None:
        self.path, self.pause_at_step, self.marker, self.until_signal = path, pause_at_step, marker, until_signal

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.pause_at_step and trainer.global_step == self.pause_at_step:
            with open(self.marker, "w") as fh:
                fh.write(str(trainer.global_step))
            # Blocked here until the test's signal arrives (SIGKILL ends it; with until_signal, a SIGTERM or
            # SIGINT lets this batch finish). No timing is asserted.
            while not (self.until_signal and _signalled(trainer)):
                time.sleep(0.05)
        with open(self.path, "a") as fh:
            record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "ids": batch["sample_ids"].tolist()}
            fh.write(json.dumps(record) + "\n")


class Barrier(Callback):
    """Test callback: in `setup` (before the logger's folder is chosen), wait until `parties` processes have
    reached this point, so runs started together really choose their folders at the same moment."""

    def __init__(self, folder: str, parties: int = 2) -> None:
        self.folder, self.parties = folder, parties

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        os.makedirs(self.folder, exist_ok=True)
        open(os.path.join(self.folder, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 120
        while len(os.listdir(self.folder)) < self.parties:
            if time.monotonic() > deadline:
                raise RuntimeError("Barrier: the other process never arrived")
            time.sleep(0.02)


class RecordRanks(Callback):
    """Test callback for multi-process runs: each rank appends its rank, world size, step and sample ids to its
    own JSONL file, `{prefix}{rank}.jsonl`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "step": trainer.global_step,
                  "epoch": trainer.current_epoch, "ids": batch["sample_ids"].tolist()}
        with open(f"{self.prefix}{trainer.global_rank}.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")


class DeferFiniteCheck(Callback):
    """Test callback: run the GPU path of the non-finite loss check (read from the device only at logging
    steps and before saving) on the CPU."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lit_lora.callbacks.finite_loss import FiniteLossStop

        next(c for c in trainer.callbacks if isinstance(c, FiniteLossStop)).guard.defer = True


class HostReads:
    """Counts calls that copy a tensor's value to Python (`item`, `bool`, `float`, `int`, `tolist`) while
    active: on a GPU each one makes the host wait for every queued kernel. Reads of AdamW's own `step`
    counter are left out: without `fused`/`capturable` it is a CPU tensor even on a GPU (no wait)."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "HostReads":
        import sys

        import torch

        def counting(original: Any) -> Any:
            def wrapper(tensor: Any, *args: Any, **kwargs: Any) -> Any:
                if f"torch{os.sep}optim{os.sep}" not in sys._getframe(1).f_code.co_filename:
                    self.count += 1
                return original(tensor, *args, **kwargs)

            return wrapper

        for name in self.NAMES:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, counting(self._saved[name]))
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()


class CountHostReads(Callback):
    """Test callback: `HostReads` per training step, from one batch start to the next (the step's logging,
    callbacks and progress bar run after on_train_batch_end)."""

    def __init__(self) -> None:
        self.per_step: dict[int, int] = {}
        self._reads = HostReads()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._reads.__enter__()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step > 0:
            self.per_step[trainer.global_step] = self._reads.count
        self._reads.count = 0

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._reads.__exit__()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._reads.__exit__()


class _LossStep(torch.nn.Module):
    """LitLora's loss as one module call: MemTracker refuses a module (the chunked loss's head) called
    several times outside any parent module. SFT's summed NLL and its count, or another objective's
    training loss (and 1)."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.lit = module

    def forward(self, batch: dict) -> Any:
        from lit_lora.objectives.base import StepLayout
        from lit_lora.objectives.sft import SupervisedNll

        if isinstance(self.lit.objective, SupervisedNll):
            return self.lit.objective.nll(self.lit.model, batch)
        return self.lit.objective.training_loss(self.lit.model, batch, True, StepLayout(1, 1))[0], 1


def memtracker_activations(module: Any, batch: int, block: int, estimate: Any) -> int:
    """Activation bytes of one real forward + backward of `module` (a LitLora, its frozen weights turned into
    buffers), as torch's MemTracker counts them: its peak less `estimate`'s exact weights and gradients.
    A preference objective's step runs `batch` pairs whose chosen and rejected are `block` tokens each."""
    from torch.distributed._tools.mem_tracker import MemTracker

    # torch 2.13's MemTracker hooks every parameter's gradient, which a frozen one refuses; as buffers the
    # frozen weights hold the same bytes and run the same kernels.
    for m in module.model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and not p.requires_grad:
                del m._parameters[name]
                m.register_buffer(name, p.data, persistent=False)
    module.train()
    ids = torch.randint(3, 500, (batch, block), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    if "chosen_input_ids" in module.objective.batch_keys:  # a pair per row: two sequences of `block` tokens
        labels = ids.clone()
        labels[:, : block // 2] = -100  # the prompt
        rejected = torch.randint(3, 500, (batch, block), generator=torch.Generator().manual_seed(1))
        inputs = {"chosen_input_ids": ids, "chosen_labels": labels, "chosen_attention_mask": torch.ones_like(ids),
                  "rejected_input_ids": rejected, "rejected_labels": labels, "rejected_attention_mask": inputs[
                      "attention_mask"]}
    step = _LossStep(module)
    tracker = MemTracker()
    # The chunked loss takes each chunk's gradients inside the forward. MemTracker's module bookkeeping
    # ends every backward with a callback that forgets the modules still running forward, then refuses
    # them; its memory count (every live tensor, op by op) does not depend on that bookkeeping.
    tracker._mod_tracker._maybe_set_engine_callback = lambda: None
    tracker.track_external(step, ids)
    with tracker:  # forward and backward; the AdamW state is exact, not estimated
        nll, n = step(inputs)
        (nll / n).backward()
    peak = max(snapshot["Total"] for snapshot in tracker.get_tracker_snapshot("peak").values())
    return peak - estimate.weights - estimate.gradients


# Two processes on CPU (DDP over gloo) against one process with the same global batch: 32 training blocks of
# 32 tokens, 2 ranks x BATCH samples per step or one process x 2 * BATCH, 4 steps per epoch, 2 epochs.
N_TRAIN, BATCH, STEPS_PER_EPOCH, EPOCHS = 32, 4, 4, 2  # BATCH per rank; one process uses 2 * BATCH
DATA_SEED = 42  # LitLoraData's default seed
TOL = 1e-5  # max abs difference of LoRA weights, DDP vs one process (float32 summation order)
DDP_FLAGS = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")


def start_ddp(cwd: Any, *args: str, torchrun: bool = False) -> Any:
    """`fit` with 2 processes, started in the background: Lightning's launcher starts rank 1 itself, or
    torchrun starts both (the multi-node launch of docs/distributed.md, on one machine)."""
    import subprocess
    import sys

    os.makedirs(cwd, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("PL_GLOBAL_SEED", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else [
        sys.executable]
    return subprocess.Popen([*launch, "-m", "lit_lora.cli", "fit", *args, *DDP_FLAGS], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish_ddp(proc: Any) -> str:
    """What both ranks printed; fails on a nonzero exit or a hang."""
    import signal
    import subprocess

    import pytest

    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 too: it is in the same session
        out, _ = proc.communicate()
        pytest.fail(f"the DDP run hung:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def epoch_order(epoch: int, n: int = N_TRAIN) -> list[int]:
    """The seeded order of `n` training samples in `epoch`, as every run here reads them."""
    from lit_lora.data.samplers import ResumableSampler

    return ResumableSampler(n, seed=DATA_SEED).epoch_order(epoch)


def gpu_fit(cwd: Any, model_dir: Any, corpus: Any, *extra: str) -> Any:
    """A bf16-mixed `fit` on one CUDA GPU, in-process, run from `cwd` (made if missing)."""
    gpu = ("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
           "--trainer.log_every_n_steps", "2")
    os.makedirs(cwd, exist_ok=True)
    return run_cli(fit_args(model_dir, corpus, cwd, *gpu, *extra), cwd=cwd)


def checkpoint_file(run: Any, name: str) -> Any:
    """Checkpoint `name` of the run started in folder `run`."""
    return checkpoints_dir(run) / name


def save_qlora_base(folder: Any, model_type: str, fields: dict, seed: int = 0) -> Any:
    """A tiny random model of `model_type` with the quickstart tokenizer, saved as a user's folder is."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(QUICKSTART / "tokenizer"))
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=QLORA_VOCAB, bos_token_id=tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, **fields)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def packed_for_cpu_inference(layer: Any) -> bool:
    """Whether bitsandbytes has repacked this 4-bit layer's weight into its CPU inference layout."""
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def preference_pairs(n: int = 16) -> list[dict[str, str]]:
    """`n` preference pairs in TRL's standard form: each chosen answer ends with a sign-off its rejected one
    lacks (a rule the tiny random bases do not follow)."""
    names = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou", "Max", "Ned", "Oda",
             "Pat"]
    return [{"prompt": f"What does {name} sell?", "chosen": f" {name} sells apples. Bye!",
             "rejected": f" {name} sells pears."} for name in names[:n]]
