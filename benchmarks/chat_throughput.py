"""Chat throughput: lit_lora vs TRL's `SFTTrainer` (its defaults, and with `packing=True`), trained tokens/s.

    python benchmarks/chat_throughput.py                   # 2 shapes x 2 sets on CPU: ~10 minutes on 2 quiet cores
    python benchmarks/chat_throughput.py --quick           # smoke test: 2 x 128 shapes, 2 short rounds (~2 minutes)
    python benchmarks/chat_throughput.py --shapes gpt2 --sets skewed --rounds 10
    python benchmarks/chat_throughput.py --device cuda --rounds 5 --steps 10

Three runs train the same model on the same conversations, one (shape, set) at a time:

  lit_lora     `fit` through `LitLoraCLI`, in-process in its worker, with its defaults: batch 8, block 512,
               length-bucketed batches, gradient checkpointing, chunked loss, every callback a real run has
  TRL          `SFTTrainer` with its defaults (batch 8, each batch padded to its longest conversation,
               gradient checkpointing), `assistant_only_loss=True`
  TRL packing  the same with `packing=True` (best-fit decreasing, padding-free: a batch is one row)

Shared by the three: the model (a GPT-2 shape, 6 x 512 with GPT-2's vocabulary, ~45M parameters, or a
Llama shape of about that size with tied embeddings; random init, seed 1234, built by lit_lora's code),
the GPT-2 tokenizer (../shared/data), the LoRA (r 8, alpha 16, dropout 0.05 as conf/gpt2/lora.yaml; the
family's default targets as lit_lora picks them), the optimizer and schedule (lit_lora's defaults: AdamW
lr 7e-3, 5% warm-up, cosine to 10%, clipping at 1.0, given to TRL), the precision (32-true on a CPU, where
TRL's default bf16=True is turned off; bf16-mixed on a GPU) and the trained tokens. lit_lora renders with
its built-in `plain` template (GPT-2's tokenizer has none); TRL gets the same Jinja with `{% generation %}`
around each reply, which `assistant_only_loss` needs and which renders no text. The script asserts that
both tokenize every training conversation to the same ids and train the same tokens (the reply and its
EOS). Tokens per optimizer step: 8 conversations for lit_lora and TRL; one packed row of
`max(longest conversation, 8 x the mean length)` tokens for TRL packing (printed beside the others).

Sets: `examples` is examples/chat/messages.jsonl (600 short village questions; 60 held out, seeded);
`skewed` is generated (seeded): 90% one short exchange, 10% long conversations of 8 to 12 turns.

Each run lives in its own worker process; after start-up and `--warmup` untimed steps it waits. The parent
then interleaves `--rounds` rounds of `--steps` optimizer steps of each run (the order rotating each round),
so load on a shared machine falls on all three alike. Reported: trained tokens (labels that count in the
loss) per second of wall time, the median over rounds, its ratio to lit_lora's, and the loss on the held-out
conversations after the last step, computed for all three by one function (`heldout_loss`: lit_lora's
`model_nll` over the same padded batches). The speeds compare only where the losses agree within 0.01.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TOKENIZER = SHARED_DATA / "gpt2-tokenizer"
RUNS = ("lit_lora", "TRL", "TRL packing")
SEED = 1234
BATCH, BLOCK = 8, 512  # lit_lora's default batch and block (TRL's default batch is also 8)
LR, WARMUP_RATIO, MIN_LR_RATIO, CLIP = 7e-3, 0.05, 0.1, 1.0  # lit_lora's defaults, given to TRL
VOCAB = {"vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256}
SHAPES = {
    "gpt2": {"n_layer": 6, "n_embd": 512, "n_head": 8, "n_positions": 1024, **VOCAB},
    "llama": {"model_type": "llama", "num_hidden_layers": 6, "hidden_size": 512, "num_attention_heads": 8,
              "num_key_value_heads": 8, "intermediate_size": 1376, "max_position_embeddings": 1024,
              "tie_word_embeddings": True, **VOCAB},
}
QUICK_SHAPES = {  # --quick: the same families at 2 x 128
    "gpt2": {**SHAPES["gpt2"], "n_layer": 2, "n_embd": 128, "n_head": 4},
    "llama": {**SHAPES["llama"], "num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 4, "intermediate_size": 344},
}
WORDS = ("the a fox owl river mill market bright cold lantern basket boat map sells lives by near old road "
         "baker smith green north south window bread rope kettle apple morning evening").split()


# -- the conversations ------------------------------------------------------------------------------------

def skewed_chats(n: int, seed: int) -> list[dict]:
    """90% one short exchange, 10% long conversations (8 to 12 turns of longer replies)."""
    rng = random.Random(seed)

    def sentence(lo: int, hi: int, end: str) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi))) + end

    chats = []
    for _ in range(n):
        long = rng.random() < 0.1
        messages = []
        for _ in range(rng.randint(8, 12) if long else 1):
            messages.append({"role": "user", "content": sentence(3, 10, "?")})
            messages.append({"role": "assistant", "content": sentence(8, 20, ".") if long else sentence(2, 10, ".")})
        chats.append({"messages": messages})
    return chats


def write_set(name: str, folder: Path) -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl) of the set `name`: 10% held out, seeded."""
    if name == "examples":
        lines = (REPO / "examples" / "chat" / "messages.jsonl").read_text(encoding="utf-8").splitlines()
        chats = [json.loads(line) for line in lines if line.strip()]
        random.Random(SEED).shuffle(chats)
    else:
        chats = skewed_chats(600, SEED)
    held = len(chats) // 10
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "heldout.jsonl"
    for path, part in zip(paths, (chats[held:], chats[:held])):
        path.write_text("".join(json.dumps(c) + "\n" for c in part), encoding="utf-8")
    return paths


def trl_template() -> str:
    """lit_lora's built-in `plain` template with each reply (and its EOS) inside `{% generation %}`: the
    same text, and the assistant mask TRL's `assistant_only_loss` reads."""
    from lit_lora.generation.chat import PLAIN

    reply = "Assistant: {{ message['content'] }}{{ eos_token }}"
    assert PLAIN.count(reply) == 1, "the plain template changed: update trl_template()"
    return PLAIN.replace(reply, "Assistant:{% generation %} {{ message['content'] }}{{ eos_token }}{% endgeneration %}")


def lit_lora_rows(path: Path, tokenizer: Any) -> list[dict[str, list[int]]]:
    """Each conversation's `input_ids` and `labels` as lit_lora's data pipeline makes them."""
    from lit_lora.data.conversations import tokenize_conversations
    from lit_lora.generation.chat import PLAIN

    chats = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    batch = {"messages": [c["messages"] for c in chats], "prompt_turns": [0] * len(chats),
             "where": [f"{path.name}:{i + 1}" for i in range(len(chats))]}
    out = tokenize_conversations(batch, tokenizer, PLAIN, "assistant", BLOCK)
    assert len(out["input_ids"]) == len(chats) and not any(out["truncated"]), "every conversation fits the block"
    return [{"input_ids": i, "labels": label} for i, label in zip(out["input_ids"], out["labels"])]


def heldout_loss(model: Any, rows: list[dict[str, list[int]]]) -> float:
    """Token-weighted next-token NLL of `model` on `rows` (padded batches of 8, float32): the one measure of
    all three runs."""
    import torch

    from lit_lora.data.batches import Collator
    from lit_lora.objectives.nll import model_nll

    device = next(p.device for p in model.parameters())
    collate = Collator(VOCAB["eos_token_id"])
    training = model.training
    model.eval()
    nll = n = 0.0
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for k in range(0, len(rows), BATCH):
            b = collate([{**r, "sample_id": k + j} for j, r in enumerate(rows[k : k + BATCH])])
            total, count = model_nll(model, b["input_ids"].to(device), b["attention_mask"].to(device),
                                     b["labels"].to(device))
            nll, n = nll + float(total), n + float(count)
    model.train(training)
    return nll / n


def trained_tokens(labels: Any) -> int:
    """Labels that count in the loss: position t predicts label t + 1."""
    return int((labels[..., 1:] != -100).sum())


# -- the gate: timed segments, released by the parent --------------------------------------------------

class Gate:
    """Counts optimizer steps and their trained tokens. After the warm-up and after every `steps` timed
    steps it reports to the parent and waits to be released, so one worker runs at a time. After the last
    segment it computes the held-out loss (`final`)."""

    def __init__(self, conn: Any, args: argparse.Namespace) -> None:
        self.conn, self.warmup, self.steps, self.cuda = conn, args.warmup, args.steps, args.device == "cuda"
        self.total = args.warmup + args.steps * args.rounds
        self.n = self.tokens = self.pending = 0
        self.t0 = 0.0
        self.final: Any = None  # () -> held-out loss, set by the run
        self.settings: dict[str, str] = {}

    def step_done(self) -> None:
        self.n += 1
        self.tokens, self.pending = self.tokens + self.pending, 0
        if self.n < self.warmup or (self.n - self.warmup) % self.steps:
            return
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.n == self.warmup:
            self.conn.send(("ready", self.settings))
        else:
            self.conn.send(("segment", (now - self.t0, self.tokens)))
        msg = self.conn.recv()  # "go", "finish" after the last segment, or "abort"
        if msg == "abort":
            os._exit(3)
        if msg == "finish":
            self.conn.send(("done", self.final()))
        self.tokens, self.t0 = 0, time.perf_counter()


# -- the runs ---------------------------------------------------------------------------------------------

def run_lit_lora(args: argparse.Namespace, gate: Gate, data: dict[str, Any]) -> None:
    from lightning.pytorch.callbacks import Callback

    from lit_lora.cli.trainer_cli import TRAINER_DEFAULTS, LitLoraCLI

    class GateCallback(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            gate.final = lambda: heldout_loss(pl_module.model, data["heldout"])
            gate.settings = {"precision": str(trainer.precision), "batch": str(trainer.datamodule.batch_size),
                             "gradient checkpointing": str(pl_module.gradient_checkpointing)}

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            gate.pending += trained_tokens(batch["labels"])
            gate.step_done()

    cli_args = [
        "fit",
        "--model.model_config", json.dumps(data["shape"]),
        "--model.tokenizer_name_or_path", str(TOKENIZER),
        "--data.train_files", str(data["train"]),
        "--data.val_files", str(data["heldout_file"]),
        "--data.cache_dir", str(Path(args.workdir) / "lit_lora-cache"),
        "--trainer.max_steps", str(gate.total),
        "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu",
        "--trainer.devices", "1",
    ]
    LitLoraCLI(args=cli_args, trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [GateCallback()]})


def build_peft_model(shape: dict[str, Any]) -> Any:
    """The PEFT model as `LitLora` builds it by default (lit_lora's functions, the same seed)."""
    import torch

    from lit_lora.lora import LoraSettings
    from lit_lora.lora.wrap import apply_lora
    from lit_lora.pretrained.hub import load_base_model

    torch.manual_seed(SEED)
    return apply_lora(load_base_model("random-init", shape, None, "sdpa"), LoraSettings())


def run_trl(args: argparse.Namespace, gate: Gate, data: dict[str, Any], packing: bool) -> None:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lit_lora.pretrained.hub import load_tokenizer

    tokenizer = load_tokenizer(str(TOKENIZER))
    tokenizer.chat_template = trl_template()
    cuda = args.device == "cuda"
    extra = {"max_length": data["packed_length"], "per_device_train_batch_size": 1} if packing else {}
    config = SFTConfig(
        output_dir=str(Path(args.workdir) / "trl-out"),
        max_steps=gate.total,
        learning_rate=LR,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATIO},
        warmup_steps=math.ceil(WARMUP_RATIO * gate.total),
        max_grad_norm=CLIP,
        bf16=cuda,  # TRL's default is True; on a CPU that would be bf16 autocast against lit_lora's float32
        use_cpu=not cuda,
        assistant_only_loss=True,
        packing=packing,
        seed=SEED,
        **extra,
    )
    train = load_dataset("json", data_files=str(data["train"]), split="train",
                         cache_dir=str(Path(args.workdir) / "trl-cache"))
    trainer = SFTTrainer(model=build_peft_model(data["shape"]), args=config, train_dataset=train,
                         processing_class=tokenizer)
    if not packing:  # the same ids and the same trained tokens as lit_lora, conversation by conversation
        ours = data["train_rows"]
        theirs = trainer.train_dataset
        assert len(theirs) == len(ours), f"TRL kept {len(theirs)} conversations, lit_lora {len(ours)}"
        for k, (a, b) in enumerate(zip(ours, theirs)):
            assert a["input_ids"] == b["input_ids"], f"conversation {k + 1}: token ids differ"
            expected = list(a["labels"])
            expected[0] = -100  # lit_lora's collator never trains a row's first token; TRL's never has it
            assert expected == list(b["labels"]), f"conversation {k + 1}: trained tokens differ"
    compute_loss = trainer.compute_loss

    def counting(model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> Any:
        # Counted where the loss sees the batch: accelerate's loader fetches one batch ahead, so a count in the
        # collator would land in the step before.
        if model.training:
            gate.pending += trained_tokens(inputs["labels"])
        return compute_loss(model, inputs, *rest, **kw)

    trainer.compute_loss = counting

    class GateCallback(TrainerCallback):
        def on_train_begin(self, targs: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            gate.final = lambda: heldout_loss(model, data["heldout"])
            gate.settings = {"precision": "bf16-mixed" if targs.bf16 else "32-true",
                             "batch": str(targs.per_device_train_batch_size),
                             "gradient checkpointing": str(targs.gradient_checkpointing)}

        def on_step_end(self, *unused: Any, **kw: Any) -> None:
            gate.step_done()

    trainer.add_callback(GateCallback())
    trainer.train()


def worker(run: str, args: argparse.Namespace, data: dict[str, Any], conn: Any) -> None:
    log = os.open(Path(args.workdir) / f"{run.replace(' ', '_')}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(args.workdir)  # lightning_logs/ and TRL's output stay out of the repository
    gate = Gate(conn, args)
    try:
        from lit_lora.pretrained.hub import load_tokenizer

        tokenizer = load_tokenizer(str(TOKENIZER))
        data = {**data, "heldout": lit_lora_rows(data["heldout_file"], tokenizer),
                "train_rows": lit_lora_rows(data["train"], tokenizer)}
        if run == "lit_lora":
            run_lit_lora(args, gate, data)
        else:
            run_trl(args, gate, data, packing=run == "TRL packing")
        if gate.n != gate.total:
            raise RuntimeError(f"{run} ran {gate.n} steps, expected {gate.total}")
    except BaseException:
        traceback.print_exc()
        conn.send(("error", traceback.format_exc()))
        raise


# -- the parent -------------------------------------------------------------------------------------------

def _recv(run: str, proc: Any, conn: Any, args: argparse.Namespace, expect: str) -> Any:
    while not conn.poll(1.0):
        if not proc.is_alive():
            sys.exit(f"{run} worker died (exit {proc.exitcode}); see {args.workdir}/{run.replace(' ', '_')}.log")
    msg, payload = conn.recv()
    if msg == "error":
        sys.exit(f"{run} failed:\n{payload}")
    if msg != expect:
        sys.exit(f"{run}: expected {expect!r}, got {msg!r}")
    return payload


def measure(args: argparse.Namespace, shape_name: str, shape: dict[str, Any], set_name: str) -> None:
    from lit_lora.pretrained.hub import load_tokenizer

    train, heldout = write_set(set_name, Path(args.workdir) / set_name)
    lengths = [len(r["input_ids"]) for r in lit_lora_rows(train, load_tokenizer(str(TOKENIZER)))]
    per_step = BATCH * statistics.mean(lengths)
    packed_length = max(max(lengths), math.ceil(per_step))
    data = {"shape": shape, "train": train, "heldout_file": heldout, "packed_length": packed_length}
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for run in RUNS:
        parent_end, child_end = ctx.Pipe()
        procs[run] = ctx.Process(target=worker, args=(run, args, data, child_end), name=run)
        procs[run].start()
        conns[run] = parent_end
    start = time.perf_counter()
    settings = {run: _recv(run, procs[run], conns[run], args, "ready") for run in RUNS}
    print(f"\n## {shape_name} ({_params(shape)}), {set_name}: {len(lengths)} conversations of "
          f"{min(lengths)} to {max(lengths)} tokens (mean {statistics.mean(lengths):.0f}); TRL packing rows "
          f"of {packed_length} tokens; start-up and {args.warmup} warm-up steps: {time.perf_counter() - start:.0f} s")
    for key in settings["lit_lora"]:
        print(f"  {key}: " + ", ".join(f"{run} {settings[run][key]}" for run in RUNS))
    if len({settings[run]["precision"] for run in RUNS}) > 1:
        for run in RUNS:
            conns[run].send("abort")
        sys.exit("the runs' precisions differ: the comparison would be void")
    rates: dict[str, list[float]] = {run: [] for run in RUNS}
    tokens: dict[str, int] = {run: 0 for run in RUNS}
    for r in range(args.rounds):
        order = RUNS[r % 3:] + RUNS[: r % 3]
        for run in order:
            conns[run].send("go")
            seconds, trained = _recv(run, procs[run], conns[run], args, "segment")
            rates[run].append(trained / seconds)
            tokens[run] += trained
        print(f"  round {r + 1}: " + ", ".join(f"{run} {rates[run][-1]:,.0f}" for run in RUNS), flush=True)
    losses = {}
    for run in RUNS:
        conns[run].send("finish")
        losses[run] = _recv(run, procs[run], conns[run], args, "done")
    for run in RUNS:
        procs[run].join()
    steps = args.rounds * args.steps
    print(f"\n| {shape_name}, {set_name} | trained tok/s (median) | ratio to lit_lora | trained tokens per step "
          f"| val loss |\n|---|---|---|---|---|")
    base = statistics.median(rates["lit_lora"])
    for run in RUNS:
        med = statistics.median(rates[run])
        print(f"| {run} | {med:,.0f} | {med / base:.2f} | {tokens[run] / steps:,.0f} | {losses[run]:.4f} |")
    spread = max(losses.values()) - min(losses.values())
    print(f"val losses {'within' if spread <= 0.01 else 'NOT within'} 0.01 of each other (spread {spread:.4f})"
          + ("" if spread <= 0.01 else ": the speeds do not compare"))
    for other, target in (("TRL", 2.0), ("TRL packing", 1.3)):
        ratio = base / statistics.median(rates[other])
        print(f"lit_lora / {other}: {ratio:.2f} (target >= {target}: {'met' if ratio >= target else 'NOT met'})")


def _params(shape: dict[str, Any]) -> str:
    from lit_lora.pretrained.hub import build_config

    config = build_config(shape)
    width, layers = config.hidden_size, config.num_hidden_layers
    mlp = 3 * width * config.intermediate_size if shape.get("model_type") == "llama" else 8 * width**2
    total = layers * (4 * width**2 + mlp) + config.vocab_size * width
    return f"{layers} x {width}, ~{total / 1e6:.0f}M parameters"


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shapes", default="gpt2,llama", help="comma-separated: gpt2, llama")
    p.add_argument("--sets", default="examples,skewed", help="comma-separated: examples, skewed")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds, one segment of each run (default 5)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per segment (default 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps at the start of each run (default 2)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 x 128 shapes; 2 rounds of 2 steps, 1 warm-up")
    p.add_argument("--workdir", default=None, help="logs, data and caches (default: a new /tmp directory)")
    args = p.parse_args(argv)
    if not TOKENIZER.is_dir():
        sys.exit(f"chat_throughput: the GPT-2 tokenizer is not at {TOKENIZER} (the shared data folder beside the "
                 "repository); copy it there first")
    for name, default, quick in (("rounds", 5, 2), ("steps", 4, 2), ("warmup", 2, 1)):  # given values win
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    wanted = [s for s in args.shapes.split(",") if s]
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in wanted if s not in shapes] + [s for s in sets if s not in ("examples", "skewed")]
    if unknown:
        sys.exit(f"chat_throughput: unknown shape or set {unknown[0]!r}; shapes: gpt2, llama; sets: examples, skewed")
    args.workdir = str(Path(args.workdir or tempfile.mkdtemp(prefix="lit_lora_chat-")).resolve())
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(REPO))
    import torch
    import trl

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    print(f"chat throughput: torch {torch.__version__}, trl {trl.__version__}, {os.cpu_count()} CPUs, device "
          f"{args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
          + f"; {args.warmup} warm-up + {args.rounds} x {args.steps} timed steps per run; logs in {args.workdir}")
    for shape_name in wanted:
        for set_name in sets:
            measure(args, shape_name, shapes[shape_name], set_name)


if __name__ == "__main__":
    main()
