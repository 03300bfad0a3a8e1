"""Every code block and command in the README and in ``docs/`` works as written.

* A ``python`` block runs on its own, in a fresh namespace, with its output captured;
  a block that cannot (it trains on a whole dataset, or needs two processes) is marked
  ``<!-- tested by tests/FILE.py::TEST -->`` on the line before it, and that test must
  exist.
* A ``sh`` block's ``jaxbp ...`` commands parse with the real command-line parser
  (every flag and value valid), its ``python experiments/NAME.py ...`` commands name a
  script that exists and offers each flag given, and every path it reads from the
  repository exists. Running them all would train for hours; the commands themselves
  are exercised by ``tests/test_cli.py`` and ``tests/test_experiments.py``.
* Every relative link points at a file that exists.
"""

import contextlib
import io
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from jaxbp import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!-- tested by (tests/\w+\.py)::(\w+) -->\s*$")
LINK = re.compile(r"\]\(([^)#:]+)(#[^)]*)?\)")


def _blocks(lang: str):
    """``(page, line, code, marker)`` of every block of this language."""
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m[1] != lang:
                continue
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            yield page, line, m[2], MARKER.search(before)


def _id(block) -> str:
    page, line, _, _ = block
    return f"{page.relative_to(ROOT)}:{line}"


PYTHON = list(_blocks("python"))
SHELL = list(_blocks("sh"))


def test_the_pages_have_blocks():
    # The collection itself can fail: a page renamed or fences rewritten.
    assert len(PYTHON) >= 8 and len(SHELL) >= 8
    assert {p.name for p in PAGES} >= {"README.md", "training.md", "layers.md"}


@pytest.mark.parametrize("block", PYTHON, ids=_id)
def test_python_block_runs(block):
    page, line, code, marker = block
    if marker is not None:
        path, name = ROOT / marker[1], marker[2]
        assert path.is_file(), f"{_id(block)}: {marker[1]} does not exist"
        assert re.search(rf"^def {name}\(", path.read_text(), re.MULTILINE), (
            f"{_id(block)}: no test {name} in {marker[1]}"
        )
        return
    namespace = {"__name__": f"doc_{page.stem}_{line}"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{page}:{line}", "exec"), namespace)


def _commands(code: str):
    """Each command of a shell block: continuation lines joined, comments dropped,
    ``&&`` chains and leading ``VAR=value`` assignments split off."""
    code = code.replace("\\\n", " ")
    for raw in code.splitlines():
        words = shlex.split(raw, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word != "&&":
                command.append(word)
                continue
            while command and re.match(r"^[A-Z_]+=", command[0]):
                command.pop(0)
            if command:
                yield command
            command = []


def _experiment_help(script: pathlib.Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("block", SHELL, ids=_id)
def test_shell_block_commands_are_valid(block):
    _, _, code, _ = block
    parser = cli.build_parser()
    for command in _commands(code):
        program = command[0]
        if program.endswith("jaxbp"):
            try:
                args = parser.parse_args(command[1:])
            except SystemExit as e:
                pytest.fail(f"{_id(block)}: {shlex.join(command)} does not parse ({e})")
            for name in ("params",):  # files the command reads from the repository
                value = getattr(args, name, None)
                if value and not str(value).startswith("/"):
                    assert (ROOT / value).is_file(), f"{_id(block)}: no {value}"
        elif program.endswith("python") or program == "python3":
            if command[1:2] == ["-m"]:
                continue  # venv, pip, pytest: what CI runs itself
            script = ROOT / command[1]
            assert script.is_file(), f"{_id(block)}: no {command[1]}"
            offered = _experiment_help(script)
            for flag in command[2:]:
                if flag.startswith("--"):
                    name = flag.split("=", 1)[0]
                    assert name in offered, f"{_id(block)}: {command[1]} has no {name}"


def test_relative_links_point_at_files():
    missing = []
    for page in PAGES:
        for m in LINK.finditer(page.read_text()):
            target = (page.parent / m[1]).resolve()
            if not target.exists():
                missing.append(f"{page.relative_to(ROOT)}: {m[1]}")
    assert not missing, "\n".join(missing)
