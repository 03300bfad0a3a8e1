"""Training with the learning rules of jaxbp.feedback: state, checkpoint, config, CLI.

Tiny runs (600 synthetic 28x28 examples, a 16-unit hidden layer, two epochs) through
``jaxbp train --grad <rule>``, as ``tests/test_cli.py`` keeps its runs tiny.
"""

import contextlib
import dataclasses
import io
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp.data
from jaxbp import checkpoint, cli, feedback, optim, train
from jaxbp.config import TrainConfig, setup
from jaxbp.mlp import MLP

NUM_TRAIN, NUM_TEST, BATCH = 600, 100, 32
STEPS = NUM_TRAIN // BATCH
FA, DFA, SS = feedback.RULES
_REAL_LOAD_DATASET = jaxbp.data.load_dataset


def _load_any_size(name, split, **kwargs):
    spec = jaxbp.data.dataset_spec(name)
    splits = {k: v._replace(num_examples=None) for k, v in spec.splits.items()}
    return _REAL_LOAD_DATASET(dataclasses.replace(spec, splits=splits), split, **kwargs)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """600 train / 100 test images; class ``c`` has bright rows ``2c..2c+2``."""
    folder = tmp_path_factory.mktemp("tiny-mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for c in range(10):
            images[labels == c, 2 * c : 2 * c + 3, :] = 250
        jaxbp.data.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        jaxbp.data.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def _argv(data_dir, out, *extra, grad=FA, epochs=2):
    return [
        "train", "--data-dir", str(data_dir), "--out", str(out), "--grad", grad,
        "--hidden", "64,32", "--activation", "tanh", "--batch-size", str(BATCH),
        "--optimizer", "sgd", "--lr", "0.1",
        "--epochs", str(epochs), *extra,
    ]  # fmt: skip


def _main(argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(jaxbp.data, "load_dataset", _load_any_size)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = cli.main(argv)
    return rc, stdout.getvalue(), stderr.getvalue()


def _read(out):
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def fa_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fa") / "run"
    rc, stdout, stderr = _main(_argv(tiny_data, out, "--align-every", "5"))
    assert rc == 0, stderr
    return out, stdout


# --------------------------------------------------------------------- CLI
def test_cli_trains_with_feedback_alignment_and_records_the_angles(fa_run):
    out, stdout = fa_run
    metrics = _read(out)
    assert metrics["config"]["grad"] == FA and metrics["config"]["align_every"] == 5
    history = metrics["history"]
    for h in history:
        align = h["alignment"]
        assert set(align) == set(feedback.ALIGNMENT_METRICS)
        assert all(len(v) == 3 for v in align.values())  # three Dense layers
        assert align["update_angle"][-1] < 0.1  # the output layer is exact
        assert align["feedback_angle"][0] is None  # layer 1 needs no feedback
        assert 0 < align["update_angle"][0] < 180
        steps = [r["step"] for r in h["alignment_steps"]]
        assert steps and all(s % 5 == 0 for s in steps)
        assert all(h["step"] - STEPS <= s < h["step"] for s in steps)
    assert history[0]["alignment_steps"][0]["step"] == 0
    lines = stdout.splitlines()
    assert lines[1].startswith("epoch   1/2") and " dW angle " in lines[1]
    assert "feedback-alignment gradients" in lines[0]
    assert metrics["final_test_accuracy"] > 0.5  # chance is 0.1
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feedback_is_in_the_checkpoint_and_never_changed(fa_run):
    out, _ = fa_run
    config = TrainConfig.from_dict(_read(out)["config"])
    x = np.zeros((NUM_TRAIN, 784), np.uint8)
    y = np.zeros(NUM_TRAIN, np.int32)
    fresh = setup(config, train_data=(x, y), test_data=(x[:10], y[:10]))
    saved, _ = checkpoint.restore_train_state(out / "checkpoint.npz", fresh.state)
    assert fresh.state.feedback[0] is None and saved.feedback[0] is None
    chex.assert_trees_all_equal(saved.feedback, fresh.state.feedback)
    assert int(saved.step) == 2 * STEPS


@pytest.mark.parametrize("rule", [DFA, SS])
def test_cli_trains_with_the_other_rules(rule, tiny_data, tmp_path):
    rc, stdout, stderr = _main(_argv(tiny_data, tmp_path / "run", grad=rule, epochs=1))
    assert rc == 0, stderr
    metrics = _read(tmp_path / "run")
    assert metrics["final_test_accuracy"] > 0.15  # chance is 0.1
    assert "alignment_steps" not in metrics["history"][0]
    angles = metrics["history"][0]["alignment"]["update_angle"]
    assert angles[-1] < 0.1 and 0 < angles[0] < 180


def test_resumed_rule_run_matches_the_uninterrupted_one_bitwise(
    fa_run, tiny_data, tmp_path
):
    out = tmp_path / "run"
    real_save = checkpoint.save_checkpoint
    calls = []

    def save_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
        rc, _, _ = _main(_argv(tiny_data, out, "--align-every", "5"))
    assert rc == 130
    rc, stdout, stderr = _main(_argv(tiny_data, out, "--align-every", "5", "--resume"))
    assert rc == 0, stderr
    assert "epoch   1/2" not in stdout and "epoch   2/2" in stdout
    for name in ("checkpoint.npz",):
        _, resumed, _ = checkpoint.load_checkpoint(out / name)
        _, uninterrupted, _ = checkpoint.load_checkpoint(fa_run[0] / name)
        chex.assert_trees_all_equal(resumed, uninterrupted)
    with (
        np.load(out / "checkpoint.npz") as a,
        np.load(fa_run[0] / "checkpoint.npz") as b,
    ):
        names = [n for n in a.files if n.startswith("feedback/")]
        assert names == ["feedback/1", "feedback/2"]
        for n in names:
            assert np.array_equal(a[n], b[n])
    history, expected = _read(out)["history"], _read(fa_run[0])["history"]
    for h, e in zip(history, expected, strict=True):
        for key in ("step", "train_loss", "test_loss", "alignment", "alignment_steps"):
            assert h[key] == e[key], key


def test_resume_with_another_rule_is_refused(fa_run, tiny_data, tmp_path):
    import shutil

    out = pathlib.Path(shutil.copytree(fa_run[0], tmp_path / "run"))
    rc, _, stderr = _main(
        _argv(tiny_data, out, "--align-every", "5", "--resume", grad=SS)
    )
    assert rc == 2
    assert "--grad feedback-alignment (saved) vs sign-symmetry (now)" in stderr


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--grad", "manual", "--align-every", "3"],
            "--align-every: align_every measures a",
        ),
        (["--grad", DFA, "--model", "lenet"], "cannot train layer 2 of"),
        (["--grad", FA, "--dp-clip", "1"], "DP-SGD is not supported"),
        (["--grad", "backprop"], "invalid choice: 'backprop'"),
    ],
)
def test_bad_rule_flags_fail_with_one_line(flags, message, tiny_data, tmp_path):
    argv = ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path), *flags]
    rc, _, stderr = _main(argv)
    assert rc == 2 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr


# --------------------------------------------------------------------- library
def test_the_rule_starts_from_the_parameters_and_shuffles_of_backprop():
    net = MLP((5, 4, 3), "tanh")
    opt = optim.make_optimizer("sgd", 0.1)
    key = jax.random.key(7)
    bp = train.init_train_state(net, opt, key)
    fa = train.init_train_state(net, opt, key, grad=FA)
    chex.assert_trees_all_equal(bp.params, fa.params)
    assert np.array_equal(jax.random.key_data(bp.key), jax.random.key_data(fa.key))
    assert bp.feedback is None and fa.feedback[1].shape == (4, 3)
    assert train.init_train_state(net, opt, key, grad=SS).feedback is None


def test_train_step_applies_the_rule_and_keeps_the_feedback():
    net = MLP((5, 4, 3), "tanh")
    opt = optim.make_optimizer("sgd", 0.1)
    state = train.init_train_state(net, opt, jax.random.key(0), grad=FA)
    x = jax.random.normal(jax.random.key(1), (8, 5))
    y = jnp.arange(8) % 3
    new, _ = train.make_train_step(net, opt, grad=FA)(state, (x, y))
    _, upd = feedback.value_and_feedback_grad(
        net, state.params, state.feedback, x, y, FA
    )
    want = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, upd)
    chex.assert_trees_all_close(new.params, want, rtol=1e-6)
    chex.assert_trees_all_equal(new.feedback, state.feedback)


def test_align_every_needs_a_rule_and_the_scan_loop():
    net = MLP((5, 4, 3), "tanh")
    opt = optim.make_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="align_every measures a learning rule"):
        train.make_train_epoch(net, opt, batch_size=4, align_every=2)
    with pytest.raises(ValueError, match='align_every needs loop="scan"'):
        train.make_train_epoch(
            net, opt, batch_size=4, grad=FA, align_every=2, loop="host"
        )
    with pytest.raises(ValueError, match="align_every must be a positive integer"):
        TrainConfig(grad=FA, align_every=0)
