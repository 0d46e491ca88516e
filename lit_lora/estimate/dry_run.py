"""One training step of the model's exact shape on fake tensors: no weights, no memory, no compute.

torch's `FakeTensorMode` runs every kernel for its output shapes only, and transformers treats fake tensors
as tracing (no data-dependent branches), so any family's forward and backward run as they would for real.
`Watch` (below) counts, op by op, the bytes held by live tensors (their peak, as torch's `MemTracker` counts
it, but in time linear in the ops: MemTracker rescans every tensor at every op, minutes for a 30-layer
model) and the FLOPs of every op torch's `FlopCounterMode` knows (its own formulas), split into work linear
in the sequence length (matmuls) and quadratic (attention). Nothing here is a formula per family: RoPE,
grouped-query attention, gated MLPs, RMSNorm, tied or untied heads, gradient checkpointing and the
precision's casts are whatever the model's code does.

The copy is built from the model's config on the meta device and wrapped with the same PEFT config, so
the real model is never copied. The step's loss is training's own (`lit_lora.objectives.nll`: the output head in
chunks, each chunk's gradients taken in the forward pass and kept until the backward). An objective that runs
more than SFT's one sequence per row (`StepShape`: a preference pair's chosen and rejected in one forward, a
reference pass without gradients) is replayed with its sequences' log-probabilities (`objectives/logps.py`),
the reference pass with the adapter off while the policy's activations are held. A model many
layers deep is counted from two short copies (`fake_step`): every count (each pass's peak, bytes and
FLOPs) is linear in the number of layers.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from lit_lora.lora.parts import base_model, uses_conv1d
from lit_lora.lora.wrap import enable_checkpointing
from lit_lora.objectives.base import StepShape
from lit_lora.objectives.logps import reference_policy, sequence_logps
from lit_lora.objectives.nll import model_nll

# Precisions under which Lightning converts the whole module (LoRA weights included) to another dtype.
CONVERTED = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "64-true": torch.float64}


@dataclass(frozen=True)
class StepCount:
    """What one forward + backward of a batch holds and computes."""

    peaks: tuple[int, int]  # live tensor bytes at the forward's and the backward's peaks: weights, gradients,
    # saved activations, temporaries
    weight_bytes: int  # of them, the copy's parameters and buffers (full precision for a quantized model)
    forward: tuple[int, int]  # FLOPs (linear in the sequence length, attention)
    backward: tuple[int, int]  # the same, for the backward pass (recomputed forwards included)

    @property
    def peak_bytes(self) -> int:
        return max(self.peaks)


def fake_step(model: Any, batch: int, block: int, precision: str = "32-true", gradient_checkpointing: bool = False,
              device_type: str = "cpu", chunked_loss: bool = True, shape: StepShape = StepShape()) -> StepCount:
    """Count one training step of `model` (the PEFT-wrapped model LitLora trains), cached on the model.

    `device_type` "cuda" runs CUDA's kernels when a GPU is present, otherwise the CPU's (their saved tensors
    differ little: dropout masks' dtype, attention's statistics). The loss is training's (`model_nll`),
    chunked unless `chunked_loss` is False; Liger's fused kernel, which holds less, is counted as chunks.
    `shape`: the objective's sequences per row and reference pass (`Objective.step_shape`); SFT's by default.
    """
    cache = model.__dict__.setdefault("_lit_lora_dry_runs", {})  # per model: its shape never changes
    args = (batch, block, str(precision), gradient_checkpointing, device_type, chunked_loss)
    counted = StepShape(shape.sequences, shape.no_grad_sequences)  # the description does not change the step
    key = (*args, counted)
    if key not in cache:  # the key is the arguments of `_step`
        config = base_model(model).config
        layers, period = _depth(config)
        per_layer_lora = getattr(model.peft_config["default"], "layers_to_transform", None)
        if layers < _EXTRAPOLATE_FROM * period or layers % period or per_layer_lora is not None:
            cache[key] = _step(model, *args, config, counted)
        else:
            # Decoder layers of one kind hold and compute alike, so every count is a + b x layers: two short
            # copies give a and b (GPT-2 XL: 48 layers in 1.5 s, not 10 s). Checked against full dry runs.
            short, longer = (_step(model, *args, _with_depth(config, n * period), counted) for n in (1, 2))
            cache[key] = _extrapolate(short, longer, layers // period - 1)
    return cache[key]


# Models at least this many layer patterns deep are counted from copies one and two patterns deep.
_EXTRAPOLATE_FROM = 6


def _depth(config: Any) -> tuple[int, int]:
    """(decoder layers, layers per repeating pattern): Gemma 2 alternates sliding and global attention (2),
    GPT-Neo local and global (2); per-layer lists of the config give the pattern, 1 without any."""
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        return 1, 1
    lists = [v for v in vars(config).values() if isinstance(v, (list, tuple)) and len(v) == layers]
    period = next((p for p in range(1, layers + 1) if all(v[i] == v[i % p] for v in lists for i in range(layers))),
                  layers)
    return layers, period


def _with_depth(config: Any, layers: int) -> Any:
    short = copy.deepcopy(config)
    full = short.num_hidden_layers
    for name, value in list(vars(short).items()):
        if isinstance(value, (list, tuple)) and len(value) == full:
            setattr(short, name, type(value)(value[:layers]))
    short.num_hidden_layers = layers
    return short


def _extrapolate(short: StepCount, longer: StepCount, more: int) -> StepCount:
    """`short` plus `more` times the difference one more pattern of layers makes."""
    def line(a: Any, b: Any) -> Any:
        return a + (b - a) * more

    # Each pass's peak, not the step's: the step's peak moves from one pass to the other with the depth
    # (the loss's chunk at the forward's end against the deepest layers' backward), each pass's does not.
    return StepCount(tuple(map(line, short.peaks, longer.peaks)),  # type: ignore[arg-type]
                     line(short.weight_bytes, longer.weight_bytes),
                     tuple(map(line, short.forward, longer.forward)),  # type: ignore[arg-type]
                     tuple(map(line, short.backward, longer.backward)))  # type: ignore[arg-type]


def dry_run_failure(err: BaseException) -> str:
    """One line saying why a dry run failed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _step(model: Any, batch: int, block: int, precision: str, gradient_checkpointing: bool,
          device_type: str, chunked_loss: bool, config: Any, shape: StepShape = StepShape()) -> StepCount:
    from torch._subclasses.fake_tensor import FakeTensorMode

    device = torch.device("cuda" if device_type == "cuda" and torch.cuda.is_available() else "cpu")
    # Without a GPU, CUDA's attention is counted as its fused kernels hold it: output and log-sum-exp saved,
    # dropout inside. The CPU's SDPA falls back to materialising the T x T weights when dropout is on
    # (GPT-2 small at 8 x 512: 3 x 96 MB per layer that no GPU run holds).
    attention = _fused_attention() if device_type == "cuda" and device.type == "cpu" else contextlib.nullcontext()
    shell = _meta_copy(model, config, gradient_checkpointing, CONVERTED.get(precision))
    mode = FakeTensorMode()
    _to_fake(shell, mode, device)
    autocast = contextlib.nullcontext()
    if "mixed" in precision:
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        autocast = torch.autocast(device.type, dtype=dtype)
    watch = Watch()
    with mode, attention:
        ids = torch.zeros((batch * shape.sequences, block), dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        watch.track(*shell.parameters(), *shell.buffers())
        weights = watch.live
        watch.track(ids, mask)
        with watch:
            with autocast:  # as LitLora._nll
                loss = _loss(shell, ids, mask, chunked_loss, shape, batch)
            forward, forward_peak = tuple(watch.flops), watch.peak
            watch.peak = watch.live
            loss.backward()
    backward = (watch.flops[0] - forward[0], watch.flops[1] - forward[1])
    return StepCount((forward_peak, watch.peak), weights, forward, backward)


def _loss(shell: Any, ids: torch.Tensor, mask: torch.Tensor, chunked: bool, shape: StepShape,
          batch: int) -> torch.Tensor:
    """The loss training backpropagates, as its objective computes it: SFT's token mean, or sequences'
    log-probabilities and a reference pass of `shape.no_grad_sequences` per row while their activations wait."""
    if shape == StepShape():
        nll, n = model_nll(shell, ids, mask, ids, chunked=chunked, fused=False)
        return nll / n
    logps = sequence_logps(shell, ids, mask, ids).logps
    if shape.no_grad_sequences:
        ref = ids.new_zeros((batch * shape.no_grad_sequences, ids.shape[1]))
        with reference_policy(shell):
            sequence_logps(shell, ref, torch.ones_like(ref), ref)
    return logps.sum()


@contextlib.contextmanager
def _fused_attention() -> Any:
    """`F.scaled_dot_product_attention` as a fused kernel: the CPU's flash-attention op, dropout and mask
    included (fake tensors: only its outputs' shapes matter)."""
    from unittest import mock

    def sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: Any = None, enable_gqa: bool = False) -> Any:
        if enable_gqa:  # the fused kernels read shared key/value heads in place; this copy is a few MB
            groups = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", sdpa):
        yield


def _meta_copy(model: Any, config: Any, gradient_checkpointing: bool, convert_to: Any) -> Any:
    """A copy of `model`'s LoRA layers on the architecture `config` (its own, or fewer layers of it) on the
    meta device, in training mode."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    frozen = next((p.dtype for p in model.parameters() if not p.requires_grad), torch.float32)
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(
            config, dtype=frozen, attn_implementation=config._attn_implementation,
            trust_remote_code=bool(getattr(config, "auto_map", None)),  # the user's model already runs its code
        )
        peft_config = copy.deepcopy(model.peft_config["default"])
        peft_config.inference_mode = False
        # A quantized GPT-2 has Linear layers where this full-precision copy has Conv1D.
        peft_config.fan_in_fan_out = uses_conv1d(shell)
        shell = get_peft_model(shell, peft_config)
    for p in shell.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # as lora/build.py keeps LoRA weights
    if convert_to is not None:
        shell = shell.to(convert_to)
    if gradient_checkpointing:
        enable_checkpointing(shell)
    return shell.train()


def _to_fake(shell: Any, mode: Any, device: torch.device) -> None:
    """Swap every meta tensor for a fake one on `device` in place; tied weights stay one tensor."""
    converted: dict[int, tuple[Any, Any]] = {}  # id -> (original, fake): the original kept alive

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in converted:
            converted[id(t)] = (t, mode.fake_tensor_converter.from_meta_and_device(mode, t, device))
        return converted[id(t)][1]

    for module in shell.modules():
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = fake(b)
        for name, p in list(module._parameters.items()):
            if p is not None:
                if id(p) not in converted:
                    converted[id(p)] = (p, torch.nn.Parameter(fake(p.detach()), requires_grad=p.requires_grad))
                module._parameters[name] = converted[id(p)][1]


def _flop_formulas() -> tuple[dict[Any, Any], set[Any]]:
    """torch's FLOP formulas by op, with the CPU's SDPA kernels (which FlopCounterMode does not list)
    counted by its flash-attention formulas; and the ops whose work grows with the square of the length."""
    from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    formulas = dict(flop_registry)
    formulas[aten._scaled_dot_product_flash_attention_for_cpu] = (
        lambda q, k, v, *args, out_val=None, **kwargs: sdpa_flop_count(q.shape, k.shape, v.shape))
    formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
        lambda g, q, k, v, *args, out_val=None, **kwargs: sdpa_backward_flop_count(g.shape, q.shape, k.shape, v.shape))
    quadratic = {op for op in formulas if "attention" in str(op)} | {aten.bmm, aten.baddbmm}
    return formulas, quadratic


class Watch(TorchDispatchMode):
    """Live tensor bytes and their peak, and FLOPs as [linear, attention], over the ops run under this mode
    (plus the tensors given to `track`). A storage counts once, however many views share it, from its
    creation until Python frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.flops = [0, 0]
        self._seen: Any = WeakIdKeyDictionary()
        self._formulas, self._quadratic = _flop_formulas()

    def track(self, *tensors: Any) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage not in self._seen:
                    size = storage.nbytes()
                    self._seen[storage] = size
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in self._formulas:
            self.flops[packet in self._quadratic] += int(self._formulas[packet](*args, **kwargs, out_val=out))
        self.track(*tree_flatten(out)[0])
        return out
