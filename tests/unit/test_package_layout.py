"""The package's shape: imports point down the layers and never in a circle, lazy imports of our own
modules say why, modules, classes and functions stay small, and the code map of docs/architecture.md matches the tree.

Sizes: a module counts its physical lines (at most 300); a class and a function body count their lines
of code (at most 200 and 60): blank lines, comment lines and docstrings left out, since docstrings are the
`--help` text LightningCLI shows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "lit_lora"
# Lowest first. A module may import its own layer and those before it, never one after it.
LAYERS = [
    ("errors", "notes", "settings", "constants", "outputs", "jsonl", "host_memory", "eval_mode"),
    ("pretrained",),
    ("objectives",),
    ("lora",),
    ("estimate",),
    ("generation",),
    ("evaluation",),
    ("data",),
    ("training",),
    ("callbacks",),
    ("loading",),
    ("cli",),
    # Old paths kept so users' configs keep loading (`class_path`); nothing may import them.
    ("model", "monitoring"),
]
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 300, 200, 60


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(target: str, names: list[str], root: Path) -> list[str]:
    """The modules an import statement loads: `from pkg import sub` names the submodule `pkg.sub`."""
    base = root.parent.joinpath(*target.split("."))
    found = [f"{target}.{n}" for n in names if (base / f"{n}.py").is_file() or (base / n / "__init__.py").is_file()]
    return found or [target]


def own_imports(root: Path) -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every import of the package's own modules."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        importer = module_name(path, root)
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == root.name:
                targets = resolve(node.module, [a.name for a in node.names], root)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == root.name]
            else:
                continue
            found += [(importer, t, node.lineno, id(node) in nested) for t in targets]
    return found


def layer(module: str, layers: list[tuple[str, ...]]) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return next((i for i, names in enumerate(layers) if top in names), len(layers))  # the package itself: top


def upward_imports(root: Path, layers: list[tuple[str, ...]]) -> list[str]:
    return [f"{a} imports {b} (line {line})" for a, b, line, _ in own_imports(root)
            if layer(b, layers) > layer(a, layers)]


def import_cycles(root: Path) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in own_imports(root):
        if a != b:
            graph.setdefault(a, set()).add(b)
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def unexplained_lazy_imports(root: Path) -> list[str]:
    """Function-level imports of our own modules without a comment on their line or just above their block."""
    bad = []
    for importer, target, line, inside in own_imports(root):
        if not inside:
            continue
        lines = (root.parent / Path(*importer.split("."))).with_suffix(".py")
        if not lines.is_file():
            lines = root.parent / Path(*importer.split(".")) / "__init__.py"
        text = lines.read_text(encoding="utf-8").splitlines()
        i, reason = line - 1, "#" in text[line - 1]
        while not reason and i > 0 and (text[i - 1].strip().startswith(("from ", "import ", "#"))):
            i -= 1
            reason = "#" in text[i]
        if not reason:
            bad.append(f"{importer}:{line} imports {target} inside a function without saying why")
    return bad


def code_lines(source: str, first: int, last: int) -> int:
    tree = ast.parse(source)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = source.splitlines()
    return sum(1 for n in range(first, last + 1)
               if n not in docstrings and lines[n - 1].strip() and not lines[n - 1].strip().startswith("#"))


def oversized(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(root.parent)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and code_lines(source, node.lineno, node.end_lineno) > MAX_CLASS_LINES:
                found.append(f"{name}: class {node.name}: {code_lines(source, node.lineno, node.end_lineno)} lines")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = code_lines(source, node.body[0].lineno, node.end_lineno)
                if size > MAX_FUNCTION_LINES:
                    found.append(f"{name}: def {node.name}: body of {size} lines")
    return found


def test_imports_point_down_the_layers():
    assert upward_imports(PACKAGE, LAYERS) == []


def test_no_import_cycles_even_through_function_level_imports():
    assert import_cycles(PACKAGE) == []


def test_function_level_imports_of_our_modules_say_why():
    assert unexplained_lazy_imports(PACKAGE) == []


def test_every_module_is_in_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert tops == {name for names in LAYERS for name in names}


def test_the_checks_catch_an_upward_import_a_cycle_and_an_unexplained_lazy_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("from pkg.low.b import g\n\n\ndef f():\n    from pkg.high import h\n")
    (pkg / "low" / "b.py").write_text("def g():\n    # a reason\n    from pkg.low.a import f\n")
    (pkg / "high.py").write_text("from pkg.low import a\n\n\ndef h():\n    pass\n")
    layers = [("low",), ("high",)]
    assert upward_imports(pkg, layers) == ["pkg.low.a imports pkg.high (line 5)"]
    assert ["pkg.low.a", "pkg.low.b", "pkg.low.a"] in import_cycles(pkg)
    assert unexplained_lazy_imports(pkg) == ["pkg.low.a:5 imports pkg.high inside a function without saying why"]
    (pkg / "high.py").write_text("def h():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES + 1))
    assert oversized(pkg) == [f"pkg/high.py: def h: body of {MAX_FUNCTION_LINES + 1} lines"]


def calls_against_the_flow(root: Path) -> list[str]:
    """Where data flows backwards in `fit`: the LightningModule (the file defining `LitLora`) or an objective
    reading the data module, or the data package reading the model or writing to the trainer. The batch,
    the callbacks and the CLI's build are the only ways between them."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(root.parent).as_posix()
        is_model = any(isinstance(n, ast.ClassDef) and n.name == "LitLora" for n in tree.body) or "/objectives/" in rel
        is_data = "/data/" in rel
        for node in ast.walk(tree):
            if is_model and isinstance(node, ast.Attribute) and node.attr == "datamodule":
                found.append(f"{rel}:{node.lineno} reads the data module")
            if is_model and isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                found += [f"{rel}:{node.lineno} imports {n}" for n in names if n.startswith(f"{root.name}.data")]
            if is_data and isinstance(node, ast.Attribute) and node.attr in ("lightning_module", "model"):
                found.append(f"{rel}:{node.lineno} reads the model")
            if is_data and isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    chain = ast.unparse(target)
                    if isinstance(target, ast.Attribute) and re.search(r"\btrainer\.", chain):
                        found.append(f"{rel}:{node.lineno} writes {chain}")
    return found


def test_data_flows_one_way_in_fit():
    assert calls_against_the_flow(PACKAGE) == []


def test_the_flow_check_catches_a_model_reading_the_data_and_data_writing_the_trainer(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "module.py").write_text("class LitLora:\n    def training_step(self, batch, i):\n"
                                   "        return self.trainer.datamodule.step_tokens(i)\n")
    (pkg / "data" / "dm.py").write_text("class Data:\n    def setup(self):\n"
                                        "        self.trainer.accumulate_grad_batches = 2\n"
                                        "        model = self.trainer.lightning_module\n")
    assert calls_against_the_flow(pkg) == ["pkg/data/dm.py:3 writes self.trainer.accumulate_grad_batches",
                                           "pkg/data/dm.py:4 reads the model",
                                           "pkg/module.py:3 reads the data module"]


def test_the_lightning_module_and_the_data_module_stay_under_200_lines():
    # Each holds one job (the model's steps, the data's splits and loaders): what grows them belongs in a
    # callback, an objective or a module of its own.
    for path, name in (("training/module.py", "LitLora"), ("data/datamodule.py", "LitLoraData")):
        tree = ast.parse((PACKAGE / path).read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
        assert cls.end_lineno - cls.lineno + 1 < 200, f"{name} has {cls.end_lineno - cls.lineno + 1} lines"


def test_modules_classes_and_functions_stay_small():
    assert oversized(PACKAGE) == []


def test_the_architecture_pages_code_map_matches_the_tree():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## Code map", 1)[1].split("\n## ", 1)[0]
    mapped = set(re.findall(r"^- `([a-z_]+)(?:/|\.py)`", section, flags=re.M))
    tree = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert mapped == tree
    docstring = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")))
    for name in tree:
        assert re.search(rf"\b{name}\b", docstring), f"{name} is missing from lit_lora/__init__.py's code map"


@pytest.mark.parametrize("name", ["lit_lora.training.module.LitLora", "lit_lora.data.LitLoraData",
                                  "lit_lora.callbacks.MemoryMonitor", "lit_lora.callbacks.TokenThroughput",
                                  "lit_lora.callbacks.SampleGenerator", "lit_lora.callbacks.HparamsMetric",
                                  "lit_lora.callbacks.RunProgressBar", "lit_lora.cli.main"])
def test_class_paths_users_name_keep_importing(name):
    import importlib

    module, attr = name.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), attr))
