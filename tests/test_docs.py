"""Every command shown in README.md and docs/*.md still works as shown, so the docs cannot go stale.

A command is a line of a ```bash block, or a `$ ` line of a plain ``` block (its output follows it; `$ ...`
repeats the command above with more options), with its `\\` continuations. Each one must be:

- `python -m lit_lora.cli SUB ...` (also after `torchrun ...` or `srun`): parsed by the real parser of SUB
  (LightningCLI's for fit/validate/test/predict/summary/preview, jsonargparse's for the tools), without
  building a model or reading data: every flag exists, every value has its type, every `--config` file exists.
  A `--print_config > FILE` command is run, and a later `--config FILE` reads what it printed.
- `python benchmarks/X.py ...` or `python examples/X.py ...`: the script exists and takes each `--flag`.
- `pip install -e ".[EXTRA]" -c constraints.txt`, `python -m pytest PATHS`, `tensorboard --logdir DIR`,
  `printf`, or `NAME=value`: the extra, file or path exists.
- anything else: marked on the line before its block with `<!-- needs: WHAT (why) -->`. A mark is for what
  cannot run here (a GPU, the network); the commands under it are still checked as above.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NEEDS = re.compile(r"<!--\s*needs:\s*(\S.*?)\s*-->")
SHELL_ENDS = {">", ">>", "|", "&&", ";", "2>", "2>&1"}
TRAINER = {"fit", "validate", "test", "predict"}


@dataclass
class Shown:
    page: str
    line: int
    text: str
    needs: Optional[str]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _joined(lines: list[str], start: int, prefix: str) -> tuple[str, int]:
    """The command starting at lines[start] (without `prefix`), joined over `\\` continuations and newlines
    inside quotes; and the index of its last line."""
    text, i = lines[start].strip()[len(prefix):], start
    while True:
        if text.endswith("\\"):
            text, i = text[:-1] + " " + lines[i + 1].strip(), i + 1
            continue
        try:
            shlex.split(text, comments=True)
            return text, i
        except ValueError:  # an open quote: a JSON value written over several lines
            text, i = text + " " + lines[i + 1].strip(), i + 1


def shown_commands(page: Path) -> list[Shown]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Shown] = []
    i, fence, needs, last_mark = 0, None, None, None
    while i < len(lines):
        stripped = lines[i].strip()
        if fence is None:
            if NEEDS.search(stripped):
                last_mark = (NEEDS.search(stripped).group(1), i)
            elif stripped.startswith("```"):
                fence = stripped[3:].strip() or "plain"
                # A mark belongs to the block right below it (blank lines aside).
                needs = last_mark[0] if last_mark and all(not x.strip() for x in lines[last_mark[1] + 1:i]) else None
                last_mark = None
            i += 1
            continue
        if stripped.startswith("```"):
            fence = None
        elif fence in ("bash", "sh", "shell") and stripped and not stripped.startswith("#"):
            text, end = _joined(lines, i, "")
            found.append(Shown(page.relative_to(REPO).as_posix(), i + 1, text, needs))
            i = end
        elif fence == "plain" and stripped.startswith("$ "):
            text, end = _joined(lines, i, "$ ")
            if text.startswith("... "):  # the command above, with more options
                text = found[-1].text + " " + text[4:]
            found.append(Shown(page.relative_to(REPO).as_posix(), i + 1, text, needs))
            i = end
        i += 1
    return found


def _words(text: str) -> list[str]:
    """The command's words, up to the first redirection or pipe."""
    words = shlex.split(text, comments=True)
    cut = next((k for k, w in enumerate(words) if w in SHELL_ENDS), len(words))
    return words[:cut]


def _redirected_to(text: str) -> Optional[str]:
    words = shlex.split(text, comments=True)
    return words[words.index(">") + 1] if ">" in words else None


class _Parsers:
    """One parser per subcommand, built once: building LightningCLI's is most of the cost."""

    def __init__(self, printed_configs: dict[str, Path]) -> None:
        self.trainer: dict = {}
        self.printed = printed_configs

    def _trainer_parser(self, sub: str):
        if sub not in self.trainer:
            from lit_lora.cli.trainer_cli import ParseOnlyCLI

            class Parse(ParseOnlyCLI):
                """Parses; reads no checkpoint, builds nothing."""

                def _parse_ckpt_path(self) -> None:
                    pass

                def before_instantiate_classes(self) -> None:
                    pass

                def instantiate_classes(self) -> None:
                    pass

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                parser = Parse(args=[sub]).parser
            # The subcommand's own parser: the same options, half the time of going through the top one.
            self.trainer[sub] = parser, parser._subcommands_action._name_parser_map[sub]
        return self.trainer[sub]

    def parse_trainer(self, sub: str, args: list[str], redirect: Optional[str]) -> None:
        args = [str(self.printed.get(a, a)) for a in args]
        top, parser = self._trainer_parser(sub)
        if "--print_config" not in args:
            parser.parse_args(args)
            return
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):  # the top parser prints, then exits
            top.parse_args([sub, *args])
        assert redirect, "a --print_config command here writes its output to a file"
        path = self.printed["__dir__"] / Path(redirect).name
        path.write_text(out.getvalue(), encoding="utf-8")
        self.printed[redirect] = path

    def check(self, words: list[str], redirect: Optional[str]) -> None:
        sub, args = words[0], words[1:]
        if sub in TRAINER:
            self.parse_trainer(sub, args, redirect)
        elif sub == "summary":
            from lit_lora.cli.summary import _pop_memory_gb
            from lit_lora.estimate.budget import parse_memory_gb

            args, memory_gb = _pop_memory_gb(args)
            parse_memory_gb(memory_gb)
            self.parse_trainer("fit", args, redirect)
        elif sub == "preview":
            from lit_lora.cli.preview import _own_options

            self.parse_trainer("fit", _own_options(args)[0], redirect)
        elif sub in ("export", "merge"):
            from lit_lora.cli.export import build_parser

            build_parser(sub, sub).parse_args(args)
        elif sub == "generate":
            from lit_lora.cli.generate import build_parser
            from lit_lora.cli.tool_parser import settings_from_options
            from lit_lora.generation.settings import GenerationSettings

            settings_from_options(GenerationSettings, build_parser().parse_args(args))
        elif sub == "eval":
            from lit_lora.cli.eval import build_parser
            from lit_lora.cli.tool_parser import settings_from_options
            from lit_lora.evaluation.settings import TaskSettings

            settings_from_options(TaskSettings, build_parser().parse_args(args))
        else:
            raise AssertionError(f"no lit_lora subcommand {sub!r}")


def _script_flags(script: Path) -> set[str]:
    """The options a script's argparse takes, read from its `add_argument` calls."""
    flags: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
            flags.update(names)
            if any(k.arg == "action" and "BooleanOptional" in ast.unparse(k.value) for k in node.keywords):
                flags.update("--no-" + n[2:] for n in names)
    return flags


def _check_script(words: list[str]) -> None:
    script = REPO / words[0]
    assert script.is_file(), f"{words[0]} does not exist"
    flags = _script_flags(script)
    for word in words[1:]:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in flags, f"{words[0]} takes no {word.split('=', 1)[0]}"


def _check_pip(words: list[str]) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert words[:3] == ["pip", "install", "-e"], "an install from this repository: pip install -e ..."
    target = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", words[3])
    assert target, f"install target {words[3]!r}"
    for extra in (target.group(1) or "").split(","):
        assert not extra or extra in extras, f"no extra {extra!r} in pyproject.toml"
    assert words[4:] in ([], ["-c", "constraints.txt"]) and (REPO / "constraints.txt").is_file()


def check(command: Shown, parsers: _Parsers) -> None:
    words = _words(command.text)
    if words and words[0] == "srun":
        words = words[1:]
    if words and words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        at = words.index("-m")
        assert words[at + 1] == "lit_lora.cli", "torchrun starts lit_lora.cli"
        get_args_parser().parse_args([*words[1:at], "-m", "lit_lora.cli"])
        words = ["python", *words[at:]]
    if words[:3] == ["python", "-m", "lit_lora.cli"]:
        parsers.check(words[3:], _redirected_to(command.text))
    elif words[:2] == ["python", "-m"] and words[2] == "pytest":
        assert all((REPO / w.split("::")[0]).exists() for w in words[3:] if not w.startswith("-"))
    elif words[0] == "python" and re.fullmatch(r"(benchmarks|examples)/[\w/]+\.py", words[1]):
        _check_script(words[1:])
    elif words[0] == "pip":
        _check_pip(words)
    elif words[0] == "tensorboard":
        assert words[1] == "--logdir" and len(words) == 3, "tensorboard --logdir DIR"
    elif words[0] == "printf" or re.fullmatch(r"[A-Z_]+=\S+", " ".join(words)):
        pass  # a shell builtin writing a file, or a variable later commands use
    else:
        assert command.needs, "not a command this test knows: mark it <!-- needs: WHAT (why) --> or check it here"


def every_command() -> list[Shown]:
    """Every page's commands; those that print a config first, as a later command may read the file."""
    commands = [c for page in PAGES for c in shown_commands(page)]
    return sorted(commands, key=lambda c: "--print_config" not in c.text)


def test_the_docs_show_commands_and_marks_say_why():
    commands = every_command()
    pages = {c.page for c in commands}
    assert {"README.md", "docs/data-and-chat.md", "docs/distributed.md", "docs/inference.md"} <= pages
    for c in commands:
        assert c.needs is None or len(c.needs.split()) >= 2, f"{c}: a mark says what is needed and why"


def test_every_command_in_the_docs_is_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the docs' paths are relative to the repository root
    parsers = _Parsers({"__dir__": tmp_path})
    failures = []
    for command in every_command():
        try:
            check(command, parsers)
        except (AssertionError, Exception, SystemExit) as err:  # noqa: B014 - one report for all commands
            failures.append(f"{command}\n    -> {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    assert not failures, "\n".join(failures)


def test_a_stale_command_fails(tmp_path, monkeypatch):
    """The check is not vacuous: a renamed flag, a missing config and an unknown tool are each caught."""
    monkeypatch.chdir(REPO)
    parsers = _Parsers({"__dir__": tmp_path})
    for text in ("python -m lit_lora.cli fit --config conf/quickstart.yaml --model.lora.rank 16",
                 "python -m lit_lora.cli fit --config conf/no-such.yaml",
                 "python -m lit_lora.cli generate --ckpt_path x.ckpt --temprature 0",
                 "python benchmarks/throughput.py --no-such-flag 1",
                 "pip install -e \".[nosuchextra]\" -c constraints.txt",
                 "wget https://example.com/model.bin"):
        with pytest.raises((AssertionError, Exception, SystemExit)):
            check(Shown("x.md", 1, text, None), parsers)


def test_the_readmes_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Tests\n", 1)[1]
    assert "```bash\npython -m pytest -q tests\n```" in section
    assert "\npython -m pytest -q tests\n" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
