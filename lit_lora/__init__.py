"""lit_lora: LoRA fine-tuning of small causal LMs (GPT-2, Llama, Qwen...) with Lightning and PEFT.

Code map. Each folder is a layer; a module imports only its own layer and those listed before it, never
one listed after it (tests/unit/test_package_layout.py checks this and that no import goes in a circle):

    errors, notes, settings, constants, outputs, jsonl, host_memory, eval_mode   one-line errors, notes on
                 stderr, settings coercion, shared values, safe output paths, JSON Lines reading, this
                 process's memory, eval mode for a while
    pretrained/  base models of any family (QLoRA: quantized by bitsandbytes) and tokenizers (hub id or local
                 folder)
    objectives/  what a training step computes from a batch (SFT by default): the next-token loss, its output
                 head in chunks
    lora/        LoRA in PEFT's terms: settings, default targets per family, the model build, wrapping, export
                 and merge
    estimate/    estimates before a run: parameter counts, a dry run on fake tensors for FLOPs and the memory
                 estimate, the largest batch that fits
    generation/  generation settings, the one decoding implementation, prompts in and completions out
    evaluation/  lm-evaluation-harness tasks on a model object, their metrics and side-by-side tables
    data/        reading files, tokenizing and packing, batches, samplers, the LightningDataModule
    training/    the LightningModule `LitLora`, its schedule, RNG and checkpoint section, checkpoint files,
                 speed, distributed helpers, declared contracts
    callbacks/   what watches or steers a run, one per file: checkpoints, safe stops, memory, throughput, bar,
                 samples, HPARAMS
    loading      rebuilding a model from a checkpoint, adapter, merged folder or the base alone
    cli/         `python -m lit_lora.cli`: dispatch, the LightningCLI, resume rules, the tool commands
    model, monitoring   old paths users' configs name as `class_path`, kept as aliases; nothing imports them

Heavy libraries (torch, lightning, transformers, peft, datasets) are imported by the modules that need
them, not here, so `python -m lit_lora.cli --help` and input errors stay fast.
"""

__version__ = "0.1.0"
