"""CI tests what users get: the README's set-up line and `.ci/run` install from one constraints file, and
what is installed here is what that file pins."""

from __future__ import annotations

import re
from importlib.metadata import version

from tests.conftest import REPO


def _install_line(text: str) -> str:
    line = next(x for x in text.splitlines() if "pip install" in x and "-e" in x)
    return re.sub(r"\s+", " ", line.split("#")[0].split("pip install", 1)[1].replace("--quiet", "")).strip()


def test_readme_and_ci_install_the_same_constrained_versions():
    readme = _install_line((REPO / "README.md").read_text(encoding="utf-8"))
    ci = _install_line((REPO / ".ci" / "run").read_text(encoding="utf-8"))
    assert readme == ci == '-e ".[dev]" -c constraints.txt'
    ci_text = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "torch==" not in ci_text  # no second source of versions


def test_installed_versions_are_the_pinned_ones():
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("torch", "lightning", "transformers", "peft", "datasets", "jsonargparse", "tokenizers"):
        assert version(name).split("+")[0] == pins[name], name
