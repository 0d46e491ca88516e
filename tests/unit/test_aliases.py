"""Old paths that users' configs name as `class_path` resolve, as LightningCLI resolves them (through
jsonargparse), to the same classes as the new paths; importing the alias modules loads no Lightning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, LightningModule

import lit_lora
import lit_lora.callbacks
import lit_lora.monitoring

REPO = Path(lit_lora.__file__).resolve().parents[1]

CALLBACK_CLASSES = sorted(n for n in lit_lora.monitoring.__all__
                          if isinstance(getattr(lit_lora.callbacks, n), type)
                          and issubclass(getattr(lit_lora.callbacks, n), Callback))


def test_an_old_model_class_path_parses_to_litlora():
    from lit_lora.training.module import LitLora

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    cfg = parser.parse_args(["--model", json.dumps({"class_path": "lit_lora.model.LitLora",
                                                    "init_args": {"learning_rate": 0.001}})])
    module, _, name = cfg.model.class_path.rpartition(".")
    assert getattr(sys.modules[module], name) is LitLora
    assert cfg.model.init_args.learning_rate == 0.001


def test_old_callback_class_paths_instantiate_the_new_classes():
    assert len(CALLBACK_CLASSES) >= 5  # MemoryMonitor, TokenThroughput, SampleGenerator, HparamsMetric, ...
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[Callback])
    cfg = parser.parse_args(["--callbacks", json.dumps([{"class_path": f"lit_lora.monitoring.{n}"}
                                                        for n in CALLBACK_CLASSES])])
    made = parser.instantiate_classes(cfg).callbacks
    assert [type(c) for c in made] == [getattr(lit_lora.callbacks, n) for n in CALLBACK_CLASSES]


@pytest.mark.parametrize("old, new", [("lit_lora.model.LitLora", "lit_lora.training.module.LitLora"),
                                      ("lit_lora.model.token_nll", "lit_lora.objectives.nll.token_nll")]
                         + [(f"lit_lora.monitoring.{n}", f"lit_lora.callbacks.{n}")
                            for n in lit_lora.monitoring.__all__])
def test_an_old_path_names_the_same_object_as_the_new_one(old, new):
    from jsonargparse._util import import_object

    assert import_object(old) is import_object(new)


def test_an_unknown_name_of_an_alias_module_is_an_attribute_error():
    import lit_lora.model

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        lit_lora.model.Nope  # noqa: B018


def test_importing_the_alias_modules_loads_no_lightning():
    code = "import sys, lit_lora.model, lit_lora.monitoring; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
