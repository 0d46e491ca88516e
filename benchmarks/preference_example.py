"""The preference example learns its rule: held-out reward accuracy and how often `generate` ends an answer
with " Bye!", before and after `fit --config conf/dpo.yaml` and `conf/orpo.yaml`, and for the chain SFT
(conf/quickstart.yaml) -> DPO from the exported SFT adapter. docs/preference-tuning.md quotes its table.

    python benchmarks/preference_example.py                   # all three runs, ~5 min of CPU time
    python benchmarks/preference_example.py --runs dpo        # one of dpo, orpo, chain

Each command runs as the docs give it, as a subprocess in its own folder under --out (the repository's
`examples` and `conf` linked in, so the configs' relative paths hold), and is printed before it runs:

- before, reward accuracy: `validate` with the run's config (and the starting adapter), i.e. the model
  the run starts from against its reference;
- after, reward accuracy: the `val_rewards/accuracies` TensorBoard logged at the step of the exported
  (best `val_loss`) checkpoint;
- generation: `generate --temperature 0` on the 64 held-out prompts of examples/preference/val.jsonl, in
  this process (same options as the command line). Before: the starting adapter (the chain), or the base
  itself: a random-init base has no folder to name, so it is the exported adapter switched off.

"Ends with Bye!": the completion ends with " Bye!". "Answer + Bye!": it holds at least two words before
that sign-off, i.e. an answer then the sign-off, not the sign-off alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VAL = REPO / "examples" / "preference" / "val.jsonl"
SIGN_OFF = " Bye!"


def cli(folder: Path, *args: str) -> tuple[str, float, float]:
    """`python -m lit_lora.cli ARGS` run in `folder`: (its output, wall seconds, CPU seconds)."""
    print("$ python -m lit_lora.cli " + " ".join(args), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lit_lora.cli", *args], cwd=folder, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr, wall, cpu


def run_folder(out: Path, name: str) -> Path:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=False)
    for link in ("examples", "conf"):
        (folder / link).symlink_to(REPO / link)
    return folder


def validated_accuracy(text: str) -> float:
    found = re.findall(r"val_rewards/accuracies\W+(-?\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    if not found:
        sys.exit(f"validate printed no val_rewards/accuracies:\n{text[-2000:]}")
    return float(found[-1])


def logged_accuracy(version: Path, step: int) -> float:
    """`val_rewards/accuracies` in the run folder `version` at the validation that ended at optimizer step
    `step` (logged at step - 1)."""
    sys.path.insert(0, str(REPO))
    from tests.helpers import scalars

    logged = dict(scalars(str(version), "val_rewards/accuracies"))
    return logged[step - 1]


def exported(text: str, folder: Path) -> tuple[Path, int]:
    """The adapter folder `fit` exported and the step of the checkpoint it came from."""
    match = re.search(r"exported step(\d+)-\S+ as a PEFT adapter to (\S+)", text)
    if not match:
        sys.exit(f"fit exported no adapter:\n{text[-2000:]}")
    return folder / match.group(2), int(match.group(1))


def rule_counts(folder: Path, adapter: Path, switched_off: bool = False) -> tuple[int, int, int]:
    """(completions ending with the sign-off, those with an answer before it, prompts), greedy, in this
    process with `generate`'s options."""
    from lit_lora.cli.generate import build_parser
    from lit_lora.cli.tool_parser import settings_from_options
    from lit_lora.generation.prompts import generate_records, read_prompts
    from lit_lora.generation.settings import GenerationSettings
    from lit_lora.loading import load_generation_model

    argv = ["--adapter_path", str(adapter), "--prompts_file", str(VAL), "--max_new_tokens", "24",
            "--temperature", "0", "--device", "cpu"]
    print("$ python -m lit_lora.cli generate " + " ".join(argv) + ("   # adapter switched off" if switched_off else ""))
    args = build_parser().parse_args(argv)
    settings = settings_from_options(GenerationSettings, args)
    cwd = os.getcwd()
    os.chdir(folder)  # the adapter names its tokenizer relative to the run's folder
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            model, tokenizer = load_generation_model(adapter_path=str(adapter), device="cpu")
        prompts = read_prompts(str(VAL))
        with model.disable_adapter() if switched_off else contextlib.nullcontext():
            records = list(generate_records(model, tokenizer, prompts, settings, args.batch_size))
    finally:
        os.chdir(cwd)
    ends = [r["completion"] for r in records if r["completion"].endswith(SIGN_OFF)]
    answered = [c for c in ends if len(c[: -len(SIGN_OFF)].split()) >= 2]
    example = records[0]
    print(f"  e.g. {example['prompt']!r} -> {example['completion']!r}")
    return len(ends), len(answered), len(records)


def preference_run(out: Path, name: str, config: str, start: Path | None = None) -> dict:
    folder = run_folder(out, name)
    extra = ["--model.adapter_path", str(start)] if start else []
    text, _, _ = cli(folder, "validate", "--config", config, *extra)
    before = validated_accuracy(text)
    text, wall, cpu = cli(folder, "fit", "--config", config, *extra, "--trainer.enable_progress_bar", "false")
    adapter, step = exported(text, folder)
    after = logged_accuracy(adapter.parent, step)  # validate wrote version_0 before
    gen_before = rule_counts(folder, start, False) if start else rule_counts(folder, adapter, switched_off=True)
    gen_after = rule_counts(folder, adapter)
    return dict(run=name, before=before, after=after, gen_before=gen_before, gen_after=gen_after, wall=wall,
                cpu=cpu, step=step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="dpo,orpo,chain", help="comma-separated: dpo, orpo, chain")
    parser.add_argument("--out", default=f"/tmp/preference_example_{os.getpid()}", help="a new folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True)
    rows = []
    for run in args.runs.split(","):
        if run in ("dpo", "orpo"):
            rows.append(preference_run(out, run, f"conf/{run}.yaml"))
        elif run == "chain":
            folder = run_folder(out, "sft")
            text, wall, cpu = cli(folder, "fit", "--config", "conf/quickstart.yaml", "--trainer.enable_progress_bar",
                                  "false")
            sft, _ = exported(text, folder)
            print(f"  SFT: {wall:.0f} s wall, {cpu:.0f} s CPU")
            row = preference_run(out, "sft->dpo", "conf/dpo.yaml", start=sft)
            row["wall"] += wall
            row["cpu"] += cpu
            rows.append(row)
        else:
            sys.exit(f"--runs: unknown run {run!r} (dpo, orpo, chain)")
    print(f"\n{'run':<9} {'reward acc. before':>18} {'after':>6} {'ends with Bye! before':>22} {'after':>6} "
          f"{'answer + Bye! before':>21} {'after':>6} {'wall s':>7} {'CPU s':>6}")
    for r in rows:
        n = r["gen_before"][2]
        print(f"{r['run']:<9} {r['before']:>18.3f} {r['after']:>6.3f} {r['gen_before'][0]:>19}/{n} "
              f"{r['gen_after'][0]:>3}/{n} {r['gen_before'][1]:>18}/{n} {r['gen_after'][1]:>3}/{n} "
              f"{r['wall']:>7.0f} {r['cpu']:>6.0f}")
    print("(wall and CPU: the fit commands, SFT included for the chain; not validate nor generate)")
    (out / "table.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
