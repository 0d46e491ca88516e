"""Loading base models and tokenizers from the hub or a local directory, with errors users can act on."""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from lit_lora.errors import LitLoraError
from lit_lora.notes import print_note
from lit_lora.pretrained.dropout import set_dropout
from lit_lora.pretrained.quantization import quantized_layers

_OFFLINE_HINT = (
    "the Hugging Face hub is unreachable from here (offline or HF_HUB_OFFLINE=1); "
    "point it at a local directory holding config.json and the weights, e.g. one written by "
    "`model.save_pretrained(DIR)` or `huggingface-cli download gpt2 --local-dir DIR` on a machine with network"
)


def _not_found(what: str, name: str, err: Exception) -> LitLoraError:
    if Path(name).expanduser().exists():
        return LitLoraError(f"{what} {name!r} is a local path but could not be loaded: {first_sentence(err)}")
    return LitLoraError(f"{what} {name!r} is neither a local directory nor loadable from the hub: {_OFFLINE_HINT}")


def first_sentence(err: BaseException) -> str:
    """The first sentence of an exception's message (transformers' first sentence names the cause), or its
    type when it has no message."""
    lines = [line.strip() for line in str(err).split(". ")[0].splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def tokenizer_source(tokenizer_name_or_path: Optional[str], model_name_or_path: str) -> str:
    """The tokenizer to load: the one named, else the model's own folder or hub id."""
    return tokenizer_name_or_path or model_name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer with `AutoTokenizer.from_pretrained` and give it a pad token if it has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _not_found("tokenizer", name_or_path, err) from err
    if tokenizer.eos_token_id is None:
        raise LitLoraError(f"tokenizer {name_or_path!r} has no EOS token; documents cannot be separated")
    if tokenizer.pad_token_id is None:
        # Padding is masked by attention_mask and label -100, never by id, so reusing EOS is safe and the
        # model still learns to emit EOS.
        tokenizer.pad_token = tokenizer.eos_token
        if name_or_path not in _PAD_NOTED:
            _PAD_NOTED.add(name_or_path)
            print_note(f"tokenizer {name_or_path} has no pad token; padding with its EOS token "
                       f"{tokenizer.eos_token!r} (padding is masked out of attention and loss)")
    return tokenizer


_PAD_NOTED: set[str] = set()  # tokenizers whose pad token was said, once per process


def check_vocabulary(model: Any, tokenizer: Any) -> None:
    """One line when the tokenizer has ids the model's input embedding has no row for (a tokenizer given
    tokens of its own, such as ChatML's `<|im_start|>`, on a model never resized for them): the first such
    id would be an IndexError inside the model. `model` None (no model yet): nothing to check."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is None or len(tokenizer) <= weight.shape[0]:
        return
    raise LitLoraError(
        f"the tokenizer has {len(tokenizer):,} tokens but the model's input embedding has {weight.shape[0]:,} rows: "
        f"ids from {weight.shape[0]:,} up have no embedding; resize the model for this tokenizer and save both "
        "(model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained(DIR) and "
        "tokenizer.save_pretrained(DIR)) and train from DIR, or use the model's own tokenizer"
    )


def bos_prefix(tokenizer: Any) -> list[int]:
    """[BOS] when this tokenizer starts every text with BOS (Llama's do; GPT-2's does not), else [].

    lit_lora tokenizes with add_special_tokens=False and puts this prefix only where a document or a prompt
    starts: never inside a document cut into chunks, nor between a prompt and its completion."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    # The fast tokenizer's own post-processor says what it adds, without a tokenizer call (a cached corpus
    # must not need one); slow tokenizers are asked with a call.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    ids = backend.encode("a").ids if backend is not None else tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def load_base_model(
    name_or_path: str,
    model_config: Optional[dict[str, Any]] = None,
    dtype: Optional[str] = None,
    attn_implementation: Optional[str] = None,
    trust_remote_code: bool = False,
    weights: bool = True,
    quantization: Any = None,
    dropout: Optional[float] = None,
) -> Any:
    """Load the causal LM to adapt: `from_pretrained(name_or_path)`, or a randomly initialised model of the
    shape `model_config` when that is given (config fields, with `model_type` naming the family; GPT-2
    without it), which needs no download. `attn_implementation` None: SDPA where the family has it.
    `weights=False`: the same model on the meta device, from its config alone (`summary`: shapes, no data).
    `quantization`: a `BitsAndBytesConfig` (lit_lora.pretrained.quantization); its layers are quantized on the CPU as
    they load, and Lightning moves them to the GPU. `dropout`: the base's dropout (None: the config's)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype) if dtype else None
    if model_config is not None:
        config = build_config(model_config)
    else:
        try:
            with no_loading_bar(True):
                config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise _not_found("model.model_name_or_path", name_or_path, err) from err
    set_dropout(config, dropout)
    model_class = causal_lm_class(config, trust_remote_code)
    kwargs: dict[str, Any] = {"attn_implementation": _attention(model_class, attn_implementation)}
    try:
        if model_config is not None or not weights:
            with contextlib.nullcontext() if weights else torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
            model = model.to(torch_dtype) if torch_dtype is not None else model
            if quantization is None:
                return model
            if not weights:  # the quantized layers' shapes, on the meta device (`summary`)
                return _quantized_layout(model, quantization, torch_dtype)
            # bitsandbytes quantizes as from_pretrained loads: a random-init base is saved and loaded back.
            with tempfile.TemporaryDirectory(prefix="lit_lora-base-") as tmp, no_loading_bar():
                model.save_pretrained(tmp)
                return _load_quantized(tmp, config, quantization, torch_dtype, trust_remote_code, kwargs)
        if quantization is not None:
            return _load_quantized(name_or_path, config, quantization, torch_dtype, trust_remote_code, kwargs)
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        with no_loading_bar(Path(name_or_path).expanduser().is_dir()):
            return AutoModelForCausalLM.from_pretrained(
                name_or_path, config=config, trust_remote_code=trust_remote_code, **kwargs
            )
    except LitLoraError:
        raise
    except (OSError, ValueError, RuntimeError) as err:
        first = first_sentence(err)
        if "attn_implementation" in str(err) or "attention implementation" in str(err):
            raise LitLoraError(f"model.attn_implementation {kwargs['attn_implementation']!r} is not supported by "
                               f"{model_class.__name__} (transformers: {first})") from err
        if model_config is not None:
            raise LitLoraError(f"model.model_config does not build a {model_class.__name__}: {first}") from err
        raise _not_found("model.model_name_or_path", name_or_path, err) from err


def _load_quantized(source: str, config: Any, quantization: Any, dtype: Any, trust_remote_code: bool,
                    kwargs: dict[str, Any]) -> Any:
    """`from_pretrained` with bitsandbytes quantizing the linear layers, on the CPU; one line if none was."""
    from transformers import AutoModelForCausalLM

    with no_loading_bar(Path(source).expanduser().is_dir()):
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, trust_remote_code=trust_remote_code, quantization_config=quantization,
            device_map="cpu", **({"dtype": dtype} if dtype is not None else {}), **kwargs,
        )
    if not quantized_layers(model):
        method = "int8" if quantization.load_in_8bit else quantization.bnb_4bit_quant_type
        raise LitLoraError(f"model.quantization={method!r}: bitsandbytes quantized no layer of "
                           f"{type(model).__name__} (it quantizes torch.nn.Linear and GPT-2's Conv1D layers); "
                           "drop model.quantization for this model")
    return model


def _quantized_layout(model: Any, quantization: Any, dtype: Any) -> Any:
    """`model` (on the meta device) with the bitsandbytes layers `from_pretrained` would put in: the
    quantizer's own module swap, so `summary` counts the same layers training holds."""
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(quantization, pre_quantized=False)
    quantizer.preprocess_model(model, dtype=dtype, device_map={"": "cpu"})
    biases = [m._parameters.get("bias") for m in model.modules()] if dtype is not None else []
    for bias in biases:  # the new layers' biases, in the dtype from_pretrained loads them in
        if bias is not None:
            bias.data = bias.data.to(dtype)
    return model


def build_config(model_config: dict[str, Any]) -> Any:
    """The config `model.model_config` describes: `model_type` (default "gpt2") and that family's fields,
    each checked (transformers' configs accept unknown fields silently)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = copy.deepcopy(dict(model_config))  # transformers edits nested dicts (rope_scaling) in place
    model_type = fields.pop("model_type", "gpt2")
    if model_type not in CONFIG_MAPPING:
        raise LitLoraError(f"model.model_config model_type {model_type!r} is not a model type transformers "
                           f"knows; expected one such as {', '.join(_CAUSAL_EXAMPLES)}")
    config_class = CONFIG_MAPPING[model_type]
    try:
        config = AutoConfig.for_model(model_type, **copy.deepcopy(fields))
    except Exception as err:  # TypeError, ValueError, or huggingface_hub's validation error wrapping one
        reason = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        raise LitLoraError(f"model.model_config is not a valid {config_class.__name__}: {reason[-1]}") from err
    unknown = sorted(k for k in fields if k in vars(config) and not _known_field(config_class, k))
    if unknown:
        raise LitLoraError(f"model.model_config field(s) {unknown} are not fields of {config_class.__name__} "
                           f"(model_type {model_type!r})")
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv_heads, int) and (kv_heads < 1 or heads % kv_heads):
        raise LitLoraError(f"model.model_config num_key_value_heads={kv_heads} must divide "
                           f"num_attention_heads={heads}")
    return config


# Keys of published config.json files that transformers keeps but no model reads: pasting one is not an error.
_HUB_ONLY_KEYS = {"n_ctx", "use_mrope", "cache_implementation", "task_specific_params", "torch_dtype",
                  "_name_or_path", "transformers_version", "architectures", "auto_map"}


def _known_field(config_class: Any, key: str) -> bool:
    """A field of the family: in its config, its attribute map, the base config, a key hub files carry, or
    one its configuration or modeling code reads (a field transformers translates, such as a legacy
    `rope_theta`, is not kept as an attribute and never reaches here)."""
    import inspect
    import sys

    from transformers import PretrainedConfig

    if key in set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {})) | _HUB_ONLY_KEYS:
        return True
    if key in PretrainedConfig().to_dict():
        return True
    module = sys.modules[config_class.__module__]
    modeling = sys.modules.get(config_class.__module__.replace("configuration_", "modeling_"))
    sources = [inspect.getsource(m) for m in (module, modeling) if m is not None]
    return any(f'"{key}"' in src or f"'{key}'" in src or f"config.{key}" in src for src in sources)


_CAUSAL_EXAMPLES = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2")


def causal_lm_class(config: Any, trust_remote_code: bool = False) -> Any:
    """The AutoModelForCausalLM class for `config`; a one-line error for an architecture that is not one."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if trust_remote_code and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return AutoModelForCausalLM  # the repository's own class, known only once its code is loaded
    try:
        model_class = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise LitLoraError(
            f"model type {config.model_type!r} is not a causal language model (AutoModelForCausalLM has no class "
            f"for it); expected one such as {', '.join(_CAUSAL_EXAMPLES)}"
        ) from None
    # Encoder families (BERT, RoBERTa, ...) have a causal-LM class too, but it attends causally only when
    # the config says is_decoder; else each token sees the text it is asked to predict. Encoder-decoder
    # families (BART, mBART) are not refused: their causal-LM class is their decoder, causal by itself.
    if (type(config) in AutoModelForMaskedLM._model_mapping and not getattr(config, "is_decoder", False)
            and not getattr(config, "is_encoder_decoder", False)):
        raise LitLoraError(
            f"model type {config.model_type!r} is an encoder (a masked language model: its attention sees the "
            f"whole text), not a causal language model; expected one such as {', '.join(_CAUSAL_EXAMPLES)} "
            "(or a config with is_decoder: true)"
        )
    return model_class


def _attention(model_class: Any, requested: Optional[str]) -> Optional[str]:
    """The attention kernel to ask for: the one requested, else SDPA where the family has it, else eager."""
    if requested is not None:
        return requested
    if getattr(model_class, "_supports_sdpa", True):
        return "sdpa"
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print_note(f"{model_class.__name__} has no SDPA attention in transformers; using eager attention")
    return "eager"


@contextlib.contextmanager
def no_loading_bar(local: bool = True) -> Iterator[None]:
    """transformers 5 draws a "Loading weights" bar for every from_pretrained, even of a tiny local model,
    and a "Writing model shards" bar for every save_pretrained; a download from the hub keeps its bars
    (they are worth watching)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if local and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if local and was_on:
            hf_logging.enable_progress_bar()
