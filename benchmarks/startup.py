"""Start-up cost of the command line against `python -c "import lightning.pytorch"`.

    python benchmarks/startup.py               # 5 interleaved rounds, ~5 minutes on 2 busy cores
    python benchmarks/startup.py --repeats 9

Target (issue 7): `--help` and bad-input errors cost at most 1.2x the bare Lightning import. Each round runs
every command once, in the same order (baseline first); the ratio of a round compares runs made seconds
apart, and the medians over rounds are reported. Commands run from the repository root, offline.
"""

from __future__ import annotations

import argparse
import os
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


def run(cmd: list[str]) -> tuple[float, int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    last = (out.stderr.strip().splitlines() or out.stdout.strip().splitlines() or [""])[-1]
    return elapsed, out.returncode, last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target", type=float, default=1.2)
    args = p.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    results: dict[str, tuple[int, str]] = {}
    for r in range(args.repeats):
        for name, cmd in COMMANDS.items():
            elapsed, code, last = run(cmd)
            times[name].append(elapsed)
            results[name] = (code, last)
        base = times[BASELINE][-1]
        print(f"round {r + 1}: baseline {base:.2f} s; "
              + ", ".join(f"{t[-1] / base:.2f}" for n, t in times.items() if n != BASELINE), flush=True)
    print(f"\nmedians over {args.repeats} interleaved rounds ({os.cpu_count()} CPUs):")
    print(f"{'command':<36} {'median s':>9} {'x baseline':>11} {'round ratios':>18}  exit  last line")
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[BASELINE])]
        med = statistics.median(ratios)
        verdict = "" if name == BASELINE else ("  ok" if med <= args.target else "  OVER")
        code, last = results[name]
        print(f"{name:<36} {statistics.median(ts):>9.2f} {med:>10.2f}x {min(ratios):>8.2f}..{max(ratios):<8.2f}"
              f"  {code:>4}  {last[:70]}{verdict}")


if __name__ == "__main__":
    main()
