"""The command line: ``jaxbp train`` on tiny synthetic data, resume, errors, check."""

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp.data
from jaxbp import checkpoint, cli, optim
from jaxbp.activations import ACTIVATIONS, Activation
from jaxbp.cli import train as train_cli
from jaxbp.config import ConfigError, TrainConfig

NUM_TRAIN, NUM_TEST = 600, 100
# The base flags of every synthetic run; tests override single flags.
FLAGS = {"--epochs": "2", "--batch-size": "32", "--hidden": "16"}
STEPS_PER_EPOCH = NUM_TRAIN // 32
_REAL_LOAD_DATASET = jaxbp.data.load_dataset


# --- helpers
def _load_any_size(name, split, **kwargs):
    """``load_dataset`` without the check that a split holds 60,000/10,000 images."""
    spec = jaxbp.data.dataset_spec(name)
    splits = {k: v._replace(num_examples=None) for k, v in spec.splits.items()}
    return _REAL_LOAD_DATASET(dataclasses.replace(spec, splits=splits), split, **kwargs)


def _write_tiny_mnist(folder: pathlib.Path) -> None:
    """600 train / 100 test 28x28 images; class ``c`` has bright rows ``2c..2c+2``."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for c in range(10):
            images[labels == c, 2 * c : 2 * c + 3, :] = 250
        jaxbp.data.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        jaxbp.data.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _argv(data_dir, out, *extra, **overrides):
    """``train`` argv: ``FLAGS`` with ``overrides`` (``batch_size="8"``; None drops)."""
    flags = dict(FLAGS)
    for name, value in overrides.items():
        flags["--" + name.replace("_", "-")] = value
    argv = ["train", "--data-dir", str(data_dir), "--out", str(out)]
    for flag, value in flags.items():
        if value is not None:
            argv += [flag, value]
    return argv + list(extra)


class Run(NamedTuple):
    rc: int
    out: pathlib.Path
    stdout: str
    stderr: str


def _main(argv) -> tuple[int, str, str]:
    """Runs ``jaxbp.cli.main`` in-process; returns ``(rc, stdout, stderr)``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = cli.main(argv)
    return rc, stdout.getvalue(), stderr.getvalue()


def _metrics(out: pathlib.Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _assert_one_line_error(rc, stderr, command="train"):
    assert rc != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    prefix = f"jaxbp {command}: error: " if command else "jaxbp: error: "
    assert lines[0].startswith(prefix), stderr


def _assert_interrupted_message(stderr, out, *, epoch, epochs) -> list[str]:
    """Checks the one line of an interrupted ``jaxbp train``; returns its command."""
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1, stderr
    found = re.fullmatch(
        rf"jaxbp train: interrupted; kept the checkpoint of epoch {epoch} of "
        rf"{epochs} in (.*); resume with: (.*)\n",
        stderr,
    )
    assert found, stderr
    assert found[1] == str(out / "checkpoint.npz")
    return shlex.split(found[2])


def _assert_params_equal(a, b):
    assert len(a) == len(b)
    for la, lb in zip(a, b, strict=True):
        for name in ("w", "b"):
            assert np.array_equal(np.asarray(la[name]), np.asarray(lb[name])), name


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("tiny-mnist")
    _write_tiny_mnist(folder)
    return folder


@pytest.fixture
def any_size(monkeypatch):
    """Lets ``jaxbp train`` load the tiny synthetic splits."""
    monkeypatch.setattr(jaxbp.data, "load_dataset", _load_any_size)


@pytest.fixture(scope="module")
def baseline(tiny_data, tmp_path_factory) -> Run:
    """One uninterrupted two-epoch run with ``FLAGS``, shared by several tests."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(jaxbp.data, "load_dataset", _load_any_size)
        rc, stdout, stderr = _main(_argv(tiny_data, out))
    return Run(rc, out, stdout, stderr)


@pytest.fixture
def baseline_copy(baseline, tmp_path) -> pathlib.Path:
    """A copy of the baseline run folder that a test may change."""
    return pathlib.Path(shutil.copytree(baseline.out, tmp_path / "run"))


# --- jaxbp train
def test_train_writes_metrics_checkpoint_and_curves(baseline):
    assert baseline.rc == 0, baseline.stderr
    out = baseline.out
    metrics = _metrics(out)
    config = metrics["config"]
    assert TrainConfig.from_dict(config) == TrainConfig(
        hidden=(16,), epochs=2, batch_size=32
    )
    assert metrics["sizes"] == [784, 16, 10]
    assert config["epochs"] == 2 and config["batch_size"] == 32
    assert config["grad"] == "manual" and config["dataset"] == "fashion_mnist"
    assert metrics["train_examples"] == NUM_TRAIN
    assert metrics["test_examples"] == NUM_TEST
    assert metrics["steps_per_epoch"] == STEPS_PER_EPOCH
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["step"] for h in history] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for h in history:
        assert math.isfinite(h["epoch_time_s"]) and h["epoch_time_s"] > 0
        assert math.isfinite(h["train_loss"]) and math.isfinite(h["test_loss"])
    assert metrics["epochs_done"] == 2
    assert metrics["final_test_accuracy"] == history[-1]["test_accuracy"]
    assert metrics["final_test_accuracy"] > 0.6  # chance is 0.1; the classes are easy
    timing = metrics["timing"]
    assert math.isfinite(timing["compile_s"]) and timing["compile_s"] > 0
    assert timing["epoch_times_s"] == [h["epoch_time_s"] for h in history]
    net, params, meta = checkpoint.load_checkpoint(out / "checkpoint.npz")
    assert net.sizes == (784, 16, 10)
    assert net.activation == config["activation"]
    assert meta["config"] == config
    assert meta["epoch"] == 2
    assert meta["history"] == history
    assert all(np.all(np.isfinite(layer["w"])) for layer in params)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_prints_one_line_per_epoch(baseline):
    assert baseline.stderr == ""
    lines = baseline.stdout.strip().splitlines()
    assert len(lines) == 4, baseline.stdout
    assert "12,730 parameters" in lines[0]
    assert lines[1].startswith("epoch   1/2") and lines[2].startswith("epoch   2/2")
    assert lines[3].startswith("final test accuracy")


def test_final_accuracy_is_that_of_the_checkpoint(baseline, tiny_data):
    net, params, _ = checkpoint.load_checkpoint(baseline.out / "checkpoint.npz")
    images = jaxbp.data.read_idx(tiny_data / "t10k-images-idx3-ubyte.gz")
    labels = jaxbp.data.read_idx(tiny_data / "t10k-labels-idx1-ubyte.gz")
    x = images.reshape(NUM_TEST, -1).astype(np.float32) / 255
    logits = np.asarray(net.forward(params, x))
    accuracy = np.mean(np.argmax(logits, axis=1) == labels)
    assert _metrics(baseline.out)["final_test_accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("flags", "sizes"),
    [
        (["--hidden", "32,16"], [784, 32, 16, 10]),
        (["--hidden", "32", "--hidden", "16"], [784, 32, 16, 10]),
        (["--hidden", "32, 16"], [784, 32, 16, 10]),
        (["--hidden", "none"], [784, 10]),
        ([], [784, 100, 10]),
    ],
)
def test_hidden_flag_forms(flags, sizes):
    args = cli.build_parser().parse_args(["train", *flags])
    assert train_cli.config_from_args(args).sizes == tuple(sizes)


@pytest.mark.parametrize("command", ["train", "download"])
@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("fashion_mnist", "fashion_mnist"),
        ("fashion-mnist", "fashion_mnist"),  # the data folder's spelling
        ("Fashion-MNIST", "fashion_mnist"),
        ("mnist", "mnist"),
    ],
)
def test_dataset_flag_accepts_both_spellings_and_keeps_one(command, given, name):
    args = cli.build_parser().parse_args([command, "--dataset", given])
    assert args.dataset == name
    if command == "train":
        assert train_cli.config_from_args(args).dataset == name


def test_resume_with_the_other_spelling_of_the_dataset(
    baseline_copy, tiny_data, any_size
):
    rc, stdout, stderr = _main(
        _argv(tiny_data, baseline_copy, "--resume", dataset="fashion-mnist")
    )
    assert rc == 0, stderr
    assert "already trained 2 epochs" in stdout


def test_float64_run_leaves_x64_off(tiny_data, tmp_path, any_size):
    out = tmp_path / "run"
    rc, _, stderr = _main(_argv(tiny_data, out, "--quiet", dtype="float64", epochs="1"))
    assert rc == 0, stderr
    with jax.enable_x64(True):
        _, params, meta = checkpoint.load_checkpoint(out / "checkpoint.npz")
    assert all(leaf.dtype == np.float64 for layer in params for leaf in layer.values())
    assert meta["config"]["dtype"] == "float64"
    assert not jax.config.jax_enable_x64  # only inside the run
    assert jnp.zeros(1).dtype == jnp.float32


# --- resume
def test_interrupted_then_resumed_run_matches_uninterrupted(
    baseline, tiny_data, tmp_path, monkeypatch, any_size
):
    out = tmp_path / "run"
    real_save = checkpoint.save_checkpoint
    calls = []

    def save_then_interrupt(*args, **kwargs):
        calls.append(kwargs.get("meta", {}).get("epoch"))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
        rc, _, stderr = _main(_argv(tiny_data, out))
    assert rc == 130
    resume = _assert_interrupted_message(stderr, out, epoch=1, epochs=2)
    assert calls == [1, 2]
    assert _metrics(out)["epochs_done"] == 1
    _, _, meta = checkpoint.load_checkpoint(out / "checkpoint.npz")
    assert meta["epoch"] == 1

    # The command the message gives is the one that resumes the run.
    assert resume[:2] == ["jaxbp", "train"] and "--resume" in resume
    rc, stdout, stderr = _main(resume[1:])
    assert rc == 0, stderr
    assert "epoch   1/2" not in stdout and "epoch   2/2" in stdout
    _, resumed, meta = checkpoint.load_checkpoint(out / "checkpoint.npz")
    _, uninterrupted, _ = checkpoint.load_checkpoint(baseline.out / "checkpoint.npz")
    _assert_params_equal(resumed, uninterrupted)
    # The history continues the interrupted one, and matches the baseline's.
    history, expected = _metrics(out)["history"], _metrics(baseline.out)["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for h, e in zip(history, expected, strict=True):
        for key in ("step", "train_loss", "test_loss", "test_accuracy"):
            assert h[key] == e[key], key
    assert meta["history"] == history


def test_interrupted_before_the_first_checkpoint_says_to_start_again(
    tiny_data, tmp_path, monkeypatch, any_size
):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", interrupt)
    rc, _, stderr = _main(_argv(tiny_data, tmp_path / "run", "--quiet"))
    assert rc == 130
    assert stderr == (
        "jaxbp train: interrupted before the first epoch ended, so no checkpoint "
        "was written; run the same command to start again\n"
    )


@pytest.mark.slow
def test_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_resume(tiny_data, tmp_path):
    # A real SIGINT to a real process: the stand-in dataset, many epochs, and the
    # signal once the first epoch's line is printed.
    out = tmp_path / "run"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_cli, jaxbp.data; "
        "jaxbp.data.load_dataset = test_cli._load_any_size; "
        "from jaxbp.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    argv = _argv(tiny_data, out, epochs="100000")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(pathlib.Path(__file__).parent), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("epoch   1/"):
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    epoch = checkpoint.read_meta(out / "checkpoint.npz")["epoch"]
    assert epoch >= 1
    _assert_interrupted_message(stderr, out, epoch=epoch, epochs=100000)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.npz",
        "metrics.json",
    ]  # no temporary file left behind


def test_resume_of_a_finished_run_does_nothing(baseline_copy, tiny_data, any_size):
    before = (baseline_copy / "checkpoint.npz").read_bytes()
    rc, stdout, stderr = _main(_argv(tiny_data, baseline_copy, "--resume"))
    assert rc == 0, stderr
    assert "already trained 2 epochs" in stdout
    assert (baseline_copy / "checkpoint.npz").read_bytes() == before


def test_existing_run_is_not_overwritten(baseline_copy, tiny_data, any_size):
    before = (baseline_copy / "metrics.json").read_bytes()
    rc, stdout, stderr = _main(_argv(tiny_data, baseline_copy))
    _assert_one_line_error(rc, stderr)
    assert "already holds a checkpoint" in stderr and "--resume" in stderr
    assert stdout == ""
    rc, _, stderr = _main(_argv(tiny_data, baseline_copy, "--resume", "--overwrite"))
    _assert_one_line_error(rc, stderr)
    assert "--overwrite" in stderr
    assert (baseline_copy / "metrics.json").read_bytes() == before


def test_resume_without_a_checkpoint_fails(tiny_data, tmp_path, any_size):
    rc, _, stderr = _main(_argv(tiny_data, tmp_path / "run", "--resume"))
    _assert_one_line_error(rc, stderr)
    assert "no checkpoint" in stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"lr": "0.01"}, ["--lr 0.002 (saved) vs 0.01 (now)"]),
        ({"lr": "0.0020000001"}, ["--lr 0.002 (saved) vs 0.0020000001 (now)"]),
        ({"batch_size": "50"}, ["--batch-size 32 (saved) vs 50 (now)"]),
        ({"seed": "1"}, ["--seed 0 (saved) vs 1 (now)"]),
        ({"grad": "autodiff"}, ["--grad manual (saved) vs autodiff (now)"]),
        (
            {"activation": "leaky_relu"},
            ["--activation relu (saved) vs leaky_relu (now)"],
        ),
        ({"epochs": "3"}, ["--epochs 2 (saved) vs 3 (now)"]),
        ({"hidden": "16,10"}, ["--hidden 16 (saved) vs 16,10 (now)"]),
        ({"hidden": "none"}, ["--hidden 16 (saved) vs none (now)"]),
        ({"schedule": "constant"}, ["--schedule cosine (saved) vs constant (now)"]),
        ({"dp_clip": "1"}, ["--dp-clip off (saved) vs 1.0 (now)"]),
        (
            {"optimizer": "sgd", "seed": "3"},
            [
                "--optimizer adam (saved) vs sgd (now)",
                "--lr 0.002 (saved) vs 1.0 (now)",
                "--seed 0 (saved) vs 3 (now)",
            ],
        ),
    ],
    ids=str,
)
def test_resume_with_changed_flags_names_each_with_old_and_new_value(
    baseline_copy, tiny_data, any_size, flags, named
):
    before = (baseline_copy / "checkpoint.npz").read_bytes()
    rc, _, stderr = _main(_argv(tiny_data, baseline_copy, "--resume", **flags))
    _assert_one_line_error(rc, stderr)
    listed = re.search(r"different settings: (.*); resume with", stderr)
    assert listed, stderr
    assert listed[1].split(", ") == named, stderr
    assert (baseline_copy / "checkpoint.npz").read_bytes() == before


def test_resume_of_an_unreadable_config_says_to_start_over(
    baseline_copy, tiny_data, any_size
):
    # As if written by an older jaxbp, which recorded "sizes" rather than "hidden".
    path = baseline_copy / "checkpoint.npz"
    with np.load(path) as saved:
        arrays = dict(saved)
    meta = json.loads(arrays["meta"].tobytes())
    meta["config"]["sizes"] = [784, *meta["config"].pop("hidden"), 10]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    rc, _, stderr = _main(_argv(tiny_data, baseline_copy, "--resume"))
    _assert_one_line_error(rc, stderr)
    assert "unknown training settings: sizes" in stderr and "--overwrite" in stderr


# --- bad flags and missing data
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activation": "bogus"}, "invalid choice: 'bogus'"),
        ({"lr": "-1"}, "--lr"),
        ({"lr": "0"}, "--lr"),
        ({"lr": "nan"}, "--lr"),
        ({"batch_size": "0"}, "--batch-size"),
        ({"batch_size": "1000"}, "exceeds the 600 training examples"),
        ({"epochs": "0"}, "--epochs"),
        ({"epochs": "two"}, "not an integer"),
        ({"hidden": "a,b"}, "--hidden: 'a' is not an integer"),
        ({"hidden": "16,0"}, "--hidden"),
        ({"optimizer": "lbfgs"}, "--optimizer"),
        ({"dataset": "cifar10"}, "--dataset"),
        ({"dtype": "float16"}, "--dtype"),
        ({"no_such_flag": "1"}, "unrecognized arguments"),
        ({"dp_noise": "1"}, "--dp-noise: dp_noise 1 needs dp_clip"),
        ({"dp_noise": "-1"}, "--dp-noise: dp_noise must be a non-negative number"),
        ({"dp_clip": "0"}, "--dp-clip: dp_clip must be a positive number"),
        ({"dp_clip": "nan"}, "--dp-clip: dp_clip must be a positive number"),
        ({"dp_clip": "one"}, "--dp-clip: invalid float value: 'one'"),
        ({"output_activation": "sigmoid"}, "--output-activation: objective"),
        ({"devices": "64"}, "--devices 64, but only"),
    ],
)
def test_bad_flags_fail_with_one_line(
    tiny_data, tmp_path, any_size, overrides, message
):
    out = tmp_path / "run"
    rc, stdout, stderr = _main(_argv(tiny_data, out, **overrides))
    _assert_one_line_error(rc, stderr)
    assert message in stderr
    assert stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], None),
        (["fit"], None),
        (["check", "--sizes", "5"], "check"),
        (["check", "--output-activation", "tanh"], "check"),
        (["download", "--dataset", "cifar10"], "download"),
    ],
    ids=str,
)
def test_bad_commands_fail_with_one_line(argv, command):
    rc, _, stderr = _main(argv)
    assert rc in (1, 2)
    _assert_one_line_error(rc, stderr, command)


def test_out_that_is_a_file_fails_with_one_line(tiny_data, tmp_path, any_size):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    rc, stdout, stderr = _main(_argv(tiny_data, out))
    assert rc == 2
    _assert_one_line_error(rc, stderr)
    assert f"--out {out} is a file, not a folder" in stderr
    assert stdout == "" and out.read_text() == "not a folder"


def test_out_that_cannot_be_created_fails_with_one_line(tiny_data, tmp_path, any_size):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "run"
    rc, _, stderr = _main(_argv(tiny_data, out, "--quiet"))
    assert rc == 2
    _assert_one_line_error(rc, stderr)
    assert f"--out {out}: cannot create the folder" in stderr


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("garbage", "is not a jaxbp checkpoint"),
        ("npz", "is not a jaxbp checkpoint"),
        ("truncated", "is corrupt or truncated"),
        ("empty", "is corrupt or truncated"),
    ],
)
def test_resume_from_a_file_that_is_not_a_checkpoint_says_so(
    baseline_copy, tiny_data, any_size, kind, message
):
    path = baseline_copy / "checkpoint.npz"
    if kind == "garbage":
        path.write_bytes(b"garbage")
    elif kind == "npz":
        np.savez(path, x=np.arange(3))
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(b"")
    rc, _, stderr = _main(_argv(tiny_data, baseline_copy, "--resume"))
    assert rc == 1
    _assert_one_line_error(rc, stderr)
    assert f"{path} {message}" in stderr
    assert "pickle" not in stderr  # not numpy's advice to load it unsafely
    if "not a jaxbp checkpoint" in message:
        assert "writes after every epoch" in stderr  # what a checkpoint is
    assert "--overwrite" in stderr


@pytest.mark.parametrize("flags", [["--resume"], [], ["--overwrite"]], ids=str)
def test_checkpoint_that_is_a_folder_fails_with_one_line(
    tiny_data, tmp_path, any_size, flags
):
    out = tmp_path / "run"
    (out / "checkpoint.npz").mkdir(parents=True)
    rc, stdout, stderr = _main(_argv(tiny_data, out, *flags))
    assert rc == 2
    _assert_one_line_error(rc, stderr)
    assert f"{out / 'checkpoint.npz'} is a folder" in stderr
    assert stdout == ""


@pytest.mark.parametrize("command", [None, "check", "train", "download", "explain"])
def test_help_gives_every_flag_a_help_text_and_its_default(command, capsys):
    parser = cli.build_parser()
    if command is not None:
        sub = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        )
        parser = sub.choices[command]
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert flags or command is None
    for action in flags:
        assert action.help, action.option_strings
        assert "(default: " in action.help, action.option_strings
    with pytest.raises(SystemExit) as exit_info:
        cli.main(([command] if command else []) + ["--help"])
    if command is None:
        return
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.count("(default:") == len(flags)


def test_train_help_shows_the_config_defaults():
    sub = next(
        a
        for a in cli.build_parser()._actions
        if isinstance(a, argparse._SubParsersAction)
    )
    help_text = sub.choices["train"].format_help()
    defaults = TrainConfig()
    for flag, shown in [
        ("--batch-size", defaults.batch_size),
        ("--epochs", defaults.epochs),
        ("--optimizer", defaults.optimizer),
        ("--hidden", ",".join(map(str, defaults.hidden))),
    ]:
        options = help_text.split("options:", 1)[1]
        block = options.split(f"\n  {flag}", 1)[1].split("\n  --", 1)[0]
        assert f"(default: {shown})" in " ".join(block.split()), flag


def test_missing_data_dir_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBP_OFFLINE", "1")
    missing = tmp_path / "no-such-folder"
    out = tmp_path / "run"
    rc, _, stderr = _main(_argv(missing, out))
    assert rc == 1
    _assert_one_line_error(rc, stderr)
    assert str(missing / "train-images-idx3-ubyte.gz") in stderr
    assert stderr.startswith("jaxbp train: error: --data-dir: ")  # its field's flag
    assert not out.exists()


def test_missing_data_offline_fails_without_traceback(tmp_path, monkeypatch):
    # No --data-dir: $JAXBP_DATA_DIR and the cache are searched, and offline mode
    # forbids a download. The message lists what is missing and where it looked.
    monkeypatch.setenv("JAXBP_OFFLINE", "1")
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JAXBP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--out", str(out), "--epochs", "1"]
    rc, _, stderr = _main(argv)
    assert rc == 1
    assert "Traceback" not in stderr
    assert stderr.startswith("jaxbp train: error: ")
    assert "train-images-idx3-ubyte.gz" in stderr and "JAXBP_OFFLINE" in stderr
    # The searched folders stay a readable list, one per line.
    lines = stderr.splitlines()
    assert 3 <= len(lines) <= 12 and max(map(len, lines)) < 200, stderr
    searched = [line.strip() for line in lines if line.startswith("  ")]
    assert any(s.startswith(str(tmp_path / "data")) for s in searched), stderr
    assert any(s.startswith(str(tmp_path / "cache")) for s in searched), stderr
    assert not out.exists()
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def test_divergence_fails_with_one_line(tiny_data, tmp_path, any_size):
    argv = _argv(tiny_data, tmp_path / "run", optimizer="sgd", lr="1e30", epochs="1")
    rc, _, stderr = _main(argv)
    assert rc == 1
    _assert_one_line_error(rc, stderr)
    assert "diverged" in stderr and "at step " in stderr


@pytest.mark.parametrize("how", ["python -m jaxbp", "jaxbp script"])
def test_real_entry_point_exit_status_and_message(how):
    if how == "python -m jaxbp":
        command = [sys.executable, "-m", "jaxbp"]
    else:
        script = pathlib.Path(sys.executable).parent / "jaxbp"
        if not script.exists():
            pytest.skip(f"no console script at {script}")
        command = [str(script)]
    result = subprocess.run(
        [*command, "train", "--lr", "-1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    _assert_one_line_error(result.returncode, result.stderr)
    assert "--lr" in result.stderr
    assert result.stdout == ""


# --- --model: a Sequential network
# Conv, pooling, BatchNorm (also inside a residual block) and dropout, kept small.
MODEL = (
    "reshape(28,28,1),conv(4,3,stride=2),bn,relu,res(conv(4,3,same),bn),maxpool(2),"
    "flatten,dropout(0.25),dense(10)"
)
MODEL_FLAGS = {"hidden": None, "epochs": "1", "optimizer": "sgd", "lr": "0.05"}
_REAL_PROGRESS_INIT = train_cli._EpochProgress.__init__


def _eager_progress_init(self, stream, *, bar, **_):
    """Progress from the first step on, a plain line at each report."""
    _REAL_PROGRESS_INIT(self, stream, bar=bar, after_s=0.0, line_every_s=0.0)


@pytest.fixture(scope="module")
def model_runs(tiny_data, tmp_path_factory) -> dict[str, Run]:
    """One epoch of ``MODEL`` with each gradient: manual with progress lines shown
    from the first step, autodiff with ``--quiet``."""
    runs = {}
    folder = tmp_path_factory.mktemp("model")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(jaxbp.data, "load_dataset", _load_any_size)
        m.setattr(train_cli._EpochProgress, "__init__", _eager_progress_init)
        for grad, extra in (("manual", []), ("autodiff", ["--quiet"])):
            out = folder / grad
            argv = _argv(tiny_data, out, *extra, model=MODEL, grad=grad, **MODEL_FLAGS)
            rc, stdout, stderr = _main([*argv, "--devices", "1"])
            runs[grad] = Run(rc, out, stdout, stderr)
    return runs


def test_model_trains_alike_with_either_gradient(model_runs):
    for run in model_runs.values():
        assert run.rc == 0, run.stderr
    manual, auto = (_metrics(model_runs[g].out) for g in ("manual", "autodiff"))
    spec = jaxbp.models.canonical(MODEL)
    assert manual["config"]["model"] == spec and manual["config"]["grad"] == "manual"
    assert TrainConfig.from_dict(auto["config"]) == TrainConfig(
        model=MODEL, grad="autodiff", epochs=1, batch_size=32, optimizer="sgd", lr=0.05
    )
    assert manual["network"].startswith("Sequential(Reshape(28, 28, 1), Conv2D(4, 3x3")
    assert "sizes" not in manual
    (m,), (a,) = manual["history"], auto["history"]
    assert m["step"] == a["step"] == STEPS_PER_EPOCH
    for key in ("train_loss", "test_loss"):
        assert m[key] == pytest.approx(a[key], rel=1e-3), key
    assert abs(m["test_accuracy"] - a["test_accuracy"]) <= 0.02
    assert m["test_accuracy"] > 0.2  # chance is 0.1


def test_model_checkpoint_holds_the_network_and_its_statistics(model_runs, tiny_data):
    run = model_runs["manual"]
    path = run.out / "checkpoint.npz"
    net, params, meta = checkpoint.load_checkpoint(path)
    assert net == TrainConfig(model=MODEL).net
    assert meta["net"]["spec"] == jaxbp.models.canonical(MODEL)
    assert [sorted(p) for p in params[:3]] == [[], ["b", "w"], ["b", "g"]]
    state = checkpoint.load_model_state(path)
    assert sorted(state[2]) == ["mean", "var"] and sorted(state[4][1]) == [
        "mean",
        "var",
    ]
    assert not np.allclose(state[2]["mean"], 0)  # trained running averages
    # Evaluating with them reproduces the recorded accuracy.
    images = jaxbp.data.read_idx(tiny_data / "t10k-images-idx3-ubyte.gz")
    labels = jaxbp.data.read_idx(tiny_data / "t10k-labels-idx1-ubyte.gz")
    x = images.reshape(NUM_TEST, -1).astype(np.float32) / 255
    logits = np.asarray(net.forward(params, x, state=state))
    accuracy = np.mean(np.argmax(logits, axis=1) == labels)
    assert _metrics(run.out)["final_test_accuracy"] == pytest.approx(accuracy)


def test_progress_lines_while_an_epoch_runs_and_none_when_quiet(model_runs):
    manual, quiet = model_runs["manual"], model_runs["autodiff"]
    lines = manual.stderr.splitlines()
    steps = []
    for line in lines:
        match = re.fullmatch(
            rf"epoch 1/1: step (\d+)/{STEPS_PER_EPOCH} \( *\d+ %\), \d+ s, about "
            r"\d+ s left",
            line,
        )
        assert match, line
        steps.append(int(match[1]))
    # A first epoch reports every fifth of its 18 steps (every 4th); not the last,
    # which the epoch's own line follows.
    assert steps == list(range(4, STEPS_PER_EPOCH, 4))
    assert "\r" not in manual.stderr  # plain lines, not a bar, off a terminal
    assert quiet.stderr == "" and quiet.stdout.startswith("final test accuracy")


def test_progress_bar_on_a_terminal():
    stream = io.StringIO()
    show = train_cli._EpochProgress(stream, bar=True, after_s=1.0, redraw_s=0.5)
    for done, elapsed in [(0, 0), (10, 0.5), (20, 1.0), (25, 1.2), (40, 2.0), (80, 4)]:
        show(jaxbp.train.EpochProgress(2, 3, done, 80, elapsed))
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3  # after 1 s, every 0.5 s, then erased
    assert frames[0].startswith("[######..................] epoch 2/3: step 20/80")
    assert frames[1].startswith("[############............] epoch 2/3: step 40/80")
    assert frames[2] == "\x1b[K"
    quiet = io.StringIO()
    show = train_cli._EpochProgress(quiet, bar=True)
    for done in (0, 5, 10):  # an epoch under 3 s shows nothing
        show(jaxbp.train.EpochProgress(1, 1, done, 10, done / 10))
    assert quiet.getvalue() == ""


def test_resume_with_another_model_is_refused_naming_it(
    baseline_copy, model_runs, tiny_data, tmp_path, any_size
):
    argv = _argv(tiny_data, baseline_copy, "--resume", model="lenet", hidden=None)
    rc, _, stderr = _main(argv)
    _assert_one_line_error(rc, stderr)
    assert "--model mlp (saved) vs lenet (now)" in stderr
    run = pathlib.Path(shutil.copytree(model_runs["manual"].out, tmp_path / "m"))
    argv = _argv(tiny_data, run, "--resume", model="lenet", **MODEL_FLAGS)
    rc, _, stderr = _main(argv)
    _assert_one_line_error(rc, stderr)
    assert f"--model {jaxbp.models.canonical(MODEL)} (saved) vs lenet (now)" in stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hidden", "32"], "--model conflicts with --hidden: they describe the MLP"),
        (
            ["--activation", "tanh", "--output-activation", "identity"],
            "--model conflicts with --activation and --output-activation",
        ),
        (["--model", "dense(10),fo(3)"], "at 'fo' (character 11): unknown layer"),
        (["--model", "flatten,dense(7)"], "--model: model ends with 7 outputs"),
        (
            ["--model", "bn-res", "--dp-clip", "1"],
            "--dp-clip: DP-SGD (dp_clip) needs per-",
        ),
    ],
)
def test_bad_models_fail_with_one_line(tiny_data, tmp_path, flags, message):
    argv = ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path / "run")]
    if "--model" not in flags:
        flags = ["--model", "lenet", *flags]
    rc, _, stderr = _main([*argv, *flags])
    assert rc == 2
    _assert_one_line_error(rc, stderr)
    assert message in stderr, stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "settings", "flag"),
    [
        (
            ["--grad", "direct-feedback-alignment", "--model", "lenet"],
            {"grad": "direct-feedback-alignment", "model": "lenet"},
            "--grad",
        ),
        (["--dp-noise", "1"], {"dp_noise": 1.0}, "--dp-noise"),
        # The DP flags are checked once, by TrainConfig, and named by the CLI.
        (["--dp-clip", "-1"], {"dp_clip": -1.0}, "--dp-clip"),
        (["--dp-clip", "inf"], {"dp_clip": float("inf")}, "--dp-clip"),
        (
            ["--dp-clip", "1", "--dp-noise", "-0.5"],
            {"dp_clip": 1.0, "dp_noise": -0.5},
            "--dp-noise",
        ),
        (
            ["--grad", "manual", "--align-every", "3"],
            {"grad": "manual", "align_every": 3},
            "--align-every",
        ),
        (
            ["--output-activation", "sigmoid"],
            {"output_activation": "sigmoid"},
            "--output-activation",
        ),
        (["--model", "flatten,dense(7)"], {"model": "flatten,dense(7)"}, "--model"),
    ],
)
def test_a_setting_error_names_its_flag_and_keeps_the_message(
    tiny_data, tmp_path, flags, settings, flag
):
    # The library's ConfigError carries the setting; the CLI puts the flag of that
    # dest before the library's message and leaves the message as it is.
    with pytest.raises(ConfigError) as info:
        TrainConfig(**settings)
    argv = ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path / "run")]
    rc, stdout, stderr = _main([*argv, *flags])
    assert rc == 2 and stdout == ""
    assert stderr == f"jaxbp train: error: {flag}: {info.value}\n"
    assert not (tmp_path / "run").exists()


def test_model_flag_help_and_defaults():
    args = cli.build_parser().parse_args(["train", "--model", "mlp", "--hidden", "8"])
    # mlp: no conflict
    assert train_cli.config_from_args(args) == TrainConfig(hidden=(8,))
    sub = next(
        a
        for a in cli.build_parser()._actions
        if isinstance(a, argparse._SubParsersAction)
    )
    help_text = " ".join(sub.choices["train"].format_help().split())
    for name in jaxbp.models.PRESETS:
        assert f"{name}: " in help_text
    assert train_cli._default_run_name(TrainConfig(model="lenet", grad="autodiff")) == (
        "fashion_mnist-lenet-autodiff"
    )
    assert train_cli._default_run_name(TrainConfig(model=MODEL)) == (
        "fashion_mnist-model-manual"
    )
    assert train_cli._default_run_name(TrainConfig()) == "fashion_mnist-manual"


# --- jaxbp check
def test_check_passes_and_prints_pass_rows(capsys):
    rc = cli.main(["check", "--sizes", "20,8,3", "--fd-samples", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = re.findall(r"^\[\d\]\['[wb]'\] .*\bPASS$", out, flags=re.MULTILINE)
    assert len(rows) == 3 * 4  # three comparisons, four leaves each
    assert "FAIL" not in out
    assert out.rstrip().endswith("PASS: all comparisons pass")


@pytest.mark.parametrize("value", ["-5", "-2", "1.5", "many"])
def test_check_refuses_a_bad_fd_samples_with_one_line(value):
    rc, stdout, stderr = _main(["check", "--sizes", "5,3", f"--fd-samples={value}"])
    assert rc == 2
    _assert_one_line_error(rc, stderr, "check")
    assert "argument --fd-samples: must be -1 (every parameter), 0 (none) or " in stderr
    assert value in stderr and stdout == ""


def test_check_fails_on_a_broken_derivative(capsys, monkeypatch):
    tanh = ACTIVATIONS["tanh"]
    broken = Activation("tanh", tanh.fn, lambda z, a: jnp.ones_like(z))  # not 1-a^2
    monkeypatch.setitem(ACTIVATIONS, "tanh", broken)
    # Sizes used nowhere else, so no compiled program from another test is reused.
    argv = ["check", "--sizes", "11,7,3", "--activation", "tanh", "--fd-samples", "0"]
    rc = cli.main(argv)
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in out
    assert out.rstrip().endswith("comparisons fail")


# --- real data
def test_one_epoch_on_fashion_mnist(shared_data_dir, tmp_path):
    data_dir = shared_data_dir / "fashion-mnist"
    if not (data_dir / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no Fashion-MNIST training images in {data_dir}")
    out = tmp_path / "run"
    argv = ["train", "--dataset", "fashion_mnist", "--data-dir", str(data_dir)]
    argv += ["--epochs", "1", "--hidden", "32", "--batch-size", "128"]
    rc, _, stderr = _main([*argv, "--out", str(out), "--quiet"])
    assert rc == 0, stderr
    metrics = _metrics(out)
    assert metrics["train_examples"] == 60000 and metrics["test_examples"] == 10000
    assert metrics["final_test_accuracy"] > 0.75
    assert metrics["history"][0]["step"] == 60000 // 128
    assert optim.DEFAULT_LEARNING_RATES["adam"] == metrics["config"]["lr"]


def test_a_ctrl_c_while_training_waits_for_the_epoch_and_a_second_does_not():
    from jaxbp.cli import train as train_command

    before = signal.getsignal(signal.SIGINT)
    with train_command._StopAtEpochEnd() as stop:
        stop.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs at the next bytecode: no exception here
        with pytest.raises(KeyboardInterrupt):
            stop.check()  # after the epoch's checkpoint
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second one: at once
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before
