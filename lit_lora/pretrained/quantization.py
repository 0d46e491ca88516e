"""QLoRA's quantized base: `--model.quantization nf4|fp4|int8` and its options, as transformers'
`BitsAndBytesConfig` (bitsandbytes does the quantizing and the 4-bit matmuls, on CPUs too since 0.50).

    python -m lit_lora.cli fit --config conf/quickstart.yaml --model.quantization nf4

The base's linear layers are quantized as `from_pretrained` loads them; everything else (embeddings,
norms, biases, an untied output head) keeps `model.base_dtype`, and the LoRA weights stay float32.
"""

from __future__ import annotations

from typing import Any, Optional

from lit_lora.errors import LitLoraError

METHODS = ("nf4", "fp4", "int8")
INSTALL = 'pip install -e ".[qlora]" (or pip install "bitsandbytes>=0.50")'
MIN_BITSANDBYTES = (0, 50)  # the first release with a CPU library
_DTYPES = ("float32", "bfloat16", "float16")
# BitsAndBytesConfig's names; the method itself sets load_in_4bit/load_in_8bit and bnb_4bit_quant_type.
_OPTIONS = {
    "4bit": {"bnb_4bit_use_double_quant": bool, "bnb_4bit_compute_dtype": _DTYPES,
             "bnb_4bit_quant_storage": ("uint8",) + _DTYPES, "llm_int8_skip_modules": list},
    "int8": {"llm_int8_threshold": float, "llm_int8_skip_modules": list},
}
# Devices bitsandbytes 0.50 has kernels for, 4-bit and int8 alike; others get a one-line error.
DEVICES = ("cpu", "cuda", "xpu")


def _kind(method: str) -> str:
    return "int8" if method == "int8" else "4bit"


def require_bitsandbytes(value: str, option: str = "model.quantization") -> None:
    """bitsandbytes, new enough for this machine; else one line naming the install command."""
    try:
        import bitsandbytes
    except ImportError:
        raise LitLoraError(f"{option}={value!r} needs bitsandbytes, which is not installed: {INSTALL}") from None
    version = tuple(int(p) for p in bitsandbytes.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_BITSANDBYTES:
        raise LitLoraError(f"{option}={value!r} needs bitsandbytes >= 0.50 (it has a CPU library), "
                           f"found {bitsandbytes.__version__}: {INSTALL}")


def check_quantization(method: Optional[str], options: Optional[dict[str, Any]]) -> None:
    """One line for a method or an option BitsAndBytesConfig would not take, before anything loads."""
    if method is None:
        if options:
            raise LitLoraError(f"model.quantization_options {options!r} are set but model.quantization is null; "
                               f"expected one of {', '.join(METHODS)}")
        return
    if method not in METHODS:
        raise LitLoraError(f"model.quantization={method!r} is not a method; expected one of {', '.join(METHODS)}")
    allowed = _OPTIONS[_kind(method)]
    for key, value in (options or {}).items():
        if key not in allowed:
            raise LitLoraError(f"model.quantization_options has {key!r}, which {method} does not take; expected "
                               f"{', '.join(sorted(allowed))} (BitsAndBytesConfig's names)")
        kind = allowed[key]
        if not _valid(value, kind):
            expected = " or ".join(kind) if isinstance(kind, tuple) else {list: "a list of module names"}.get(
                kind, kind.__name__)
            raise LitLoraError(f"model.quantization_options {key}={value!r} is not valid; expected {expected}")


def _valid(value: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return value in kind
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


def bnb_config(method: str, options: Optional[dict[str, Any]], base_dtype: Optional[str]) -> Any:
    """The `BitsAndBytesConfig` for `method` and its options. 4-bit layers compute in `base_dtype` (the
    dtype of the layers kept unquantized) unless `bnb_4bit_compute_dtype` says otherwise."""
    import torch
    from transformers import BitsAndBytesConfig

    check_quantization(method, options)
    require_bitsandbytes(method)
    kwargs = dict(options or {})
    if method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **kwargs)
    for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if key in kwargs:
            kwargs[key] = getattr(torch, kwargs[key])
    kwargs.setdefault("bnb_4bit_compute_dtype", getattr(torch, base_dtype or "float32"))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method, **kwargs)


def quantization_key(method: Optional[str], options: Optional[dict[str, Any]]) -> Optional[str]:
    """What makes two quantized bases the same weights (method, double quantization, skipped modules),
    for checkpoints to compare; the compute dtype may change between runs."""
    if method is None:
        return None
    kept = {k: v for k, v in sorted((options or {}).items()) if k != "bnb_4bit_compute_dtype"}
    return method + "".join(f", {k}={v}" for k, v in kept.items())


def check_device(method: Optional[str], device_type: str, sharded: bool = False) -> None:
    """One line where bitsandbytes has no kernels for this run's device, or the strategy shards the base
    (FSDP would flatten the packed 4-bit weights without their quantization state)."""
    if method is None:
        return
    if device_type not in DEVICES:
        raise LitLoraError(f"model.quantization={method!r} runs on {', '.join(DEVICES)} devices "
                           f"with bitsandbytes, not on {device_type!r}; drop model.quantization or change "
                           "trainer.accelerator")
    if sharded:
        raise LitLoraError(f"model.quantization={method!r} does not work with FSDP here; use "
                           "--trainer.strategy ddp (each process holds the whole 4-bit base, a quarter of its size)")


def is_quantized_weight(param: Any) -> bool:
    """A bitsandbytes 4-bit (`Params4bit`) or 8-bit (`Int8Params`) weight."""
    return type(param).__name__ in ("Params4bit", "Int8Params")


def logical_numel(param: Any) -> int:
    """Elements of the weight before quantization (a packed 4-bit weight holds two per byte)."""
    state = getattr(param, "quant_state", None)
    return state.shape.numel() if state is not None else param.numel()


def quantized_weight_bytes(param: Any) -> int:
    """Bytes a bitsandbytes weight holds: its packed values and its quantization state (absmax, code, the
    nested state of double quantization; int8's row scales). On the meta device (`summary`), the same
    counted from its shape and settings as bitsandbytes lays them out (tests compare the two)."""
    if type(param).__name__ == "Int8Params":
        return param.numel() + 4 * param.shape[0]  # int8 values, one float32 scale per row (SCB)
    state = param.quant_state
    if state is not None:
        return sum(t.untyped_storage().nbytes() for t in _state_tensors(param))
    numel = param.numel()
    blocks = -(-numel // param.blocksize)
    if param.compress_statistics:  # absmax as uint8, with float32 absmax of its own 256-blocks, code and offset
        absmax = blocks + 4 * -(-blocks // 256) + 4 * 256 + 4
    else:
        absmax = 4 * blocks
    return -(-numel // 2) + absmax + 4 * 16  # two 4-bit values a byte, and the 16-value code


def _state_tensors(param: Any) -> list[Any]:
    """The tensors of a 4-bit weight: the packed values and every tensor of its quant state, nested ones too."""
    import torch

    found, todo = [param], [param.quant_state]
    while todo:
        state = todo.pop()
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif type(value).__name__ == "QuantState":
                todo.append(value)
    return found


def quantized_layers(model: Any) -> list[Any]:
    """The bitsandbytes layers (not PEFT's LoRA layers around them, which show their `weight` too)."""
    return [m for m in model.modules() if is_quantized_weight(m._parameters.get("weight"))]


def quantization_line(model: Any) -> str:
    """"12 linear layers nf4 (bitsandbytes, compute float32)"; "" for a model without quantized layers."""
    layers = quantized_layers(model)
    if not layers:
        return ""
    weight = layers[0].weight
    if type(weight).__name__ == "Int8Params":
        return f"{len(layers)} linear layers int8 (bitsandbytes)"
    compute = str(layers[0].compute_dtype or "float32").replace("torch.", "")
    double = ", double quantization" if weight.compress_statistics else ""
    return f"{len(layers)} linear layers {weight.quant_type} (bitsandbytes{double}, compute {compute})"


def dequantized_bytes(model: Any) -> int:
    """The temporary a quantized matmul holds: the largest quantized layer's weight dequantized, in its
    compute dtype (int8 layers: float16, to which bitsandbytes casts); 0 without quantized layers."""
    import torch

    largest = 0
    for module in quantized_layers(model):
        weight = module.weight
        compute = getattr(module, "compute_dtype", None) or (
            torch.float16 if type(weight).__name__ == "Int8Params" else torch.float32)
        largest = max(largest, logical_numel(weight) * compute.itemsize)
    return largest


# -- the CPU inference layout -------------------------------------------------------------------------------------
# On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight into a bfloat16 inference layout the first time
# its layer runs in eval mode on an input that needs no gradient (a validation, a generated sample). Its matmul
# cannot train on that layout, and its way back is lossy (the scales stay bfloat16 or are quantized again). So
# a run that trains or evaluates keeps the layout training uses, by the flag bitsandbytes checks before
# repacking; `generate` and `predict` keep the fast layout.


def in_cpu_inference_layout(layer: Any) -> bool:
    """Whether bitsandbytes has repacked this 4-bit layer's weight for CPU inference."""
    return bool(getattr(getattr(layer.weight, "quant_state", None), "packing_format_for_cpu", False))


def hold_training_layout(model: Any) -> list[Any]:
    """Turns off bitsandbytes' CPU inference repack on `model`'s 4-bit layers; returns the layers it was on
    for (`release_training_layout` turns it back on). A no-op on CPUs without AVX512-BF16."""
    held = [m for m in quantized_layers(model) if getattr(m, "support_avx512bf16_for_cpu", False)]
    for layer in held:
        layer.support_avx512bf16_for_cpu = False
    return held


def release_training_layout(layers: list[Any]) -> None:
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True


def check_training_layout(model: Any) -> None:
    """One line where a 4-bit layer was already repacked for CPU inference (an eval-mode forward without
    gradients before training, through the Python API): its weights cannot be restored exactly."""
    layers = quantized_layers(model)
    packed = [m for m in layers if in_cpu_inference_layout(m)]
    if packed:
        raise LitLoraError(f"bitsandbytes repacked {len(packed)} of the model's {len(layers)} 4-bit layers for CPU "
                           "inference (it ran in eval mode without gradients before training), and training cannot "
                           "run on that layout; build the model again and train it before any such forward")
