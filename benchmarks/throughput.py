"""Training throughput: lit_lora vs a plain PyTorch loop vs `transformers.Trainer`, on the same PEFT model.

    python benchmarks/throughput.py                        # GPT-2 small shape on CPU: ~4 minutes on 2 quiet cores
    python benchmarks/throughput.py --repeats 30           # longer interleaving, steadier medians (~8 minutes)
    python benchmarks/throughput.py --kinds ab             # lit_lora vs the plain loop only
    python benchmarks/throughput.py --lit_lora_args "--model.base_dropout null"   # lit_lora without that default
    python benchmarks/throughput.py --kinds aq             # QLoRA (nf4 base) vs lit_lora: its cost in speed
    python benchmarks/throughput.py --device cuda --batch_size 8 --block_size 512 --steps 10 --repeats 10

CPU defaults: GPT-2 small's shape (12 x 768, random init), LoRA r=8/alpha=16/dropout=0.05 on c_attn and
c_proj (lit_lora's defaults), block 128 x batch 2 = 256 tokens per step (~2 s per step on 2 cores), fp32,
no gradient checkpointing, no clipping, no dataloader workers, train loss logged every 10 steps, progress
bars on; 3 warm-up steps, then 12 rounds of 2 timed steps per run.

Three runs of the same model shape (random init: no download), LoRA config, data, block size, batch size,
optimizer and step count:

  a  lit_lora: `LitLoraCLI` `fit`, in-process in its worker, with every callback a real run has (checkpoint,
     early stopping, LR monitor, TensorBoard logger, progress bar) and a gate callback added for timing
  b  plain:    the PEFT model, forward + backward + AdamW step over a pre-tokenized tensor; nothing else
  c  trainer:  `transformers.Trainer` with the run_clm `group_texts` recipe (datasets `text` loader,
     tokenize, concatenate, chunk into block_size, labels = input_ids, `default_data_collator`)

Each run lives in its own worker process (one process tree; peak memory is per worker). Workers start,
load data and build the model, run `--warmup` untimed steps, then wait. The parent then interleaves timed
segments of `--steps` steps, `--repeats` rounds of one segment per run, rotating the order each round
(a b c, b c a, c a b, ...: each run follows each other run equally often); only one worker runs at a time. A
segment's clock starts when the worker is released and stops after the optimizer step of its last step
(after `torch.cuda.synchronize()` on CUDA), so each segment holds `--steps` whole train-loop iterations
(data loading, logging and callbacks included). Reported: median tokens/s per run, peak memory up to the
end of the last timed step (worker `ru_maxrss` on CPU, `torch.cuda.max_memory_allocated` on CUDA; the
value at the worker's exit, after lit_lora's end-of-fit checkpoint and adapter export, is shown beside
it), and the medians of the per-round ratios
a/b and a/c (each ratio compares segments run back to back, which cancels most of the drift of a shared
machine's load). On CPU the ratios are also given by CPU time (tokens per CPU-second of the worker process),
which other processes' load disturbs less than wall time.

The settings that decide the comparison (precision, gradient checkpointing, dropout, clipping, workers,
checkpointing, logging) are read back from the live objects of each worker and printed side by side;
the benchmark stops if they differ, except dropout: lit_lora's default turns the base model's off. So
each run's trained model is then scored by one function on held-out blocks (the corpus's last
`--val_percent`, which no run trains on): lit_lora's lead counts at a validation loss no worse than the
best other run's plus 0.01. `--lit_lora_args` passes `fit` options to run a, e.g. a default turned off.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
KINDS = {"a": "lit_lora", "b": "plain", "c": "trainer", "q": "QLoRA"}  # q: run a on the base quantized to nf4
SEED = 1234
# The plain loop's and the Trainer's optimizer (lit_lora's run keeps its own defaults).
LR, BETAS, WARMUP_LR_STEPS = 2e-4, (0.9, 0.999), 100
TARGET, LOSS_TOLERANCE = 1.10, 0.01  # lit_lora's lead over each, at a validation loss no worse than theirs

# Dense bf16 peak TFLOP/s for the MFU report (override with --peak_tflops).
PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0,
               "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 3070": 40.6, "RTX 4090": 165.2}


# -- settings shared by the three runs ----------------------------------------------------------------------

def model_shape(args: argparse.Namespace) -> dict[str, int]:
    return {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head, "n_positions": args.n_positions}


def build_peft_model(args: argparse.Namespace) -> Any:
    """The PEFT model exactly as `LitLora._build_model` builds it: the same lit_lora functions, the same seed.
    (Not through LitLora itself, so the plain loop and the Trainer do not import Lightning.)"""
    import torch

    from lit_lora.pretrained.hub import load_base_model
    from lit_lora.lora import LoraSettings
    from lit_lora.lora.wrap import apply_lora

    torch.manual_seed(SEED)
    base = load_base_model("random-init", model_shape(args), args.base_dtype, "sdpa")
    model = apply_lora(base, LoraSettings())
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if args.gradient_checkpointing:  # = lit_lora.lora.wrap.enable_checkpointing
        inner = model.get_base_model()
        kwargs = {"use_reentrant": False}
        if hasattr(inner, "activation_checkpointing_enable"):
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        inner.enable_input_require_grads()
    return model.train()


def describe_model(model: Any) -> dict[str, str]:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = inner.config
    ckpt = getattr(inner, "is_activation_checkpointing", None)
    if ckpt is None:
        ckpt = getattr(inner, "is_gradient_checkpointing", False)
    lora_dropout = model.peft_config["default"].lora_dropout if hasattr(model, "peft_config") else "-"
    from lit_lora.pretrained.quantization import is_quantized_weight, logical_numel, quantization_line

    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()
                     if not p.requires_grad and not is_quantized_weight(p)})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(logical_numel(p) for p in model.parameters())
    return {
        "model": f"GPT-2 {cfg.n_layer}x{cfg.n_embd}, {total / 1e6:.1f}M params, {trainable:,} trainable",
        "frozen base dtype": ",".join(dtypes),
        "gradient checkpointing": "on (non-reentrant)" if ckpt else "off",
        "dropout": f"model {cfg.resid_pdrop}/{cfg.embd_pdrop}/{cfg.attn_pdrop}, LoRA {lora_dropout}, "
                   f"{'train' if model.training else 'EVAL'} mode",
        "attention": str(getattr(cfg, "_attn_implementation", "?")),
        "quantized": quantization_line(model) or "no",
    }


# -- the gate: timed segments, released by the parent ---------------------------------------------------

class Gate:
    """Counts optimizer steps. After the warm-up steps and after every `steps` timed steps it reports to the
    parent and blocks until released, so exactly one worker runs at a time."""

    def __init__(self, conn: Any, args: argparse.Namespace) -> None:
        self.conn, self.warmup, self.steps = conn, args.warmup, args.steps
        self.total = args.warmup + args.steps * args.repeats
        self.cuda = args.device == "cuda"
        self.n = 0
        self.t0 = self.c0 = 0.0
        self.settings: dict[str, str] = {}

    def step_done(self) -> None:
        self.n += 1
        if self.n < self.warmup or (self.n - self.warmup) % self.steps:
            return
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        now, cpu = time.perf_counter(), time.process_time()
        if self.n == self.warmup:
            self.conn.send(("ready", self.settings))
        else:
            self.conn.send(("segment", (now - self.t0, cpu - self.c0, _peak_memory(self.cuda))))
        msg = self.conn.recv()  # "go" or, after the last segment, "finish"
        if msg == "abort":
            os._exit(3)
        self.c0, self.t0 = time.process_time(), time.perf_counter()


def _peak_memory(cuda: bool) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        import torch

        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _speed_settings(compiled: bool) -> dict[str, str]:
    import torch

    return {
        "torch.compile": "on" if compiled else "off",
        # "high" = TF32 on CUDA GPUs that have it; no effect on CPUs.
        "fp32 matmul precision": torch.get_float32_matmul_precision(),
    }


def _adamw_kind(optimizer: Any) -> str:
    defaults = getattr(optimizer, "defaults", {})
    return "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else "for-loop (default)"


def _common(args: argparse.Namespace) -> dict[str, str]:
    return {
        "data": f"{Path(args.corpus).name}, block {args.block_size} x batch {args.batch_size}",
        "steps": f"{args.warmup} warm-up + {args.repeats} x {args.steps} timed",
        "optimizer": f"AdamW betas {BETAS} wd 0; lr: lit_lora's default and schedule, {LR:g} for the others",
    }


# -- a: lit_lora ----------------------------------------------------------------------------------------

def run_lit_lora(args: argparse.Namespace, gate: Gate, quantization: Optional[str] = None) -> Any:
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar

    from lit_lora.cli.trainer_cli import TRAINER_DEFAULTS, LitLoraCLI

    class GateCallback(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            dl = trainer.train_dataloader
            ckpts = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
            bars = [type(c).__name__ for c in trainer.callbacks if isinstance(c, ProgressBar)]
            every = [c._every_n_train_steps for c in ckpts]
            from lit_lora.training.speed import is_compiled

            gate.settings = {
                **describe_model(pl_module.model),
                **_speed_settings(is_compiled(pl_module.model)),
                "AdamW": _adamw_kind(trainer.optimizers[0]),
                "precision": str(trainer.precision),
                "clipping": f"norm {trainer.gradient_clip_val}" if trainer.gradient_clip_val else "off",
                "dataloader workers": str(dl.num_workers),
                "checkpointing": "on validation/epoch end only" if not any(every) else f"every {every} steps",
                "validation": "off (no validation data)" if getattr(trainer.datamodule, "val_ds", None) is None
                              else f"val_check_interval {trainer.val_check_interval}",
                "logging": f"every {trainer.log_every_n_steps} steps, {type(trainer.logger).__name__}",
                "log every": f"{trainer.log_every_n_steps:g}",
                "progress bar": ", ".join(bars) or "off",
                "callbacks": ", ".join(type(c).__name__ for c in trainer.callbacks if c is not self),
            }

        def on_train_batch_end(self, *unused: Any) -> None:
            gate.step_done()

    shape = json.dumps(model_shape(args))
    cli_args = [
        "fit",
        "--model.model_config", shape,
        "--model.tokenizer_name_or_path", args.tokenizer,
        "--model.gradient_checkpointing", str(args.gradient_checkpointing).lower(),
        "--data.train_files", args.corpus,
        "--data.block_size", str(args.block_size),
        "--data.batch_size", str(args.batch_size),
        "--data.num_workers", str(args.num_workers),
        "--data.val_fraction", "0",  # no validation in any of the three runs
        "--data.cache_dir", str(Path(args.workdir) / "lit_lora-cache"),
        "--trainer.max_steps", str(gate.total),
        "--trainer.gradient_clip_val", str(args.clip) if args.clip else "null",
        "--trainer.log_every_n_steps", str(args.log_every),
        "--trainer.enable_progress_bar", str(args.progress_bar).lower(),
        "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu",
        "--trainer.devices", "1",
    ]
    if args.base_dtype:
        cli_args += ["--model.base_dtype", args.base_dtype]
    if args.compile:
        cli_args += ["--model.compile", "true"]
    if quantization:
        cli_args += ["--model.quantization", quantization]
    cli_args += args.lit_lora_args.split()
    return LitLoraCLI(args=cli_args, trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [GateCallback()]}).model.model


# -- b: plain PyTorch loop ----------------------------------------------------------------------------------

def run_plain(args: argparse.Namespace, gate: Gate) -> Any:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    ids = tokenizer(Path(args.corpus).read_text(encoding="utf-8"))["input_ids"]
    n_blocks = len(ids) // args.block_size
    blocks = torch.tensor(ids[: n_blocks * args.block_size]).view(n_blocks, args.block_size)
    device = torch.device(args.device)
    model = build_peft_model(args).to(device)
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as lit_lora and the Trainer (tf32=True) use
    if args.compile:
        model.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=0.0, fused=args.device == "cuda" or None)
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(SEED))
    gate.settings = {
        **describe_model(model),
        **_speed_settings(args.compile),
        "AdamW": _adamw_kind(optimizer),
        "precision": "bf16-mixed (autocast)" if args.device == "cuda" else "32-true",
        "clipping": f"norm {args.clip}" if args.clip else "off",
        "dataloader workers": "0 (indexes a tensor)",
        "checkpointing": "none",
        "validation": "off",
        "logging": "none",
        "log every": "-",
        "progress bar": "off",
        "callbacks": "-",
    }
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda")
    for step in range(gate.total):
        i = (step * args.batch_size) % (n_blocks - args.batch_size)
        x = blocks[order[i : i + args.batch_size]].to(device, non_blocking=True)
        with autocast:
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        gate.step_done()
    return model


# -- c: transformers.Trainer + group_texts ------------------------------------------------------------------

def run_trainer(args: argparse.Namespace, gate: Gate) -> Any:
    from itertools import chain

    from datasets import load_dataset
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, default_data_collator

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    block_size = args.block_size
    cache = str(Path(args.workdir) / "trainer-cache")
    raw = load_dataset("text", data_files={"train": args.corpus}, cache_dir=cache)

    def tokenize_function(examples: dict) -> Any:
        return tokenizer(examples["text"])

    def group_texts(examples: dict) -> dict:  # run_clm.py's recipe
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = (len(concatenated[next(iter(examples))]) // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    lm_datasets = tokenized.map(group_texts, batched=True)
    cuda = args.device == "cuda"
    targs = TrainingArguments(
        output_dir=str(Path(args.workdir) / "trainer-out"),
        per_device_train_batch_size=args.batch_size,
        max_steps=gate.total,
        learning_rate=LR,
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        weight_decay=0.0,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP_LR_STEPS,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        max_grad_norm=args.clip or 0.0,
        bf16=cuda,
        tf32=cuda or None,
        torch_compile=args.compile,
        logging_strategy="steps",
        logging_steps=args.log_every,
        save_strategy="no",
        eval_strategy="no",
        report_to=["tensorboard"],
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,
        disable_tqdm=not args.progress_bar,
        seed=SEED,
    )
    model = build_peft_model(args)

    class GateCallback(TrainerCallback):
        def on_train_begin(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            gate.settings = {
                **describe_model(kw["model"]),
                **_speed_settings(targs.torch_compile),
                "AdamW": f"{getattr(targs.optim, 'value', targs.optim)}",
                "precision": "bf16-mixed (autocast)" if targs.bf16 else "32-true",
                "clipping": f"norm {targs.max_grad_norm}" if targs.max_grad_norm else "off",
                "dataloader workers": str(targs.dataloader_num_workers),
                "checkpointing": f"save_strategy={getattr(targs.save_strategy, 'value', targs.save_strategy)}",
                "validation": f"eval_strategy={getattr(targs.eval_strategy, 'value', targs.eval_strategy)}",
                "logging": f"every {targs.logging_steps} steps, {','.join(targs.report_to)}",
                "log every": f"{targs.logging_steps:g}",
                "progress bar": "off" if targs.disable_tqdm else "tqdm",
                "callbacks": ", ".join(type(c).__name__ for c in trainer.callback_handler.callbacks
                                       if c is not self),
            }

        def on_step_end(self, *unused: Any, **kw: Any) -> None:
            gate.step_done()

    trainer = Trainer(model=model, args=targs, train_dataset=lm_datasets["train"],
                      data_collator=default_data_collator, callbacks=[GateCallback()])
    trainer.train()
    return model


RUNNERS = {"a": run_lit_lora, "b": run_plain, "c": run_trainer,
           "q": lambda args, gate: run_lit_lora(args, gate, quantization="nf4")}


def worker(kind: str, args: argparse.Namespace, conn: Any) -> None:
    log = os.open(Path(args.workdir) / f"{KINDS[kind]}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(Path(args.workdir))  # lightning_logs/, Trainer output and caches stay out of the repository
    gate = Gate(conn, args)
    try:
        model = RUNNERS[kind](args, gate)
        if gate.n != gate.total:
            raise RuntimeError(f"{KINDS[kind]} ran {gate.n} steps, expected {gate.total}")
        conn.send(("done", {**_peak_memory(args.device == "cuda"), "val_loss": validation_loss(model, args)}))
    except BaseException:
        traceback.print_exc()
        conn.send(("error", traceback.format_exc()))
        raise


def validation_loss(model: Any, args: argparse.Namespace) -> float:
    """The token-mean NLL of the trained model on the held-out blocks, one function for every run."""
    import torch
    from transformers import AutoTokenizer

    from lit_lora.eval_mode import evaluating
    from lit_lora.objectives.nll import model_nll

    ids = AutoTokenizer.from_pretrained(args.tokenizer)(Path(args.val_text).read_text(encoding="utf-8"))["input_ids"]
    n = min(args.val_blocks, len(ids) // args.block_size)
    blocks = torch.tensor(ids[: n * args.block_size]).view(n, args.block_size)
    device = next(p.device for p in model.parameters())
    total = count = 0.0
    with evaluating(model), torch.no_grad():
        for i in range(0, n, args.batch_size):
            x = blocks[i : i + args.batch_size].to(device)
            nll, tokens = model_nll(model, x, None, x)
            total, count = total + float(nll), count + int(tokens)
    return total / count


def split_corpus(args: argparse.Namespace) -> tuple[str, str]:
    """The corpus's last `--val_percent` percent (from a line start) as held-out text, the rest to train on."""
    text = Path(args.corpus).read_text(encoding="utf-8")
    cut = text.find("\n", int(len(text) * (1 - args.val_percent / 100))) + 1
    train, val = Path(args.workdir) / "train.txt", Path(args.workdir) / "val.txt"
    train.write_text(text[:cut], encoding="utf-8")
    val.write_text(text[cut:], encoding="utf-8")
    return str(train), str(val)


# -- the parent ---------------------------------------------------------------------------------------------

def _recv(kind: str, proc: Any, conn: Any, args: argparse.Namespace, expect: str) -> Any:
    while not conn.poll(1.0):
        if not proc.is_alive():
            sys.exit(f"{KINDS[kind]} worker died (exit {proc.exitcode}); see {Path(args.workdir) / KINDS[kind]}.log")
    msg, payload = conn.recv()
    if msg == "error":
        sys.exit(f"{KINDS[kind]} failed:\n{payload}")
    if msg != expect:
        sys.exit(f"{KINDS[kind]}: expected {expect!r}, got {msg!r}")
    return payload


# Not dropout: lit_lora's default turns the base model's off (--model.base_dropout); the validation loss
# after the same steps says what that costs.
MUST_MATCH = ("model", "frozen base dtype", "gradient checkpointing", "attention", "torch.compile",
              "fp32 matmul precision", "precision", "clipping",
              "dataloader workers", "log every")


def _comparable(value: str) -> str:
    return value.split(" (")[0]  # "0 (indexes a tensor)" -> "0"


def print_settings(kinds: list[str], settings: dict[str, dict[str, str]], common: dict[str, str]) -> bool:
    for key, value in common.items():
        print(f"{key:>24}: {value}")
    keys = [k for k in dict.fromkeys(k for s in settings.values() for k in s) if k != "callbacks"]
    width = 48
    print(f"{'':>24}  " + "".join(f"{k + ' ' + KINDS[k]:<{width}}" for k in kinds))
    same = True
    for key in keys:
        values = [settings[k].get(key, "-") for k in kinds]
        # "-": the plain loop has no such thing (it logs nothing); the others must agree.
        differs = key in MUST_MATCH and len({_comparable(v) for v in values if v != "-"}) > 1
        same &= not differs
        mark = " <-- DIFFERS" if differs else ""
        print(f"{key:>24}: " + "".join(f"{v:<{width}}" for v in values) + mark)
    for k in kinds:
        print(f"{'callbacks ' + k:>24}: {settings[k].get('callbacks', '-')}")
    return same


def flops_per_token(args: argparse.Namespace, n_params: int) -> float:
    # nanoGPT's estimate_mfu: 6N (forward + backward incl. weight gradients) + attention. LoRA's frozen base
    # needs no weight gradients (~4N), so this is the conventional figure, not the minimum work.
    return 6 * n_params + 12 * args.n_layer * args.n_embd * args.block_size


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--n_layer", type=int, default=12, help="model shape; defaults are GPT-2 small's")
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_positions", type=int, default=1024)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per segment")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    p.add_argument("--repeats", type=int, default=12, help="interleaved rounds (one segment of each run)")
    p.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--base_dtype", default=None, help="frozen base dtype, e.g. bfloat16 (default float32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in all three runs")
    p.add_argument("--clip", type=float, default=0.0, help="gradient clipping norm in all runs (0: off)")
    p.add_argument("--num_workers", type=int, default=0, help="dataloader workers of runs a and c")
    p.add_argument("--log_every", type=int, default=10, help="log the train loss every N steps (a and c)")
    p.add_argument("--progress_bar", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--kinds", default="abc", help="which runs, e.g. 'ab' ('q': lit_lora on an nf4 base)")
    p.add_argument("--order", choices=["rotate", "fixed"], default="rotate",
                   help="rotate: a b c, b c a, c a b, ...; fixed: a b c, a b c, ...")
    p.add_argument("--corpus", default=str(SHARED_DATA / "tinyshakespeare" / "input.txt"))
    p.add_argument("--tokenizer", default=str(SHARED_DATA / "gpt2-tokenizer"))
    p.add_argument("--peak_tflops", type=float, default=None, help="for MFU on CUDA (default: by device name)")
    p.add_argument("--workdir", default=None, help="logs and caches (default: a new /tmp directory)")
    p.add_argument("--lit_lora_args", default="", help="extra `fit` options for run a, e.g. a default turned off: "
                   "'--model.base_dropout null'")
    p.add_argument("--val_percent", type=float, default=2.0, help="the corpus's tail held out for the loss")
    p.add_argument("--val_blocks", type=int, default=16, help="held-out blocks each run is scored on")
    args = p.parse_args(argv)
    args.corpus, args.tokenizer = str(Path(args.corpus).resolve()), str(Path(args.tokenizer).resolve())
    args.workdir = str(Path(args.workdir or tempfile.mkdtemp(prefix="lit_lora_throughput-")).resolve())
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    args.corpus, args.val_text = split_corpus(args)
    kinds = [k for k in "abcq" if k in args.kinds]
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    tokens_per_step = args.batch_size * args.block_size
    print(f"lit_lora throughput benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print(f"worker logs: {args.workdir}/{{{','.join(KINDS[k] for k in kinds)}}}.log")

    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for k in kinds:
        parent_end, child_end = ctx.Pipe()
        procs[k] = ctx.Process(target=worker, args=(k, args, child_end), name=KINDS[k])
        procs[k].start()
        conns[k] = parent_end
    t_start = time.perf_counter()
    settings = {k: _recv(k, procs[k], conns[k], args, "ready") for k in kinds}
    print(f"start-up and {args.warmup} warm-up steps (untimed): {time.perf_counter() - t_start:.0f} s\n")
    if not print_settings(kinds, settings, _common(args)):
        for k in kinds:
            conns[k].send("abort")
        sys.exit("\nthe runs' settings differ: the comparison would be void")

    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpu_rates: dict[str, list[float]] = {k: [] for k in kinds}
    print(f"\n{'round':>5} " + " ".join(f"{KINDS[k] + ' tok/s':>15}" for k in kinds)
          + ("   a/b   a/c   (CPU-time a/b   a/c)" if len(kinds) == 3 else ""))
    memory: dict[str, dict[str, float]] = {}
    for r in range(args.repeats):
        # Rotated each round (a b c, b c a, c a b, ...), so each run follows each other run equally often.
        for k in (kinds[r % len(kinds):] + kinds[: r % len(kinds)] if args.order == "rotate" else kinds):
            conns[k].send("go")
            seconds, cpu_seconds, memory[k] = _recv(k, procs[k], conns[k], args, "segment")
            rates[k].append(args.steps * tokens_per_step / seconds)
            cpu_rates[k].append(args.steps * tokens_per_step / cpu_seconds)
        line = f"{r + 1:>5} " + " ".join(f"{rates[k][-1]:>15.1f}" for k in kinds)
        if len(kinds) == 3:
            line += f" {rates['a'][-1] / rates['b'][-1]:>5.3f} {rates['a'][-1] / rates['c'][-1]:>5.3f}"
            line += f"   ({cpu_rates['a'][-1] / cpu_rates['b'][-1]:>5.3f} {cpu_rates['a'][-1] / cpu_rates['c'][-1]:>5.3f})"
        print(line, flush=True)
    for k in kinds:
        conns[k].send("finish")
    at_exit = {k: _recv(k, procs[k], conns[k], args, "done") for k in kinds}
    for k in kinds:
        procs[k].join()

    print(f"\nmedians over {args.repeats} rounds of {args.steps} steps x {tokens_per_step} tokens:")
    mem_key = "peak_cuda_mb" if args.device == "cuda" else "peak_rss_mb"
    mem_label = "peak CUDA allocated" if args.device == "cuda" else "peak RSS"
    n_params = None
    if args.device == "cuda":
        from transformers import GPT2Config

        cfg = GPT2Config(**model_shape(args))
        n_params = 12 * cfg.n_layer * cfg.n_embd**2 + cfg.vocab_size * cfg.n_embd  # matmul weights (tied head)
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    for k in kinds:
        med = statistics.median(rates[k])
        line = (f"  {k} {KINDS[k]:<9} {med:>9.1f} tokens/s  (min {min(rates[k]):.1f}, max {max(rates[k]):.1f})"
                f"  {mem_label} {memory[k][mem_key]:,.0f} MB (at exit {at_exit[k][mem_key]:,.0f})")
        if n_params and peak:
            line += f"  MFU {med * flops_per_token(args, n_params) / (peak * 1e12):.1%} of {peak} TFLOP/s"
        print(line)
    if "a" in kinds:
        for other, target in (("b", TARGET), ("c", TARGET)):
            if other in kinds:
                ratios = [x / y for x, y in zip(rates["a"], rates[other])]
                med = statistics.median(ratios)
                print(f"  a/{other} (lit_lora / {KINDS[other]}): median {med:.3f} "
                      f"(rounds: {min(ratios):.3f} .. {max(ratios):.3f}); target >= {target}: "
                      f"{'met' if med >= target else 'NOT met'}")
                if args.device == "cpu":
                    ratios = [x / y for x, y in zip(cpu_rates["a"], cpu_rates[other])]
                    print(f"      by CPU time (tokens per CPU-second of the worker): median "
                          f"{statistics.median(ratios):.3f} (rounds: {min(ratios):.3f} .. {max(ratios):.3f})")
    losses = {k: at_exit[k]["val_loss"] for k in kinds}
    print(f"  validation loss after {args.warmup + args.repeats * args.steps} steps ({args.val_blocks} held-out "
          "blocks): " + ", ".join(f"{k} {KINDS[k]} {v:.4f}" for k, v in losses.items()))
    others = [v for k, v in losses.items() if k not in "aq"]
    if "a" in kinds and others:  # `--kinds aq` has no other tool to compare the loss with
        best = min(others)
        print(f"  lit_lora's loss minus the best other run's: {losses['a'] - best:+.4f}; target <= {LOSS_TOLERANCE}: "
              f"{'met' if losses['a'] - best <= LOSS_TOLERANCE else 'NOT met'}")
    if "a" in kinds and "q" in kinds:  # what the 4-bit base costs in speed, round by round
        for label, series in (("wall time", rates), ("CPU time", cpu_rates)):
            ratios = [x / y for x, y in zip(series["q"], series["a"])]
            print(f"  q/a (QLoRA / lit_lora) by {label}: median {statistics.median(ratios):.3f} "
                  f"(rounds: {min(ratios):.3f} .. {max(ratios):.3f})")
    if args.device == "cuda" and n_params and not peak:
        print("  MFU: unknown device peak; pass --peak_tflops")


if __name__ == "__main__":
    main()
