"""One command for the day a GPU is lent: the GPU tests, the memory estimate against CUDA's peak, and
throughput with MFU, in one table. Under 5 minutes on one H100/H200.

    python benchmarks/gpu_check.py                      # on the GPU machine, from a clean checkout
    python benchmarks/gpu_check.py --dry_run            # on a CPU: every step that does not need CUDA
    python benchmarks/gpu_check.py --out $OUT/gpu.md    # where each row is written as soon as it is measured

A machine without a package registry first installs the wheels `benchmarks/gpu_wheels.sh` downloaded on one
that has it (the GPU image holds torch, lightning, transformers, peft and tensorboard, but not datasets,
jsonargparse, liger-kernel or bitsandbytes):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site

Rows, in this order (a run cut short still leaves the rows it finished in `--out`):
  memory  GPT-2 small and XL shapes (random init, bf16 base, bf16-mixed, gradient checkpointing) at
          8 x 512, and XL on an nf4 base (QLoRA): `summary`'s estimate against
          `torch.cuda.max_memory_allocated` of a second training step
  test    each `gpu`-marked test (tests/e2e/test_gpu.py, tests/e2e/resume/): bf16-mixed fit and exact resume,
          fused AdamW, CUDA memory and MFU tags, `--model.compile true`, FSDP on one GPU, Liger's loss against the chunked one,
          QLoRA (nf4 base moved to the GPU, paged AdamW) with exact resume
  speed   benchmarks/throughput.py --device cuda at GPT-2 small, block 1024, bf16: tokens/s and MFU of
          lit_lora, the plain loop and the Trainer
  chat    benchmarks/chat_throughput.py --device cuda, bf16-mixed, both shapes on the length-skewed set:
          trained tokens/s of lit_lora, TRL's SFTTrainer and TRL with packing, and their held-out losses
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XL = {"n_embd": 1600, "n_layer": 48, "n_head": 25}
# name: (shape, extra LitLora settings). The QLoRA row is the README's 8 GB-card case (target <= 2,500 MB).
SHAPES = {"gpt2 (small)": ({}, {}), "gpt2-xl": (XL, {}), "gpt2-xl QLoRA nf4": (XL, {"quantization": "nf4"})}


class Table:
    """Rows printed and appended to `path` as they come, so a run cut short still reports what it did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write("| kind | check | result | detail | s |\n| --- | --- | --- | --- | --- |\n", mode="w")

    def row(self, kind: str, check: str, result: str, detail: str, seconds: float) -> None:
        line = f"| {kind} | {check} | {result} | {detail} | {seconds:.0f} |\n"
        print(line, end="", flush=True)
        self._write(line)

    def _write(self, text: str, mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def memory_rows(table: Table, dry_run: bool) -> None:
    import torch

    from lit_lora.constants import MB
    from lit_lora.estimate.memory import estimate_training_memory
    from lit_lora.training.module import LitLora
    from lit_lora.lora.build import without_weights

    settings = dict(tokenizer_name_or_path="unused", base_dtype="bfloat16", gradient_checkpointing=True, block_size=512)
    for name, (shape, extra) in SHAPES.items():
        start = time.perf_counter()
        with without_weights():
            estimate = estimate_training_memory(LitLora(model_config=shape, **settings, **extra).model, 8, 512,
                                                "bf16-mixed", True, "cuda")
        if dry_run:
            table.row("memory", f"{name} 8 x 512", "estimated", f"{estimate.total / MB:,.1f} MB (no GPU: not "
                      "measured)", time.perf_counter() - start)
            continue
        try:
            measured = _measured_peak(LitLora, shape, {**settings, **extra})
        except Exception as err:  # one row per failure: the table goes on
            table.row("memory", f"{name} 8 x 512", "FAILED", f"{type(err).__name__}: {err}"[:200],
                      time.perf_counter() - start)
            continue
        table.row("memory", f"{name} 8 x 512", f"{measured / estimate.total - 1:+.1%}",
                  f"measured {measured / MB:,.1f} MB, estimated {estimate.total / MB:,.1f} MB",
                  time.perf_counter() - start)
        torch.cuda.empty_cache()


def _measured_peak(module_class: type, shape: dict, settings: dict) -> int:
    """Peak allocated bytes of the second of two training steps (AdamW's state then exists)."""
    import torch

    from lit_lora.objectives.nll import model_nll

    torch.manual_seed(0)
    with torch.device("cuda"):
        module = module_class(model_config=shape, **settings)
    model = module.model.cuda().train()  # a quantized base loads on the CPU and moves, as Lightning moves it
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    ids = torch.randint(0, 50_000, (8, 512), device="cuda")
    for step in range(2):
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            nll, n = model_nll(model, ids, torch.ones_like(ids), ids)
        (nll / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del module, model, optimizer
    return int(peak)


# Where the `gpu`-marked tests are: the GPU checks, and the exact resume on a GPU with the other resumes.
GPU_TESTS = ("tests/e2e/test_gpu.py", "tests/e2e/resume/test_models.py")


def test_rows(table: Table, dry_run: bool, timeout: int) -> None:
    args = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-m", "gpu", *GPU_TESTS]
    if dry_run:
        args.append("--collect-only")
    start = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        out = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        table.row("test", " ".join(GPU_TESTS), "TIMEOUT", f"after {timeout} s", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    found = re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED)\S* (?:\[\d+\] )?\S*?::(\w+)(?: - (.*))?$", out, re.M)
    if dry_run:
        found = [("collected", name, "no GPU: not run") for name in re.findall(r"::(\w+)$", out, re.M)]
    for result, name, detail in found:
        table.row("test", name, result, (detail or "")[:200], seconds / max(1, len(found)))
    if not found:
        table.row("test", " ".join(GPU_TESTS), "NO RESULT", out.strip().splitlines()[-1][:200] if out.strip() else "",
                  seconds)


def speed_rows(table: Table, dry_run: bool, timeout: int) -> None:
    shape = (["--device", "cpu", "--n_layer", "1", "--n_embd", "64", "--n_head", "2", "--block_size", "32",
              "--batch_size", "2", "--steps", "1", "--repeats", "1", "--warmup", "1"] if dry_run else
             ["--device", "cuda", "--block_size", "1024", "--batch_size", "8", "--steps", "5", "--repeats", "5",
              "--warmup", "3"])
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), *shape], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        out = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        table.row("speed", "throughput.py", "TIMEOUT", f"after {timeout} s", time.perf_counter() - start)
        return
    lines = [line.strip() for line in out.splitlines() if re.match(r"\s*([abc] .*tokens/s|a/[bc] |MFU)", line)]
    seconds = time.perf_counter() - start
    for line in lines:
        table.row("speed", "GPT-2 small, block 1024, bf16" if not dry_run else "tiny shape on CPU (dry run)",
                  "measured", line.replace("|", "/")[:200], seconds / max(1, len(lines)))
    if not lines:
        table.row("speed", "throughput.py", f"rc {done.returncode}", (out.strip().splitlines() or [""])[-1][:200],
                  seconds)


def chat_rows(table: Table, dry_run: bool, timeout: int) -> None:
    setting = (["--device", "cpu", "--quick", "--shapes", "gpt2", "--sets", "examples", "--rounds", "1"] if dry_run
               else ["--device", "cuda", "--sets", "skewed", "--rounds", "3", "--steps", "5"])
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "chat_throughput.py"), *setting], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        out = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        table.row("chat", "chat_throughput.py", "TIMEOUT", f"after {timeout} s", time.perf_counter() - start)
        return
    # The table rows of each (shape, set), its loss check and its ratios.
    lines, shape = [], ""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|---") or not line.startswith(("|", "val losses", "lit_lora / ")):
            continue
        if "trained tok/s" in line:
            shape = cells[0]
        elif line.startswith("|"):
            lines.append((shape, cells[0], ", ".join(cells[1:])))
        else:
            lines.append((shape, "check", line))
    seconds = time.perf_counter() - start
    for where, run, line in lines:
        table.row("chat", f"{where}: {run}" + (" (dry run, CPU)" if dry_run else ", bf16-mixed"), "measured",
                  line.replace("|", "/")[:200], seconds / max(1, len(lines)))
    if not lines:
        table.row("chat", "chat_throughput.py", f"rc {done.returncode}", (out.strip().splitlines() or [""])[-1][:200],
                  seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry_run", action="store_true", help="on a CPU: every step that does not need CUDA")
    p.add_argument("--out", default="gpu_check.md", help="the table, written row by row")
    p.add_argument("--only", default="memory,test,speed,chat", help="which kinds of rows, e.g. 'memory,test'")
    p.add_argument("--test_timeout", type=int, default=150)
    p.add_argument("--speed_timeout", type=int, default=110)
    p.add_argument("--chat_timeout", type=int, default=240)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; use --dry_run on a CPU")
    table = Table(Path(args.out))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    try:
        import liger_kernel  # noqa: F401

        liger = "liger-kernel installed"
    except ImportError:
        liger = "no liger-kernel (chunked loss)"
    table.row("setup", device, "ok", f"torch {torch.__version__}, {liger}", 0)
    kinds = set(args.only.split(","))
    if "memory" in kinds:
        memory_rows(table, args.dry_run)
    if "test" in kinds:
        test_rows(table, args.dry_run, args.test_timeout)
    if "speed" in kinds:
        speed_rows(table, args.dry_run, args.speed_timeout)
    if "chat" in kinds:
        chat_rows(table, args.dry_run, args.chat_timeout)
    print(f"gpu_check: table in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
