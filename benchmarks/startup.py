"""Start-up cost of the command line against `python -c "import lightning.pytorch"`.

    python benchmarks/startup.py               # 5 interleaved rounds, ~5 minutes on 2 busy cores
    python benchmarks/startup.py --repeats 9

Target: `--help` and bad-input errors cost at most 1.2x the bare Lightning import. Each round runs
every command once, in the same order (baseline first); the ratio of a round compares runs made seconds
apart, and the medians over rounds are reported. Commands run from the repository root, offline.

Two clocks: wall time (what the user waits) and CPU time (user + system seconds of the command's process
tree, from `getrusage(RUSAGE_CHILDREN)`). On a shared machine the wall time of a ~10 s import swings by 2x
with other people's load; the CPU time moves less, so its ratio is the steadier measure of the cost.

A second table splits one process: it imports lightning.pytorch, then runs the command through
`lit_lora.cli.main` in the same process, timing both parts on both clocks. Both parts see the same
machine load, so (import + command) / import is the least noisy form of the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = "examples/quickstart/tokenizer"
PY = sys.executable

COMMANDS: dict[str, list[str]] = {
    "import lightning.pytorch (baseline)": [PY, "-c", "import lightning.pytorch"],
    "lit_lora.cli --help": [PY, "-m", "lit_lora.cli", "--help"],
    "lit_lora.cli fit --help": [PY, "-m", "lit_lora.cli", "fit", "--help"],
    "fit: missing train file": [PY, "-m", "lit_lora.cli", "fit", "--data.train_files", "missing.txt",
                                "--model.model_config", "{}", "--model.tokenizer_name_or_path", TOKENIZER],
    "fit: bad LoRA rank": [PY, "-m", "lit_lora.cli", "fit", "--data.train_files", "examples/quickstart/train.txt",
                           "--model.model_config", "{}", "--model.tokenizer_name_or_path", TOKENIZER,
                           "--model.lora.r", "0"],
    "fit: unknown option": [PY, "-m", "lit_lora.cli", "fit", "--model.nope", "1"],
    "unknown subcommand": [PY, "-m", "lit_lora.cli", "fitt"],
}
BASELINE = next(iter(COMMANDS))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user + system of the command and its children), exit code, last line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cpu0, start = _children_cpu(), time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu0
    last = (out.stderr.strip().splitlines() or out.stdout.strip().splitlines() or [""])[-1]
    return elapsed, cpu, out.returncode, last


def split_child(argv: list[str]) -> None:
    """In this process: import lightning.pytorch, then run `lit_lora.cli.main(argv)`; print both costs."""
    import contextlib
    import io

    c0, w0 = time.process_time(), time.perf_counter()
    import lightning.pytorch  # noqa: F401

    c1, w1 = time.process_time(), time.perf_counter()
    sys.path.insert(0, str(REPO))
    from lit_lora.cli import main as cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli(argv)
        except SystemExit:
            pass
    c2, w2 = time.process_time(), time.perf_counter()
    print(f"{c1 - c0} {c2 - c1} {w1 - w0} {w2 - w1}")


def split(args: argparse.Namespace) -> None:
    names = [n for n, cmd in COMMANDS.items() if cmd[1:3] == ["-m", "lit_lora.cli"] and len(cmd) > 4]
    cost: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in names}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for _ in range(args.repeats):
        for name in names:
            out = subprocess.run([PY, __file__, "--_split", *COMMANDS[name][3:]], cwd=REPO, env=env,
                                 capture_output=True, text=True, check=True)
            cost[name].append(tuple(float(x) for x in out.stdout.split()[-4:]))
    print(f"\nsame process: import lightning.pytorch, then the command ({args.repeats} runs each, medians)")
    print(f"{'command':<36} {'import cpu s':>12} {'+ command':>10} {'ratio':>6} {'wall ratio':>11}")
    for name in names:
        c_imp, c_cmd, w_imp, w_cmd = (statistics.median(x[i] for x in cost[name]) for i in range(4))
        r_cpu = statistics.median((x[0] + x[1]) / x[0] for x in cost[name])
        r_wall = statistics.median((x[2] + x[3]) / x[2] for x in cost[name])
        verdict = "ok" if r_cpu <= args.target else "OVER"
        print(f"{name:<36} {c_imp:>12.2f} {c_cmd:>10.2f} {r_cpu:>5.2f}x {r_wall:>10.2f}x  {verdict}")


def main() -> None:
    if sys.argv[1:2] == ["--_split"]:
        return split_child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target", type=float, default=1.2)
    p.add_argument("--skip_split", action="store_true", help="only the separate-process table")
    args = p.parse_args()
    wall: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    results: dict[str, tuple[int, str]] = {}
    for r in range(args.repeats):
        for name, cmd in COMMANDS.items():
            elapsed, seconds, code, last = run(cmd)
            wall[name].append(elapsed)
            cpu[name].append(seconds)
            results[name] = (code, last)
        print(f"round {r + 1}: baseline wall {wall[BASELINE][-1]:.2f} s, cpu {cpu[BASELINE][-1]:.2f} s; cpu ratios "
              + ", ".join(f"{t[-1] / cpu[BASELINE][-1]:.2f}" for n, t in cpu.items() if n != BASELINE), flush=True)
    print(f"\nmedians over {args.repeats} interleaved rounds ({os.cpu_count()} CPUs); ratio = median of the rounds' "
          "ratios to the baseline")
    print(f"{'command':<36} {'wall s':>7} {'ratio':>6} {'cpu s':>6} {'ratio':>6}  exit  last line")
    for name in COMMANDS:
        r_wall = statistics.median(t / b for t, b in zip(wall[name], wall[BASELINE]))
        r_cpu = statistics.median(t / b for t, b in zip(cpu[name], cpu[BASELINE]))
        verdict = "" if name == BASELINE else ("  ok" if max(r_wall, r_cpu) <= args.target else
                                               "  OVER (cpu)" if r_cpu > args.target else "  OVER (wall)")
        code, last = results[name]
        print(f"{name:<36} {statistics.median(wall[name]):>7.2f} {r_wall:>5.2f}x {statistics.median(cpu[name]):>6.2f} "
              f"{r_cpu:>5.2f}x  {code:>4}  {last[:60]}{verdict}")
    if not args.skip_split:
        split(args)


if __name__ == "__main__":
    main()
