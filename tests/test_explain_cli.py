"""``jaxbp explain`` on the command line: examples, JSON parameters, formats, errors."""

import contextlib
import io
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from jaxbp import cli

PARAMS = [
    {"w": [[0.5, -0.3, 0.2], [0.1, 0.4, -0.6]], "b": [0.1, -0.2, 0.05]},
    {"w": [[0.7], [-0.5], [0.3]], "b": [0.2]},
]
NET = ["--activation", "tanh", "--output-activation", "identity", "--loss", "half_sse"]


def _run(*argv):
    """``(exit status, stdout, stderr)`` of ``jaxbp explain ARGV`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["explain", *argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps(PARAMS))
    return path


def test_textbook_example_as_text():
    rc, out, err = _run("--example", "sigmoid-2-2-2")
    assert rc == 0, err
    assert "h1 = sigmoid(z1) = 0.51998934" in out
    assert "E  = E1 + E2 = 0.02397190" in out
    assert "W5 = 0.45 - 0.5 · 0.02592286 = 0.43703857" in out
    assert "6 of 6 agree" in out


def test_textbook_example_as_json_and_html(tmp_path):
    rc, out, _ = _run("--example", "sigmoid-2-2-2", "--format", "json")
    assert rc == 0
    record = json.loads(out)
    assert all(c["ok"] for c in record["checks"])
    assert record["params"][4]["updated"] == pytest.approx(0.43703857, abs=5e-9)
    page = tmp_path / "step.html"
    rc, out, _ = _run(
        "--example", "sigmoid-2-2-2", "--format", "html", "--out", str(page)
    )
    assert rc == 0 and out == f"wrote {page}\n"
    assert "0.43703857" in page.read_text()


def test_linear_regression_example_and_digits():
    rc, out, _ = _run("--example", "linear-regression", "--digits", "3")
    assert rc == 0
    assert "dE/dW1 = sum over examples" in out
    assert "W1 = 0 - 0.01 · (-35) = 0.35" in out


def test_json_parameters_in_all_three_formats(params_file, tmp_path):
    base = ["--params", str(params_file), *NET, "--x", "1.0,2.0", "--y", "0.5"]
    rc, out, err = _run(*base)
    assert rc == 0, err
    assert out.startswith("MLP(2-3-1, tanh/identity, half_sse)")
    assert "z2 = W3 x1 + W4 x2 + b2 = (-0.3)·1 + 0.4·2 + (-0.2) = 0.3" in out
    rc, out, _ = _run(*base, "--format", "json")
    record = json.loads(out)
    assert record["sizes"] == [2, 3, 1] and "checks" not in record
    assert record["max_abs_manual_vs_autodiff"] < 1e-15
    rc, _, _ = _run(*base, "--format", "html", "--out", str(tmp_path / "p.html"))
    assert rc == 0 and "MLP(2-3-1" in (tmp_path / "p.html").read_text()


def test_seed_batch_and_labels():
    rc, out, err = _run(
        "--sizes", "3,2,2", "--seed", "1", "--x", "1,2,3", "--y", "1",
        "--x", "0,0.5,1", "--y", "0", "--lr", "0.1",
    )  # fmt: skip
    assert rc == 0, err
    assert "2 examples" in out and "t2 = [1, 0]" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--x", "1,2", "--y", "0.5"], "give the parameters with --params"),
        (
            ["--sizes", "2,2", "--seed", "0", "--x", "1,2"],
            "give the inputs and targets",
        ),
        (["--sizes", "2,2", "--seed", "0", "--x", "1,a", "--y", "1"], "'a' is not a"),
        (["--sizes", "2,2", "--seed", "0", "--x", "1", "--y", "1"], "has 1 numbers"),
        (["--sizes", "2,9,2", "--seed", "0", "--x", "1,2", "--y", "1"], "up to 8"),
        (["--sizes", "2,2", "--seed", "0", "--x", "1,2", "--y", "1,2,3"], "2 outputs"),
        (["--sizes", "2,1", "--seed", "0", "--x", "1,2", "--y", "1"], "always 0"),
        (["--example", "sigmoid-2-2-2", "--x", "1,2"], "leave out --x"),
        (["--example", "sigmoid-2-2-2", "--digits", "40"], "--digits must be"),
        (
            [
                "--sizes",
                "2,2",
                "--seed",
                "0",
                "--activation",
                "sigmoid",
                "--output-activation",
                "sigmoid",
                "--x",
                "1,2",
                "--y",
                "1",
            ],
            "softmax",
        ),  # fmt: skip
    ],
)
def test_user_mistakes_give_one_line(argv, message):
    rc, out, err = _run(*argv)
    assert rc != 0 and out == ""
    assert err.startswith("jaxbp explain: error: ") and err.count("\n") == 1, err
    assert message in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("[{'w': 1}]", "is not valid JSON"),
        ('[{"w": [[0.1, 0.2]], "b": [0.0]}]', "has 1 numbers but"),
        ('{"w": [[0.1]], "b": [0.0]}', "must be a non-empty list"),
    ],
)
def test_bad_parameter_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    rc, _, err = _run("--params", str(path), "--x", "1", "--y", "1")
    assert rc != 0 and err.startswith("jaxbp explain: error: ")
    assert message in err and str(path) in err


def test_sizes_must_match_the_file(params_file):
    rc, _, err = _run("--params", str(params_file), "--sizes", "2,2,1", "--x", "1,2",
                      "--y", "1")  # fmt: skip
    assert rc != 0 and "holds a 2-3-1 network" in err


def test_no_traceback_from_the_installed_command(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[1, 2")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxbp", "explain", "--params", str(path), "--x", "1",
         "--y", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("jaxbp explain: error: ")


@pytest.mark.parametrize("where", ["missing folder", "parent is a file", "a folder"])
def test_out_that_cannot_be_written_names_the_users_path(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    out = {
        "missing folder": tmp_path / "no-such-folder" / "step.html",
        "parent is a file": tmp_path / "a-file" / "step.html",
        "a folder": tmp_path,
    }[where]
    rc, stdout, err = _run("--example", "sigmoid-2-2-2", "--out", str(out))
    assert rc == 2 and stdout == ""
    assert err.startswith(f"jaxbp explain: error: --out {out}") and err.count("\n") == 1
    assert ".tmp" not in err, err  # not the temporary file jaxbp writes first
    reason = {
        "missing folder": f"the folder {out.parent} does not exist",
        "parent is a file": f"{out.parent} is a file, not a folder",
        "a folder": "is a folder; name a file",
    }[where]
    assert reason in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize(
    "argv, flag, value",
    [
        (["--x", "-1,0.5", "--y", "1"], "--x", "-1,0.5"),
        (["--x", "1,2", "--y", "-0.5,0.5"], "--y", "-0.5,0.5"),
        (["--x", "-.5,2", "--y", "1"], "--x", "-.5,2"),
        (["--x", "-1e-3,2", "--y", "1"], "--x", "-1e-3,2"),
        (["--sizes", "-2,2", "--x", "1,2", "--y", "1"], "--sizes", "-2,2"),
    ],
)
def test_a_value_starting_with_minus_says_to_join_it_to_its_flag(argv, flag, value):
    base = ["--sizes", "2,2"] if flag != "--sizes" else []
    rc, out, err = _run(*base, "--seed", "0", *argv)
    assert rc == 2 and out == ""
    assert err.startswith("jaxbp explain: error: ") and err.count("\n") == 1, err
    assert f"write {flag}={value}" in err, err
    # As advised, the value is taken (--sizes then rejects the negative width).
    joined = " ".join(argv).replace(f"{flag} {value}", f"{flag}={value}").split()
    rc, out, err = _run(*base, "--seed", "0", *joined)
    assert "expected one argument" not in err
    assert rc == 0 or flag == "--sizes", err


# ------------------------------------------------------------------ docs/explain.md
DOCS = pathlib.Path(__file__).parents[1] / "docs"


def _blocks(language):
    """The fenced code blocks of ``docs/explain.md`` in ``language``."""
    text = (DOCS / "explain.md").read_text()
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def _commands():
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                yield argv


@pytest.mark.parametrize("argv", list(_commands()), ids=" ".join)
def test_every_command_of_the_explain_page_runs(argv, tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    shutil.copy(DOCS / "explain-params.json", tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    assert argv[:2] == ["jaxbp", "explain"]
    rc, out, err = _run(*argv[2:])
    assert rc == 0, err
    assert out


def test_the_explain_pages_excerpt_and_json_are_what_jaxbp_writes():
    (excerpt,) = _blocks("text")
    _, out, _ = _run("--example", "sigmoid-2-2-2")
    for line in excerpt.splitlines():
        if line.strip() != "...":
            assert line in out.splitlines(), line
    (params,) = _blocks("json")
    assert json.loads(params) == json.loads((DOCS / "explain-params.json").read_text())
    assert len(list(_commands())) >= 7


def test_the_explain_pages_python_runs():
    (code,) = _blocks("python")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/explain.md", "exec"), {})
    assert "W5 = 0.45 - 0.5 · 0.02592286 = 0.43703857" in out.getvalue()
