"""lit_lora: LoRA fine-tuning of small causal LMs (GPT-2, Llama, Qwen...) with Lightning and PEFT.

Code map. Each folder is a layer; a module imports only its own layer and those listed before it, never
one listed after it (tests/test_layout.py checks this and that no import goes in a circle):

    errors, notes, settings, constants, outputs, jsonl, nll   one-line errors, notes on stderr, settings
                 coercion, shared values, safe output paths, JSON Lines reading, the next-token loss
    objectives/  what a step computes from its batch: the Objective contract, SFT's token-weighted NLL
    hub, quantization   loading base models of any family (QLoRA: quantized by bitsandbytes) and
                 tokenizers (hub id or local folder)
    lora/        LoRA in PEFT's terms: settings, default targets per family, wrapping, export and merge
    measure/     numbers about a model or process: parameter counts, a dry run on fake tensors for FLOPs
                 and the memory estimate, host memory
    generation/  generation settings, the one decoding implementation, prompts in and completions out
    data/        reading files, tokenizing and packing, batches, samplers, the LightningDataModule
    training/    Lightning plumbing: checkpoint I/O and callback, safe stops, speed, declared contracts
    model/       the LightningModule `LitLora` and its loss, schedule, RNG and checkpoint section
    monitoring/  callbacks that watch a run, one per file (memory, throughput, bar, samples, HPARAMS)
    restore      rebuilding a model from a checkpoint, adapter, merged folder or the base alone
    cli/         `python -m lit_lora.cli`: dispatch, the LightningCLI, resume rules, the tool commands

Heavy libraries (torch, lightning, transformers, peft, datasets) are imported by the modules that need
them, not here, so `python -m lit_lora.cli --help` and input errors stay fast.
"""

__version__ = "0.1.0"
