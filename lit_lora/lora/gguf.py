"""GGUF files for llama.cpp (and Ollama, LM Studio built on it), written by llama.cpp's own converters
(`convert_lora_to_gguf.py` for an adapter, `convert_hf_to_gguf.py` for a merged model) from a checkout the user
names. We hand them the folders `export` and `merge` write and run them with this Python; they follow
llama.cpp's tensor names and layouts, which we would otherwise have to track. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from lit_lora.errors import LitLoraError
from lit_lora.lora.export import AdapterSource, adapter_writer, merged_writer, model_card
from lit_lora.lora.serving import llama_cpp_refusal
from lit_lora.outputs import write_dir_atomically

# The converters' --outtype choices (without their "auto", which picks by the first tensor it reads).
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# Exact for an adapter (a few megabytes); a merged model as convert_hf_to_gguf.py writes it by default.
DEFAULT_OUTTYPE = {"adapter": "f32", "merged": "f16"}
ENV = "LLAMA_CPP_DIR"
CONVERTER = {"adapter": "convert_lora_to_gguf.py", "merged": "convert_hf_to_gguf.py"}
GGUF_FILE = {"adapter": "adapter.gguf", "merged": "model.gguf"}
HOW_TO_GET = ("get one with `git clone https://github.com/ggml-org/llama.cpp`, or with `pip download --no-deps "
              "--no-binary llama-cpp-python llama-cpp-python` unpacked (its vendor/llama.cpp holds the converters)")
# Inside the staging folder, removed before the output's file list is taken.
_SOURCES = ".gguf-sources"


def find_llama_cpp(option: Optional[str], kind: str) -> Path:
    """The llama.cpp checkout named by `--llama_cpp` or $LLAMA_CPP_DIR; a llama-cpp-python source tree
    (its vendor/llama.cpp) is taken too."""
    given = option or os.environ.get(ENV)
    if not given:
        raise LitLoraError(f"--format gguf runs llama.cpp's {CONVERTER[kind]}: name a llama.cpp checkout with "
                           f"--llama_cpp DIR or {ENV}; {HOW_TO_GET}")
    root = Path(given).expanduser()
    for folder in (root, root / "vendor" / "llama.cpp"):
        if (folder / CONVERTER[kind]).is_file():
            return folder.resolve()
    where = "--llama_cpp" if option else ENV
    raise LitLoraError(f"{where} {given!r} holds no {CONVERTER[kind]}; expected a llama.cpp checkout ({HOW_TO_GET})")


def check_outtype(outtype: Optional[str], kind: str) -> str:
    """The converter's --outtype: `outtype`, or our default for the kind of output."""
    if outtype is None:
        return DEFAULT_OUTTYPE[kind]
    if outtype not in OUTTYPES:
        raise LitLoraError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)} (llama.cpp's converters' types)")
    return outtype


def converter_command(llama_cpp: Path, kind: str, source: Path, outfile: Path, outtype: str,
                      base: Optional[Path] = None) -> list[str]:
    """The converter's command line: this Python, the script, the folder to convert and where to write."""
    command = [sys.executable, str(llama_cpp / CONVERTER[kind]), str(source), "--outfile", str(outfile),
               "--outtype", outtype]
    return command + (["--base", str(base)] if base is not None else [])


def run_converter(command: list[str]) -> None:
    """Run a converter quietly; if it fails, its last error line, in one line of ours."""
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise LitLoraError(failure_line(Path(command[1]).name, proc.returncode, proc.stderr + proc.stdout))


def failure_line(script: str, returncode: int, output: str) -> str:
    """Our one line for a converter that failed: its last error line, and what to install if that is a
    module it could not import."""
    line = last_error_line(output)
    hint = (" (the converters run with this Python: lit_lora's gguf extra installs sentencepiece, llama.cpp's "
            "requirements/ folder lists the rest)") if "No module named" in line else ""
    return f"llama.cpp's {script} failed (exit {returncode}): {line}{hint}; nothing was written"


def last_error_line(output: str) -> str:
    """The line of a converter's output that says why it stopped: the last traceback's exception or logged
    error, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^(ERROR:|[A-Za-z_.]*(Error|Exception)\b)", line):
            return line
    return lines[-1] if lines else "no output"


def export_adapter_gguf(module: AdapterSource, output_dir: str, llama_cpp: Path, outtype: str,
                        checkpoint: Optional[dict[str, Any]] = None, overwrite: bool = False) -> Path:
    """`adapter.gguf` (llama.cpp's `--lora`), with a model card and the run's chat template beside it."""
    write_adapter = adapter_writer(module, checkpoint)
    template = (checkpoint or {}).get("lit_lora", {}).get("chat_template")

    def fill(tmp: Path) -> None:
        try:
            # The converter names the GGUF (general.name) after the folder it reads.
            peft_dir, base_dir = tmp / _SOURCES / Path(output_dir).resolve().name, tmp / _SOURCES / "base"
            write_adapter(peft_dir)
            refused = llama_cpp_refusal(json.loads((peft_dir / "adapter_config.json").read_text(encoding="utf-8")))
            if refused:  # the converter would stop on it, or write a file llama.cpp reads wrongly
                raise LitLoraError(f"llama.cpp cannot serve this adapter ({refused}): merge --format gguf writes "
                                   "the merged model, which it serves")
            write_base_config(module, base_dir)
            command = converter_command(llama_cpp, "adapter", peft_dir, tmp / GGUF_FILE["adapter"], outtype, base_dir)
            run_converter(command)
        finally:
            shutil.rmtree(tmp / _SOURCES, ignore_errors=True)
        if template:
            (tmp / "chat_template.jinja").write_text(template, encoding="utf-8")
        (tmp / "README.md").write_text(model_card(module, checkpoint, "adapter", _usage("adapter", outtype)),
                                       encoding="utf-8")

    return write_dir_atomically(output_dir, "adapter-gguf", fill, "--output_dir", overwrite)


def merge_gguf(module: AdapterSource, output_dir: str, llama_cpp: Path, outtype: str,
               checkpoint: Optional[dict[str, Any]] = None, overwrite: bool = False) -> Path:
    """`model.gguf`: the merged model as `merge` writes it (its tokenizer carrying the run's chat template,
    which the converter puts into the metadata), converted, with a model card."""
    write_merged = merged_writer(module, checkpoint)

    def fill(tmp: Path) -> None:
        try:
            merged_dir = tmp / _SOURCES / Path(output_dir).resolve().name
            write_merged(merged_dir)
            command = converter_command(llama_cpp, "merged", merged_dir, tmp / GGUF_FILE["merged"], outtype)
            run_converter(command)
        finally:
            shutil.rmtree(tmp / _SOURCES, ignore_errors=True)
        (tmp / "README.md").write_text(model_card(module, checkpoint, "merged", _usage("merged", outtype)),
                                       encoding="utf-8")

    return write_dir_atomically(output_dir, "merged-gguf", fill, "--output_dir", overwrite)


def write_base_config(module: AdapterSource, folder: Path) -> None:
    """The base model's config.json, all the LoRA converter reads of the base: from the model loaded for
    the export, so a hub id, a moved folder or a random-init shape all work offline. Without
    `quantization_config`: llama.cpp applies the adapter to its own (unquantized or GGUF-quantized) base."""
    base = module.model.get_base_model()
    config = json.loads(base.config.to_json_string(use_diff=False))
    config.pop("quantization_config", None)
    config["architectures"] = [type(base).__name__]  # unset on a model built from a config
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _usage(kind: str, outtype: str) -> list[str]:
    """The model card's lines on running the file, and how it was converted."""
    lines = [f"Converted with llama.cpp's `{CONVERTER[kind]} --outtype {outtype}`.", "", "Run with:", "",
             "```bash"]
    if kind == "adapter":
        lines += ["llama-cli -m BASE.gguf --lora adapter.gguf   # BASE.gguf: the base model, by convert_hf_to_gguf.py"]
    else:
        lines += ["llama-cli -m model.gguf", "# Ollama: a Modelfile with the line `FROM ./model.gguf`"]
    return lines + ["```"]
