"""Fine-tune quality: the validation loss lit_lora's defaults reach, against a plain PEFT loop at
constant learning rates and `transformers.Trainer`, on small GPT-2 and Llama bases 128, 384 and 768 wide,
pretrained here. Not a test.

    python benchmarks/quality.py                 # three bases, two seeds, every row: hours on 2 CPU cores
    python benchmarks/quality.py --only lit_lora # lit_lora's rows alone, for tuning the defaults
    python benchmarks/quality.py --only base,plain --json plain.json; python benchmarks/quality.py --only lit_lora --reuse plain.json

The bases are GPT-2 or Llama shapes (`--sizes`) with the real GPT-2 vocabulary, pretrained here on ../shared/data/tinyshakespeare
(seeded; cached under --cache_dir after the first run). Each is then LoRA-fine-tuned on
../shared/data/sherlock-holmes: its last --val_percent percent (cut at a paragraph) is the validation file
every run is scored on, the rest is the training file. Every run:

- sees the same batches in the same order for a seed: lit_lora's datamodule builds them (LitLoraData, the
  seed as data.seed), and the plain loop and the Trainer are fed that loader's batches;
- runs the same number of optimizer steps, with the same LoRA settings as conf/gpt2/lora.yaml;
- is scored by one function: the token-weighted NLL of the final weights on the validation file
  (`lit_lora.objectives.nll.model_nll`, summed over all tokens, divided by their count).

Rows: the base alone; `lit_lora fit --config conf/gpt2/lora.yaml` (its model and optimizer defaults: the
default learning rate replaces the config's 1e-3; only the data, steps and batch shape are set, plus no early
stopping and no gradient checkpointing, which change which steps run and how fast, not what a step computes);
a plain PEFT loop (torch AdamW at its defaults and a constant learning rate, no warm-up, no clipping);
`transformers.Trainer` with the TrainingArguments of PEFT's quicktour for LoRA (learning_rate=1e-3, weight_decay=0.01, and the Trainer's defaults: linear decay to
0, no warm-up, clipping at 1.0); and lit_lora's run again on the base quantized to 4 bits (`--model.quantization
nf4`: QLoRA's cost in quality on the same budget). A constant-rate run is scored at each step budget on the way (the first
steps of a longer run are the shorter run).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}  # conf/gpt2/lora.yaml
# Each family's LoRA targets: conf/gpt2/lora.yaml's, and lit_lora's defaults for Llama (every linear layer).
TARGETS = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
TRAINER_LR, TRAINER_WD = 1e-3, 0.01  # PEFT quicktour's TrainingArguments for LoRA
PRETRAIN_BATCH = 8
TOLERANCE = 0.02  # lit_lora's defaults within this of the best constant rate (and below the Trainer, when run)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="gpt2:4x128,llama:4x384,gpt2:4x768",
                   help="bases as [FAMILY:]LAYERSxWIDTH, FAMILY gpt2 (4 heads, the default) or llama (64-wide heads)")
    p.add_argument("--steps", default="30,90", help="optimizer-step budgets")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3", help="the plain loop's constant learning rates")
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--val_percent", type=float, default=3.0)
    p.add_argument("--pretrain_steps", type=int, default=300)
    p.add_argument("--only", default="", help="comma list of row kinds to run: base,lit_lora,qlora,plain,trainer")
    p.add_argument("--lit_lora_args", default="", help="extra `fit` options for the lit_lora row (tuning)")
    p.add_argument("--train_text", default=os.path.join(SHARED, "sherlock-holmes", "adventures_of_sherlock_holmes.txt"))
    p.add_argument("--pretrain_text", default=os.path.join(SHARED, "tinyshakespeare", "input.txt"))
    p.add_argument("--cache_dir", default=os.path.join(os.path.expanduser("~"), ".cache", "lit_lora", "quality"))
    p.add_argument("--jobs", type=int, default=2, help="processes, one per seed (1: all in this process)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--reuse", help="a --json file of an earlier run: its rows join this run's table (rerun only "
                   "the lit_lora rows after a change to the defaults: --only lit_lora --reuse FILE)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(SHARED, "gpt2-tokenizer"))


# -- bases ---------------------------------------------------------------------------------------------------


def family_of(size: str) -> tuple[str, int, int]:
    """'llama:4x384' -> ('llama', 4, 384); a size without a family is a GPT-2."""
    family, _, shape = size.rpartition(":")
    layers, width = (int(v) for v in shape.split("x"))
    return family or "gpt2", layers, width


def new_model(size: str, block: int) -> Any:
    """A randomly initialised causal LM of shape `size`, with GPT-2's vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    family, layers, width = family_of(size)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=4, n_positions=block))
    if family == "llama":  # SmolLM2's proportions: 64-wide heads, an MLP 8/3 as wide, tied embeddings
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=50257, hidden_size=width, intermediate_size=width * 8 // 3 // 64 * 64,
            num_hidden_layers=layers, num_attention_heads=width // 64, max_position_embeddings=block,
            tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256))
    raise SystemExit(f"--sizes: family {family!r} in {size!r}; expected gpt2 or llama")


def pretrained_base(size: str, args: argparse.Namespace) -> str:
    """A model of shape `size` pretrained from scratch on the pretraining text; cached by shape and steps."""
    family, layers, width = family_of(size)
    out = os.path.join(args.cache_dir, f"{family}-{layers}x{width}-block{args.block_size}-{args.pretrain_steps}steps")
    if os.path.exists(os.path.join(out, "pretraining.json")):
        with open(os.path.join(out, "pretraining.json")) as f:
            print(f"base {size}: cached in {out}: {json.load(f)['line']}", flush=True)
        return out
    tok = tokenizer()
    with open(args.pretrain_text, encoding="utf-8") as f:
        ids = torch.tensor(tok(f.read())["input_ids"])
    block = args.block_size
    blocks = ids[: len(ids) // block * block].view(-1, block)
    n_val = max(1, len(blocks) // 20)
    train, val = blocks[:-n_val], blocks[-n_val:]
    torch.manual_seed(0)
    model = new_model(size, block)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
    steps, warm, gen = args.pretrain_steps, max(1, args.pretrain_steps // 20), torch.Generator().manual_seed(0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))
    start, losses = time.time(), []
    model.train()
    for _ in range(steps):
        x = train[torch.randint(len(train), (PRETRAIN_BATCH,), generator=gen)]
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        val_loss = statistics.fmean(model(input_ids=val[i : i + 8], labels=val[i : i + 8]).loss.item()
                                    for i in range(0, len(val), 8))
    line = (f"pretrained {steps} steps x {PRETRAIN_BATCH} x {block} tokens on {os.path.basename(os.path.dirname(args.pretrain_text))} "
            f"in {time.time() - start:.0f} s: train loss {statistics.fmean(losses[:10]):.3f} (first 10 steps) -> "
            f"{statistics.fmean(losses[-20:]):.3f} (last 20), held-out loss {val_loss:.3f}")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    with open(os.path.join(out, "pretraining.json"), "w") as f:
        json.dump({"line": line}, f)
    print(f"base {size}: {line}", flush=True)
    return out


def family_of_base(base: str) -> str:
    with open(os.path.join(base, "config.json")) as f:
        return json.load(f)["model_type"]


def split_text(path: str, percent: float, out_dir: str) -> tuple[str, str]:
    """The text's head as the training file and its last `percent` percent, from a paragraph start, as the
    validation file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cut = text.find("\n\n", int(len(text) * (1 - percent / 100)))
    files = os.path.join(out_dir, "train.txt"), os.path.join(out_dir, "val.txt")
    for name, part in zip(files, (text[:cut], text[cut + 2 :])):
        with open(name, "w", encoding="utf-8") as f:
            f.write(part)
    return files


# -- the shared data and score ------------------------------------------------------------------------------


def data_module(base: str, files: tuple[str, str], seed: int, args: argparse.Namespace, cache: str) -> Any:
    from lit_lora.data.datamodule import LitLoraData

    dm = LitLoraData(train_files=files[0], val_files=files[1], block_size=args.block_size,
                     batch_size=args.batch_size, seed=seed, tokenizer_name_or_path=base, cache_dir=cache)
    with contextlib.redirect_stdout(io.StringIO()):
        dm.prepare_data()
        dm.setup("fit")
    return dm


def train_batches(dm: Any, steps: int) -> list[dict[str, torch.Tensor]]:
    """The first `steps` batches lit_lora's fit trains on: its loader, epoch after epoch."""
    with contextlib.redirect_stdout(io.StringIO()):
        loader = dm.train_dataloader()
    batches: list[dict[str, torch.Tensor]] = []
    epoch = 0
    while len(batches) < steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            batches.append(batch)
            if len(batches) == steps:
                break
        epoch += 1
    return batches[:steps]


@torch.no_grad()
def val_loss(model: Any, dm: Any) -> float:
    from lit_lora.objectives.nll import model_nll

    was_training = model.training
    model.eval()
    nll, n = 0.0, 0
    for batch in dm.val_dataloader():
        s, c = model_nll(model, batch["input_ids"], batch.get("attention_mask"), batch["labels"],
                         position_ids=batch.get("position_ids"))
        nll, n = nll + float(s), n + int(c)
    model.train(was_training)
    return nll / n


def peft_model(base: str, seed: int) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    family = model.config.model_type
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=family == "gpt2",
                                            target_modules=TARGETS[family], **LORA))


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}


# -- the rows ------------------------------------------------------------------------------------------------


def run_base(base: str, dm: Any) -> float:
    from transformers import AutoModelForCausalLM

    return val_loss(AutoModelForCausalLM.from_pretrained(base), dm)


def run_plain(base: str, dm: Any, budgets: list[int], lr: float, seed: int) -> dict[int, float]:
    model = peft_model(base, seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    scores = {}
    for step, batch in enumerate(train_batches(dm, max(budgets)), start=1):
        model(**model_inputs(batch), use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step in budgets:
            scores[step] = val_loss(model, dm)
    return scores


def run_trainer(base: str, dm: Any, steps: int, seed: int, work: str) -> float:
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    class InOrder(Trainer):  # lit_lora's batches, in its order (each dataset item is one whole batch)
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)

    model = peft_model(base, seed)
    targs = TrainingArguments(output_dir=os.path.join(work, "trainer"), learning_rate=TRAINER_LR,
                              weight_decay=TRAINER_WD, per_device_train_batch_size=1, max_steps=steps, seed=seed,
                              save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                              logging_strategy="no", remove_unused_columns=False)
    batches = [model_inputs(b) for b in train_batches(dm, steps)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        InOrder(model=model, args=targs, train_dataset=batches, data_collator=lambda items: items[0]).train()
    return val_loss(model, dm)


QLORA_ARGS = ["--model.quantization", "nf4"]  # the QLoRA row: lit_lora's defaults on a 4-bit base


def run_lit_lora(base: str, files: tuple[str, str], dm: Any, steps: int, seed: int, work: str,
                 extra: list[str]) -> float:
    from lit_lora.cli.trainer_cli import LitLoraCLI
    from lit_lora.training.module import LitLora

    # The config states GPT-2 small's rate; this row measures the default learning rate.
    default_lr = inspect.signature(LitLora.__init__).parameters["learning_rate"].default
    args = ["fit", "--config", os.path.join(REPO, "conf", "gpt2", "lora.yaml"), "--model.learning_rate", str(default_lr),
            "--model.model_name_or_path", base,
            "--data.train_files", files[0], "--data.val_files", files[1],
            "--data.block_size", str(dm.hparams.block_size), "--data.batch_size", str(dm.hparams.batch_size),
            "--data.seed", str(seed), "--seed_everything", str(seed), "--data.num_workers", "0",
            "--data.cache_dir", dm.hparams.cache_dir,
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", os.path.join(work, "logs"),
            "--early_stopping.patience", "1000000", "--model.gradient_checkpointing", "false",
            "--model.lora.target_modules", json.dumps(TARGETS[family_of_base(base)]), *extra]
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        cli = LitLoraCLI(args=args)
    assert cli.trainer.global_step == steps, f"lit_lora ran {cli.trainer.global_step} steps, not {steps}:\n{log.getvalue()}"
    return val_loss(cli.model.model, dm)


# -- the table -----------------------------------------------------------------------------------------------


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(results: dict[tuple[str, int], dict[str, list[float]]], lrs: list[float]) -> list[str]:
    cols = ["base", "lit_lora"] + [f"plain {lr:g}" for lr in lrs] + ["Trainer", "QLoRA nf4"]
    lines = ["| base | steps | " + " | ".join(cols) + " | lit_lora - best plain | target met | QLoRA - lit_lora |",
             "|---" * (len(cols) + 5) + "|"]
    for (size, steps), row in results.items():
        mean = {c: statistics.fmean(row[c]) for c in cols if row.get(c)}
        plain = [mean[c] for c in cols if c.startswith("plain") and c in mean]
        gap = mean["lit_lora"] - min(plain) if plain and "lit_lora" in mean else None
        met = "" if gap is None else (
            "yes" if gap <= TOLERANCE and mean["lit_lora"] < mean.get("Trainer", math.inf) else "NO")
        qlora = mean["QLoRA nf4"] - mean["lit_lora"] if "QLoRA nf4" in mean and "lit_lora" in mean else None
        lines.append(f"| {size} | {steps} | " + " | ".join(cell(row.get(c, [])) for c in cols)
                     + f" | {'' if gap is None else f'{gap:+.3f}'} | {met} | {'' if qlora is None else f'{qlora:+.3f}'} |")
    return lines


def measure(args: argparse.Namespace, sizes: list[str], budgets: list[int], seeds: list[int]) -> dict:
    """{(size, budget): {row kind: [final validation loss per seed]}} for the runs of this process."""
    lrs = [float(v) for v in args.lrs.split(",")]
    kinds = set(args.only.split(",")) if args.only else {"base", "lit_lora", "qlora", "plain", "trainer"}
    extra = args.lit_lora_args.split()
    results: dict[tuple[str, int], dict[str, list[float]]] = {(s, b): {} for s in sizes for b in budgets}
    seconds: dict[str, float] = {}

    def timed(kind: str, fn: Any, *fn_args: Any) -> Any:
        t0 = time.time()
        out = fn(*fn_args)
        seconds[kind] = seconds.get(kind, 0.0) + time.time() - t0
        return out

    with tempfile.TemporaryDirectory(prefix="lit_lora_quality_") as work:
        files = split_text(args.train_text, args.val_percent, work)
        cache = os.path.join(work, "hf-cache")
        for size in sizes:
            base = pretrained_base(size, args)
            row = lambda b: results[(size, b)]  # noqa: E731
            for seed in seeds:
                t0 = time.time()
                dm = timed("data", data_module, base, files, seed, args, cache)
                if "base" in kinds and seed == seeds[0]:  # the same for every seed
                    loss = timed("base", run_base, base, dm)
                    for b in budgets:
                        row(b)["base"] = [loss]
                for b in budgets:
                    if "lit_lora" in kinds:
                        row(b).setdefault("lit_lora", []).append(
                            timed("lit_lora", run_lit_lora, base, files, dm, b, seed, work, extra))
                    if "qlora" in kinds:  # the same run on the base quantized to 4 bits (README: QLoRA)
                        row(b).setdefault("QLoRA nf4", []).append(timed(
                            "qlora", run_lit_lora, base, files, dm, b, seed, work, extra + QLORA_ARGS))
                    if "trainer" in kinds:
                        row(b).setdefault("Trainer", []).append(timed("Trainer", run_trainer, base, dm, b, seed, work))
                if "plain" in kinds:
                    for lr in lrs:
                        for b, loss in timed("plain", run_plain, base, dm, budgets, lr, seed).items():
                            row(b).setdefault(f"plain {lr:g}", []).append(loss)
                print(f"{size} seed {seed}: {time.time() - t0:.0f} s; " + "; ".join(
                    f"{b} steps: " + ", ".join(f"{c} {v[-1]:.3f}" for c, v in row(b).items()) for b in budgets),
                    flush=True)
    print("seconds per kind: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), flush=True)
    return results


def in_parallel(args: argparse.Namespace, seeds: list[int]) -> dict:
    """One process per seed, the cores shared out (each process's threads scale poorly at these sizes)."""
    import subprocess

    threads = max(1, (os.cpu_count() or 1) // len(seeds))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="lit_lora_quality_jobs_") as tmp:
        argv = sys.argv[1:]
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--seeds", str(seed),
                                   "--jobs", "1", "--child", "--json", os.path.join(tmp, f"{seed}.json")], env=env)
                 for seed in seeds]
        if any(p.wait() for p in procs):
            sys.exit("a seed's process failed (its output is above)")
        for seed in seeds:
            with open(os.path.join(tmp, f"{seed}.json")) as f:
                for key, row in json.load(f).items():
                    size, steps = key.split()
                    merged = results.setdefault((size, int(steps)), {})
                    for col, values in row.items():
                        merged.setdefault(col, []).extend(values)
    for row in results.values():  # the base alone does not depend on the seed
        if "base" in row:
            row["base"] = row["base"][:1]
    return results


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric"):  # "GPU available: False", tips
        logging.getLogger(name).setLevel(logging.ERROR)
    sizes, budgets = args.sizes.split(","), sorted(int(s) for s in args.steps.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.time()
    if args.jobs > 1 and len(seeds) > 1:
        for size in sizes:  # pretrained (or read from the cache) once, before the seeds' processes start
            pretrained_base(size, args)
        results = in_parallel(args, seeds)
    else:
        results = measure(args, sizes, budgets, seeds)
    if args.child:  # a seed's process: the parent prints the table
        with open(args.json, "w") as f:
            json.dump({f"{s} {b}": row for (s, b), row in results.items()}, f)
        return
    if args.reuse:
        with open(args.reuse) as f:
            for key, row in json.load(f).items():
                size, steps = key.split()
                for col, values in row.items():
                    results.setdefault((size, int(steps)), {}).setdefault(col, values)
    print(f"\nblock {args.block_size} x batch {args.batch_size}, seeds {args.seeds}, lit_lora extra options: "
          f"{args.lit_lora_args or 'none'}; mean ± half the spread over seeds; {time.time() - start:.0f} s in all\n")
    print("\n".join(table(results, [float(v) for v in args.lrs.split(",")])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{s} {b}": row for (s, b), row in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
