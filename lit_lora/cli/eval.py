"""`python -m lit_lora.cli eval`: lm-evaluation-harness tasks on a fine-tuned model as lit_lora holds it.

    python -m lit_lora.cli eval --ckpt_path CKPT --tasks lit_lora_sequences,lit_lora_arithmetic \\
        --include_path examples/eval/tasks
    python -m lit_lora.cli eval --with_base --adapter_path A --adapter_path B --tasks TASK --include_path DIR
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal, Optional

from jsonargparse import ArgumentParser

from lit_lora.cli.tool_parser import add_settings_options, settings_from_options, tool_parser
from lit_lora.errors import LitLoraError
from lit_lora.evaluation.settings import TaskSettings
from lit_lora.notes import print_note


def build_parser() -> ArgumentParser:
    parser = tool_parser(
        "eval",
        "Run lm-evaluation-harness tasks on a LoRA checkpoint, an exported adapter, a merged model folder or the "
        "base model, as loaded for `generate` (no conversion, no merged copy). Several models give one table "
        "side by side. Prints lm-eval's table, writes its results JSON, and logs eval/<task>/<metric> to the "
        "training run of a checkpoint.",
    )
    src = parser.add_argument_group("models (each flag repeatable; none: the base model alone)")
    src.add_argument("--ckpt_path", type=str, action="append", default=[],
                     help="A lit_lora checkpoint file (.ckpt).")
    src.add_argument("--adapter_path", type=str, action="append", default=[],
                     help="A PEFT adapter folder (`export`'s output, or anyone's).")
    src.add_argument("--model_dir", type=str, action="append", default=[],
                     help="A merged model folder (`merge`'s output) or any transformers model folder.")
    src.add_argument("--with_base", action="store_true",
                     help="Add the base model as the first column (the first adapter or checkpoint with its "
                     "adapter switched off: the same weights, not loaded twice); the others show their "
                     "difference from it.")
    src.add_argument("--model.model_name_or_path", type=Optional[str], default=None,
                     help="Base model to load instead of the one a checkpoint/adapter names; alone, evaluate "
                     "the base model.")
    src.add_argument("--model.tokenizer_name_or_path", type=Optional[str], default=None,
                     help="Tokenizer; default: the one recorded with the model, else the model's folder.")
    add_settings_options(parser, TaskSettings)  # --tasks ... --apply_chat_template, lm-eval's names
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", type=Optional[str], default=None,
                     help="Folder for lm-eval's results JSON, one file per model (new or empty, or an earlier "
                     "eval output with --overwrite). Default: a new folder eval-<date>-<time> here.")
    out.add_argument("--overwrite", action="store_true", help="Replace an earlier eval output in --output_dir.")
    run = parser.add_argument_group("device and dtype")
    run.add_argument("--device", type=Literal["cpu", "cuda", "auto"], default="auto",
                     help="auto: CUDA when available, else CPU.")
    run.add_argument("--dtype", type=Literal["float32", "bfloat16"], default="float32",
                     help="Weights and compute dtype (a quantized base keeps its layers' compute dtype).")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(_bare_flag(list(argv or []), "--apply_chat_template"))
    settings = settings_from_options(TaskSettings, args)  # its checks, before any model loads
    # start-up: lm-eval, torch, transformers and peft load only once the options have parsed.
    from lit_lora.evaluation.harness import evaluate_tasks, require_lm_eval, task_manager
    from lit_lora.loading import load_generation_model
    from lit_lora.outputs import check_output_dir

    require_lm_eval()
    output_dir = args.output_dir or _fresh_folder_name()
    check_output_dir(output_dir, "--output_dir", args.overwrite)
    sources = _sources(args)
    manager = task_manager(settings)  # an unknown task is reported before any model loads
    columns: list[tuple[str, dict[str, Any]]] = []
    for index, (label, option, path) in enumerate(sources):
        model, tokenizer = load_generation_model(
            model_name_or_path=args.model.model_name_or_path,
            tokenizer_name_or_path=args.model.tokenizer_name_or_path, device=args.device, dtype=args.dtype,
            **({option: path} if option else {}),
        )
        if index == 0 and args.with_base and option:
            columns.append(("base", _timed("base", lambda: _without_adapter(model, tokenizer, settings, manager))))
        columns.append((label, _timed(label, lambda: evaluate_tasks(model, tokenizer, settings, manager))))
        del model
    _print_tables(columns, args.with_base)
    written = _write_results(output_dir, columns, args.overwrite)
    print_note(f"wrote lm-eval's results to {written}")
    if len(sources) == 1 and sources[0][1] == "ckpt_path":
        _log_to_run(sources[0][2], columns[-1][1])
    return 0


def _bare_flag(argv: list[str], flag: str) -> list[str]:
    """lm-eval's command takes `--apply_chat_template` alone; jsonargparse wants a value for a bool."""
    return [a for i, arg in enumerate(argv)
            for a in ([arg, "true"] if arg == flag and (i + 1 == len(argv) or argv[i + 1].startswith("--")) else [arg])]


def _sources(args: Any) -> list[tuple[str, Optional[str], Optional[str]]]:
    """(column label, load_generation_model keyword, path) per model; the labels are unique file names."""
    found = [(option, path) for option in ("ckpt_path", "adapter_path", "model_dir") for path in args[option]]
    if not found:
        if not args.model.model_name_or_path:
            raise LitLoraError("no model: give --ckpt_path FILE, --adapter_path DIR, --model_dir DIR (each "
                               "repeatable), or --model.model_name_or_path for the base model alone")
        if args.with_base:
            raise LitLoraError("--with_base needs an adapter or checkpoint to compare the base with")
        return [("base", None, None)]
    if args.with_base and found[0][0] == "model_dir":
        raise LitLoraError("--with_base switches the first model's adapter off, but the first model is a "
                           "--model_dir (a plain model, no adapter); give an adapter or checkpoint first")
    labels: list[str] = []
    for _, path in found:
        label = re.sub(r"[^A-Za-z0-9._=-]+", "_", Path(path).stem if path.endswith(".ckpt") else Path(path).name)
        labels.append(label if label not in labels and label != "base" else f"{label}-{len(labels) + 1}")
    return [(label, option, path) for label, (option, path) in zip(labels, found)]


def _without_adapter(model: Any, tokenizer: Any, settings: TaskSettings, manager: Any) -> dict[str, Any]:
    from lit_lora.evaluation.harness import evaluate_tasks  # start-up: see main

    with model.disable_adapter():  # PEFT: the base's own outputs, from the same weights
        return evaluate_tasks(model, tokenizer, settings, manager)


def _timed(label: str, run: Any) -> dict[str, Any]:
    started = time.perf_counter()
    results = run()
    print_note(f"evaluated {label} in {time.perf_counter() - started:.1f} s")
    return results


def _print_tables(columns: list[tuple[str, dict[str, Any]]], with_base: bool) -> None:
    if len(columns) == 1:
        from lm_eval.utils import make_table

        print(make_table(columns[0][1]))
        return
    from lit_lora.evaluation.tables import side_by_side  # start-up: see main

    print(side_by_side(columns, base="base" if with_base else None))


def _fresh_folder_name() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"eval-{stamp}", 1
    while Path(name).exists():
        n += 1
        name = f"eval-{stamp}-{n}"
    return name


def _write_results(output_dir: str, columns: list[tuple[str, dict[str, Any]]], overwrite: bool) -> Path:
    # start-up: see main
    from lm_eval.utils import handle_non_serializable
    from lit_lora.outputs import write_dir_atomically

    def fill(folder: Path) -> None:
        for label, results in columns:
            text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
            (folder / f"{label}.json").write_text(text, encoding="utf-8")

    return write_dir_atomically(output_dir, "eval results", fill, "--output_dir", overwrite)


def _log_to_run(ckpt_path: str, results: dict[str, Any]) -> None:
    """The metrics on the logger of the run the checkpoint belongs to, at the checkpoint's step."""
    from lit_lora.evaluation.tables import logged_metrics  # start-up: see main

    found = _run_logger(ckpt_path)
    if found is None:
        return
    logger, step = found
    logger.log_metrics(logged_metrics(results), step=step)
    logger.finalize("success")
    print_note(f"logged eval/<task>/<metric> at step {step} to the run's {type(logger).__name__} "
               f"({logger.log_dir if hasattr(logger, 'log_dir') else logger.version})")


def _run_logger(ckpt_path: str) -> Optional[tuple[Any, int]]:
    """(the run's first logger, pointed at the run, the checkpoint's step) for a checkpoint in a run folder
    (`.../version_N/checkpoints/`, beside the config.yaml fit saved); None for a checkpoint anywhere else.
    The folder is taken from where the checkpoint lies, not from the config's save_dir, which is relative to
    the folder fit ran in."""
    # start-up: see main
    import yaml
    from lightning.pytorch.cli import instantiate_class
    from lit_lora.training.checkpoint_files import load_checkpoint_file, run_version_of

    ckpt = Path(ckpt_path).resolve()
    run, config = ckpt.parent.parent, ckpt.parent.parent / "config.yaml"
    if ckpt.parent.name != "checkpoints" or not config.is_file():
        return None
    spec = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("trainer") or {}).get("logger")
    spec = spec[0] if isinstance(spec, list) and spec else spec
    if not isinstance(spec, dict) or "class_path" not in spec:
        return None
    init = dict(spec.get("init_args") or {})
    checkpoint = load_checkpoint_file(str(ckpt))
    version = run_version_of(str(ckpt))
    if "version" in init and version is not None:
        init.update(save_dir=str(run.parent.parent), name=run.parent.name, version=version)
    run_id = checkpoint.get("lit_lora", {}).get("logger_run_id")
    if "run_id" in init and run_id:
        init["run_id"] = run_id
    return instantiate_class((), {"class_path": spec["class_path"], "init_args": init}), int(checkpoint["global_step"])
