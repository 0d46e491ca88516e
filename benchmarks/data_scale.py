"""Data preparation at scale: tokenizing + packing speed, peak memory, cache reuse, and padding.

    python benchmarks/data_scale.py                       # 50 MB and 200 MB corpora, then padding (~10 min on 2 cores)
    python benchmarks/data_scale.py --sizes 20 --skip_padding   # quick check

For each size it writes a corpus to --workdir (never into the repository) by repeating
../shared/data/tinyshakespeare/input.txt, then runs `LitLoraData.setup("fit")` in a fresh child process
twice: cold (empty cache directory: read, tokenize, pack, split) and warm (same cache: must read Arrow
files only and take seconds). Each child reports wall time, MB/s, blocks, and peak RSS of the child itself
and of its own children (the `datasets.map(num_proc=...)` tokenizer workers), from `resource.getrusage`.
Flat memory means: the 200 MB peak is (about) the 50 MB peak.

The padding section builds a synthetic prompt/completion JSONL (lengths drawn from a long-tailed
distribution) and reports the padding fraction of one epoch of batches with `--data.length_bucketing`
off and on (padding fraction = padded positions / all positions of the batches).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TOKENIZER = SHARED_DATA / "gpt2-tokenizer"
SOURCE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def make_corpus(path: Path, megabytes: int) -> Path:
    """`megabytes` MB of text: input.txt repeated (one file = one document)."""
    want = megabytes * 1_000_000
    if path.is_file() and path.stat().st_size >= want:
        return path
    text = SOURCE.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        written = 0
        while written < want:
            fh.write(text)
            written += len(text)
    return path


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


class MemorySampler(threading.Thread):
    """Samples this process tree's memory every 50 ms: peak anonymous RSS (heap: what allocations hold) of
    this process and of any one child, and peak total RSS of the whole tree. `ru_maxrss` also counts the
    pages of memory-mapped Arrow files the process has read, which are page cache, not allocations."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.peak_anon = self.peak_child_anon = self.peak_tree = 0
        self.stop = threading.Event()

    @staticmethod
    def _anon(mem) -> int:
        return mem.rss - mem.shared  # RssAnon (shared = RssFile + RssShmem)

    def run(self) -> None:
        import psutil

        while not self.stop.wait(0.05):
            try:
                mine = self.proc.memory_info()
                kids = [c.memory_info() for c in self.proc.children(recursive=True)]
            except psutil.Error:
                continue
            self.peak_anon = max(self.peak_anon, self._anon(mine))
            self.peak_child_anon = max([self.peak_child_anon] + [self._anon(k) for k in kids])
            self.peak_tree = max(self.peak_tree, mine.rss + sum(k.rss for k in kids))


def child(args: argparse.Namespace) -> None:
    """One `LitLoraData.setup` in this process; prints one JSON line."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    from lit_lora.data import LitLoraData

    imported = time.perf_counter()
    dm = LitLoraData(
        train_files=args.corpus, tokenizer_name_or_path=str(args.tokenizer), block_size=args.block_size,
        cache_dir=args.cache_dir, num_proc=args.num_proc,
    )
    dm.setup("fit")
    done = time.perf_counter()
    n_blocks = len(dm.train_ds) + (len(dm.val_ds) if dm.val_ds is not None else 0)
    print(json.dumps({
        "import_s": imported - start,
        "setup_s": done - imported,
        "blocks": n_blocks,
        "tokens": n_blocks * args.block_size,
        "peak_rss_mb": _peak_mb(resource.RUSAGE_SELF),
        "peak_rss_children_mb": _peak_mb(resource.RUSAGE_CHILDREN),
        "peak_anon_mb": sampler.peak_anon / 2**20,
        "peak_anon_worker_mb": sampler.peak_child_anon / 2**20,
        "peak_tree_rss_mb": sampler.peak_tree / 2**20,
    }), flush=True)


def run_child(corpus: Path, cache_dir: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_child", "--corpus", str(corpus), "--cache_dir", str(cache_dir),
           "--block_size", str(args.block_size), "--tokenizer", str(args.tokenizer)]
    if args.num_proc is not None:
        cmd += ["--num_proc", str(args.num_proc)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    print(f"corpus: {SOURCE.name} repeated; tokenizer: {args.tokenizer}; block_size {args.block_size}; "
          f"num_proc {args.num_proc or 'lit_lora default'}; cpus {os.cpu_count()}; workdir {workdir}")
    print("memory, MB: maxrss = ru_maxrss of the process / of its largest tokenizer worker (includes pages of\n"
          "memory-mapped Arrow files read); anon = peak anonymous RSS (allocations) of the process / of a worker,\n"
          "sampled every 50 ms")
    header = (f"{'size':>7} {'run':<5} {'setup s':>8} {'MB/s':>7} {'blocks':>9} {'maxrss':>7} {'worker':>7} "
              f"{'anon':>6} {'worker':>7}")
    print(header)
    rows = []
    for mb in args.sizes:
        corpus = make_corpus(workdir / f"corpus-{mb}MB.txt", mb)
        size_mb = corpus.stat().st_size / 1e6
        cache = workdir / f"cache-{mb}MB"
        shutil.rmtree(cache, ignore_errors=True)
        for run in ("cold", "warm"):
            r = run_child(corpus, cache, args)
            r.update(size_mb=size_mb, run=run)
            rows.append(r)
            print(f"{size_mb:>5.0f}MB {run:<5} {r['setup_s']:>8.1f} {size_mb / r['setup_s']:>7.2f} {r['blocks']:>9,} "
                  f"{r['peak_rss_mb']:>7.0f} {r['peak_rss_children_mb']:>7.0f} {r['peak_anon_mb']:>6.0f} "
                  f"{r['peak_anon_worker_mb']:>7.0f}", flush=True)
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    cold = [r for r in rows if r["run"] == "cold"]
    if len(cold) >= 2:
        small, big = cold[0], cold[-1]
        for label, key in (("maxrss", "peak_rss_mb"), ("worker maxrss", "peak_rss_children_mb"),
                           ("anon", "peak_anon_mb"), ("worker anon", "peak_anon_worker_mb")):
            print(f"{label:>13}: {big['size_mb']:.0f} MB corpus / {small['size_mb']:.0f} MB corpus = "
                  f"{big[key]:.0f} / {small[key]:.0f} MB = {big[key] / small[key]:.2f}x")


# -- padding with and without length bucketing ------------------------------------------------------------

def make_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """Prompt/completion pairs with long-tailed lengths (most short, some long), like instruction data."""
    rng = random.Random(seed)
    words = SOURCE.read_text(encoding="utf-8").split()
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            lp, lc = int(rng.lognormvariate(2.5, 0.8)) + 1, int(rng.lognormvariate(3.0, 1.0)) + 1
            i, j = rng.randrange(len(words) - lp), rng.randrange(len(words) - lc)
            fh.write(json.dumps({"prompt": " ".join(words[i:i + lp]), "completion": " " + " ".join(words[j:j + lc])}) + "\n")
    return path


def padding(args: argparse.Namespace) -> None:
    from lit_lora.data import LitLoraData

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(workdir / "pairs.jsonl", args.pairs)
    print(f"\npadding: {args.pairs} synthetic prompt/completion pairs, block_size {args.pad_block_size}, "
          f"batch_size {args.pad_batch_size}, one epoch")
    for bucketing in (False, True):
        dm = LitLoraData(
            train_files=str(pairs), tokenizer_name_or_path=str(args.tokenizer), block_size=args.pad_block_size,
            batch_size=args.pad_batch_size, length_bucketing=bucketing, cache_dir=str(workdir / "cache-pairs"),
        )
        dm.setup("fit")
        real = total = 0
        for batch in dm.train_dataloader():
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
        print(f"  length_bucketing={str(bucketing):<5}  padding fraction {1 - real / total:6.1%}  "
              f"({total - real:,} pad of {total:,} positions)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200], help="corpus sizes in MB")
    p.add_argument("--block_size", type=int, default=512)
    p.add_argument("--num_proc", type=int, default=None, help="tokenizer processes (default: lit_lora's)")
    p.add_argument("--tokenizer", default=str(TOKENIZER))
    p.add_argument("--workdir", default="/tmp/lit_lora_data_scale")
    p.add_argument("--keep", action="store_true", help="keep the Arrow caches")
    p.add_argument("--skip_scale", action="store_true")
    p.add_argument("--skip_padding", action="store_true")
    p.add_argument("--pairs", type=int, default=5000)
    p.add_argument("--pad_block_size", type=int, default=512)
    p.add_argument("--pad_batch_size", type=int, default=8)
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        return child(args)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.skip_scale:
        scale(args)
    if not args.skip_padding:
        padding(args)


if __name__ == "__main__":
    main()
