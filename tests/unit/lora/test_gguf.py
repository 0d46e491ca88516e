"""The GGUF export's own logic, without llama.cpp: finding the checkout, the output type, the converter's
command line, and the one line that says why a converter failed (tests/e2e/test_gguf.py runs the real ones)."""

from __future__ import annotations

import sys

import pytest

from lit_lora.errors import LitLoraError
from lit_lora.lora.gguf import check_outtype, converter_command, failure_line, find_llama_cpp

TRACEBACK = """INFO:hf-to-gguf:Loading model: merged
Traceback (most recent call last):
  File "convert_hf_to_gguf.py", line 306, in main
    model_instance.write()
NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()
"""


def test_a_failure_is_the_converters_last_error_line():
    assert failure_line("convert_hf_to_gguf.py", 1, TRACEBACK) == (
        "llama.cpp's convert_hf_to_gguf.py failed (exit 1): NotImplementedError: BPE pre-tokenizer was not "
        "recognized - update get_vocab_base_pre(); nothing was written")
    logged = "INFO:lora-to-gguf:Loading base model\nERROR:lora-to-gguf:Model MambaForCausalLM is not supported\n"
    assert failure_line("convert_lora_to_gguf.py", 1, logged).endswith(
        "(exit 1): ERROR:lora-to-gguf:Model MambaForCausalLM is not supported; nothing was written")
    assert "(exit -9): Writing: 50%; nothing" in failure_line("convert_hf_to_gguf.py", -9, "Writing: 50%\n\n")


def test_a_missing_module_says_what_to_install():
    line = failure_line("convert_hf_to_gguf.py", 1, "ModuleNotFoundError: No module named 'sentencepiece'\n")
    assert line.endswith("No module named 'sentencepiece' (the converters run with this Python: lit_lora's gguf "
                         "extra installs sentencepiece, llama.cpp's requirements/ folder lists the rest); nothing "
                         "was written")


def test_the_checkout_is_the_option_or_the_variable_or_a_source_distribution(tmp_path, monkeypatch):
    vendored = tmp_path / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    vendored.mkdir(parents=True)
    (vendored / "convert_lora_to_gguf.py").write_text("", encoding="utf-8")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(vendored))
    assert find_llama_cpp(None, "adapter") == vendored.resolve()
    assert find_llama_cpp(str(vendored.parent.parent), "adapter") == vendored.resolve()  # the option wins
    with pytest.raises(LitLoraError, match=r"^LLAMA_CPP_DIR '.*llama.cpp' holds no convert_hf_to_gguf.py; "):
        find_llama_cpp(None, "merged")
    monkeypatch.delenv("LLAMA_CPP_DIR")
    with pytest.raises(LitLoraError, match=r"--llama_cpp DIR or LLAMA_CPP_DIR; get one with `git clone .*"
                                           r"pip download --no-deps --no-binary llama-cpp-python"):
        find_llama_cpp(None, "adapter")


def test_outtype_and_command_line(tmp_path):
    assert (check_outtype(None, "adapter"), check_outtype(None, "merged"), check_outtype("q8_0", "merged")) == \
        ("f32", "f16", "q8_0")
    with pytest.raises(LitLoraError, match=r"^--outtype 'q4_k_m' is not one of f32, f16, bf16, q8_0 "):
        check_outtype("q4_k_m", "merged")
    assert converter_command(tmp_path, "adapter", tmp_path / "a", tmp_path / "o.gguf", "bf16", tmp_path / "b") == [
        sys.executable, str(tmp_path / "convert_lora_to_gguf.py"), str(tmp_path / "a"), "--outfile",
        str(tmp_path / "o.gguf"), "--outtype", "bf16", "--base", str(tmp_path / "b")]
    assert converter_command(tmp_path, "merged", tmp_path / "m", tmp_path / "o.gguf", "f16")[1:] == [
        str(tmp_path / "convert_hf_to_gguf.py"), str(tmp_path / "m"), "--outfile", str(tmp_path / "o.gguf"),
        "--outtype", "f16"]
