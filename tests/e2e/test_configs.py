"""The shipped configs under conf/: each parses as `fit` parses it, states its learning rate, and carries in
a comment the peak memory `summary` prints for it.

`summary` reads a hub model's config.json and no weights (it builds the model on the meta device), so the
hub models' memory is computed offline here: their config.json fields are given as `--model.model_config`,
which builds the same model from the same fields. No tokenizer is read by `summary`.
"""

from __future__ import annotations

import re

import pytest
import yaml

from lit_lora.cli import main
from tests.conftest import REPO
from tests.helpers import cli_output

# The fields of each model's config.json on the hub that set its shape or its weights' dtype; an Instruct
# model has its base's shape (only its special-token ids differ, which hold no memory).
SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16"}
QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
              "rms_norm_eps": 1e-06, "torch_dtype": "bfloat16"}
HUB_SHAPES = {
    "gpt2": {},  # GPT2Config's defaults are GPT-2 small's config.json
    "HuggingFaceTB/SmolLM2-135M": SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2_135M,
    "Qwen/Qwen2.5-0.5B": QWEN25_05B,
    "Qwen/Qwen2.5-0.5B-Instruct": QWEN25_05B,
}
SHARED = REPO / "conf" / "shared"
CONFIGS = sorted(p for p in (REPO / "conf").rglob("*.yaml") if SHARED not in p.parents)
IDS = [str(p.relative_to(REPO / "conf")) for p in CONFIGS]

# The comment's two lines: the `summary` command's flags in backticks, then the line it prints.
SUMMARY_FLAGS = re.compile(r"^#.*`summary((?: --\S+ \S+)*)`", re.M)
MEMORY_LINE = re.compile(r"^#\s+(peak training memory, estimated: .+)$", re.M)


def _summary_args(config):
    text = config.read_text()
    flags = SUMMARY_FLAGS.search(text)
    assert flags, f"{config.name}: no comment naming the `summary` command of its memory"
    model = yaml.safe_load(text)["model"]
    args = ["summary", "--config", str(config), *flags.group(1).split()]
    if "model_config" not in model:  # a hub model: its published shape, built without the hub
        shape = yaml.safe_dump(HUB_SHAPES[model["model_name_or_path"]], default_flow_style=True)
        args += ["--model.model_config", shape, "--model.tokenizer_name_or_path", "not-read-by-summary"]
    return args


@pytest.fixture(scope="module")
def summary():
    """What `summary` prints for a config: run once per config, in this process (about 3 s each)."""
    printed = {}

    def run(config):
        if config not in printed:
            printed[config] = cli_output(REPO, *_summary_args(config))
        return printed[config]

    return run


def test_every_model_and_job_has_a_config():
    jobs = {f"{model}/{job}.yaml" for model in ("smollm2-135m", "qwen2.5-0.5b") for job in ("lora", "chat", "qlora")}
    assert set(IDS) >= {"quickstart.yaml", "chat.yaml", "gpt2/lora.yaml", "gpt2/ddp.yaml", "gpt2/fsdp.yaml", *jobs}


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_memory_comment_is_what_summary_prints(config, summary):
    expected = MEMORY_LINE.search(config.read_text())
    assert expected, f"{config.name}: no `#   peak training memory, estimated: ...` comment"
    printed = re.findall(r"^lit_lora: (peak training memory, estimated: .+)$", summary(config), re.M)
    assert printed == [expected.group(1)]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_config_states_its_learning_rate(config):
    assert isinstance(yaml.safe_load(config.read_text())["model"].get("learning_rate"), float)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_only_the_qlora_configs_estimate_a_4bit_base(config, summary):
    nf4 = re.search(r"; \d+ linear layers nf4 \(bitsandbytes, double quantization, compute bfloat16\)$",
                    summary(config), re.M)
    assert bool(nf4) == (config.name == "qlora.yaml")


def test_model_configs_share_one_checkpointing_block():
    shared = yaml.safe_load((SHARED / "checkpointing.yaml").read_text())
    assert set(shared) == {"checkpoint", "early_stopping"}
    for config in CONFIGS:
        settings = yaml.safe_load(config.read_text())
        assert not set(shared) & set(settings), f"{config.name} repeats a block of conf/shared/checkpointing.yaml"
        if config.parent != REPO / "conf":  # the quickstarts keep the command line's checkpointing defaults
            assert settings["config"] == "../shared/checkpointing.yaml", config


def test_the_shared_blocks_reach_the_parsed_config_from_any_folder(tmp_path, monkeypatch, capsys):
    """`config: FILE` inside a config is read relative to that config, and the command line wins over it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(REPO / "conf" / "gpt2" / "lora.yaml"), "--data.train_files", "x.txt",
              "--early_stopping.patience", "5", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["checkpoint"]["save_top_k"] == 2 and printed["early_stopping"]["min_delta"] == 0.001
    assert printed["early_stopping"]["patience"] == 5 and printed["model"]["learning_rate"] == 1e-3
