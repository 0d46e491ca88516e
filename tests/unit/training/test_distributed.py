"""What the distributed strategies build on a CPU: the FSDP config's strategy and wrap policy, and LoRA-only
state keys under FSDP's wrapper names. Real DDP runs are in tests/e2e/test_ddp.py."""

from __future__ import annotations

import torch
import yaml

from tests.conftest import QUICKSTART, REPO


def test_fsdp_config_builds_the_stated_strategy():
    # Lightning's FSDP needs CUDA, so on CPU we check what conf/gpt2/fsdp.yaml builds, without a Trainer.
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from lit_lora.training.module import LitLora
    from lit_lora.training.distributed import DecoderLayerPolicy

    strategy = yaml.safe_load((REPO / "conf" / "gpt2" / "fsdp.yaml").read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    built = parser.instantiate_classes(parser.parse_object({"strategy": strategy})).strategy
    policy = built.kwargs["auto_wrap_policy"]
    assert isinstance(policy, DecoderLayerPolicy)
    # As FSDP calls it: the root first, then each module; GPT-2's blocks are the units (tests/e2e/test_families.py
    # checks the other families).
    root = LitLora(model_config=dict(n_layer=2, n_embd=32, n_head=2), tokenizer_name_or_path=str(QUICKSTART / "tokenizer"),
                   block_size=32, gradient_checkpointing=False)
    assert policy(root, recurse=True, nonwrapped_numel=0)
    units = [name for name, m in root.named_modules() if policy(m, recurse=False, nonwrapped_numel=0)]
    assert units == ["model.base_model.model.transformer.h.0", "model.base_model.model.transformer.h.1"]
    assert built.kwargs["use_orig_params"] is True  # frozen and LoRA weights share FSDP units
    assert built.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert built._state_dict_type == "full"  # one LoRA-only file, written by rank 0


def test_lora_keys_ignore_fsdp_wrapper_names(tiny_model_dir):
    # FSDP's auto-wrap puts each GPT2Block under `_fsdp_wrapped_module`; the state dicts it gathers do not
    # have that name, so the LoRA-only filter must not either.
    from lit_lora.training.module import LitLora

    module = LitLora(model_name_or_path=str(tiny_model_dir), block_size=32, gradient_checkpointing=False)
    keys = module.trainable_keys()
    full = module.state_dict()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._fsdp_wrapped_module = inner

    blocks = module.model.base_model.model.transformer.h
    for i in range(len(blocks)):
        blocks[i] = Wrapper(blocks[i])
    assert any("_fsdp_wrapped_module" in n for n, _ in module.model.named_parameters())
    assert module.trainable_keys() == keys
    assert keys < set(full) and all("lora_" in k for k in keys)
    assert len(keys) == sum(p.requires_grad for p in module.parameters())
