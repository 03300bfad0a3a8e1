"""Tests for jaxbp.parallel: data-parallel training gives the single-device result.

JAX fixes its device count when it starts, and this pytest process has one CPU device,
so the 2- and 4-device runs happen in a subprocess (``tests/_parallel_worker.py``, four
simulated CPU devices) whose results are compared here; the ``jaxbp train --devices``
tests also run the CLI in a subprocess. A mesh of one device runs in this process.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import cli, data, optim, parallel, train
from jaxbp.cli import train as train_cli
from jaxbp.data import datasets
from jaxbp.mlp import MLP

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
TIMEOUT_S = 300
# float32 rounding: reductions split over devices add in a different order.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _env(num_devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices))
    env.pop("XLA_FLAGS", None)
    return env


def _run(args, num_devices: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        env=_env(num_devices),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=ROOT,
        **kwargs,
    )


@pytest.fixture(scope="module", autouse=True)
def _worker(tmp_path_factory):
    """Starts the four-device worker as this module begins, to run beside its tests."""
    folder = tmp_path_factory.mktemp("parallel")
    out, log = folder / "results.npz", folder / "worker.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "_parallel_worker.py"), str(out)],
            env=_env(4),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    yield proc, out, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------ one device, in process
NET = MLP((6, 8, 3), activation="tanh")


def _toy(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, NET.sizes[0]), dtype=np.uint8)
    y = rng.integers(0, NET.sizes[-1], size=(n,), dtype=np.int32)
    return x, y


@pytest.mark.parametrize("grad", train.GRAD_KINDS)
def test_one_device_mesh_matches_no_mesh(grad):
    mesh = parallel.make_data_mesh(1)
    optimizer = optim.make_optimizer("adam", 0.01)
    start = train.init_train_state(NET, optimizer, jax.random.key(0))
    x, y = _toy()
    xt, yt = _toy(13, seed=1)
    runs = {}
    for m in (None, mesh):
        state, logs, _ = train.train_epochs(
            NET,
            optimizer,
            start,
            (x, y),
            epochs=2,
            batch_size=8,
            grad=grad,
            test_data=(xt, yt),
            eval_batch_size=5,
            mesh=m,
        )
        runs[m is None] = (state.params, logs)
    (p0, logs0), (p1, logs1) = runs[True], runs[False]
    chex.assert_trees_all_close(p1, p0, **TOL)
    for a, b in zip(logs1, logs0, strict=True):
        np.testing.assert_allclose(
            [a.train_loss, a.test_loss, a.test_accuracy],
            [b.train_loss, b.test_loss, b.test_accuracy],
            **TOL,
        )


def test_replicate_places_every_leaf_of_a_train_state_on_the_mesh():
    mesh = parallel.make_data_mesh(1)
    optimizer = optim.make_optimizer("adam", 0.01)
    state = train.init_train_state(NET, optimizer, jax.random.key(0))
    placed = parallel.replicate(state, mesh)
    for leaf in jax.tree.leaves(placed):
        assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)
    assert jnp.array_equal(
        jax.random.key_data(placed.key), jax.random.key_data(state.key)
    )
    chex.assert_trees_all_equal(placed.params, state.params)


def test_replicate_train_state_is_a_deprecated_alias():
    mesh = parallel.make_data_mesh(1)
    optimizer = optim.make_optimizer("sgd", 0.1)
    state = train.init_train_state(NET, optimizer, jax.random.key(0))
    with pytest.warns(DeprecationWarning, match="jaxbp.parallel.replicate"):
        placed = train.replicate_train_state(state, mesh)
    chex.assert_trees_all_equal(placed.params, state.params)


def test_without_a_mesh_the_parallel_functions_change_nothing():
    data = (jnp.arange(12.0).reshape(6, 2), jnp.arange(6))
    idx = jnp.asarray([4, 0, 2])
    assert parallel.replicate(data, None) is data
    assert parallel.whole_batch(data, None) is data
    chex.assert_trees_all_equal(
        parallel.take_rows(data, idx, None), (data[0][idx], data[1][idx])
    )
    assert parallel.round_up_batch_size(1000, None) == 1000
    parallel.check_batch_size(7, None)  # any size on one device

    def value_and_grad(params, x, y):
        return params, x

    def totals(init, replicated, batches):
        return init

    assert parallel.data_parallel(value_and_grad, None) is value_and_grad
    assert parallel.data_parallel_sum(totals, None) is totals


def test_evaluation_batches_round_up_to_the_devices():
    mesh = jax.sharding.AbstractMesh((3,), (parallel.DATA_AXIS,))
    assert parallel.round_up_batch_size(1000, mesh) == 1002
    assert parallel.round_up_batch_size(999, mesh) == 999


def test_batch_size_must_divide_over_the_devices():
    mesh = jax.sharding.AbstractMesh((3,), (parallel.DATA_AXIS,))
    optimizer = optim.make_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="batch size 64 is not divisible by the 3"):
        train.make_train_epoch(NET, optimizer, batch_size=64, mesh=mesh)
    parallel.check_batch_size(63, mesh)


def test_mesh_needs_a_data_axis():
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(ValueError, match="axis named 'data'"):
        train.make_train_step(NET, optim.make_optimizer("sgd", 0.1), mesh=mesh)


def test_make_data_mesh_rejects_more_devices_than_there_are():
    with pytest.raises(ValueError, match="JAX_NUM_CPU_DEVICES"):
        parallel.make_data_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="positive"):
        parallel.make_data_mesh(0)


# ------------------------------------------------------------ jaxbp train --devices
def _any_size(specs):
    """The dataset specs with the check of each split's example count removed."""
    return types.MappingProxyType(
        {
            name: dataclasses.replace(
                spec,
                splits={
                    k: files._replace(num_examples=None)
                    for k, files in spec.splits.items()
                },
            )
            for name, spec in specs.items()
        }
    )


# `python -c` program: `jaxbp` with the example-count check off, as `_any_size` does,
# and no curves.png (importing matplotlib takes seconds).
CLI = """
import dataclasses, sys, types
sys.modules["matplotlib"] = None
from jaxbp.data import datasets
datasets.DATASETS = types.MappingProxyType({
    name: dataclasses.replace(spec, splits={
        k: files._replace(num_examples=None) for k, files in spec.splits.items()
    })
    for name, spec in datasets.DATASETS.items()
})
from jaxbp.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def any_size_datasets(monkeypatch):
    monkeypatch.setattr(datasets, "DATASETS", _any_size(datasets.DATASETS))
    monkeypatch.setattr(train_cli, "_plot_curves", lambda *args: False)


@pytest.fixture(scope="module")
def tiny_idx_dir(tmp_path_factory) -> pathlib.Path:
    """The four Fashion-MNIST IDX files with 192 train and 50 test random images."""
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, n in (("train", 192), ("test", 50)):
        files = data.dataset_spec("fashion_mnist").splits[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        data.write_idx(folder / files.images.filename, images)
        data.write_idx(folder / files.labels.filename, labels)
    return folder


def _train_args(idx_dir, out, *extra):
    return [
        "train",
        "--data-dir",
        str(idx_dir),
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.usefixtures("any_size_datasets")
def test_cli_devices_2_matches_one_device(tiny_idx_dir, tmp_path, capsys):
    proc = _run(
        ["-c", CLI, *_train_args(tiny_idx_dir, tmp_path / "two", "--devices", "2")],
        num_devices=2,
    )
    assert proc.returncode == 0, proc.stderr
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num_devices"] == 2
    assert two["available_devices"] == 2

    # The same run on this process's single device, for comparison.
    args = _train_args(tiny_idx_dir, tmp_path / "one", "--devices", "1")
    assert cli.main(args) == 0
    capsys.readouterr()
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert one["num_devices"] == 1
    assert two["config"] == one["config"]
    for key in ("train_loss", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(
            [h[key] for h in two["history"]], [h[key] for h in one["history"]], **TOL
        )


def test_cli_devices_must_divide_the_batch(tiny_idx_dir, tmp_path):
    args = _train_args(tiny_idx_dir, tmp_path / "run", "--devices", "3")
    args[args.index("--batch-size") + 1] = "64"
    proc = _run(["-c", CLI, *args], num_devices=4)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--batch-size 64 is not divisible by --devices 3" in lines[0]
    assert not (tmp_path / "run").exists()


def test_cli_devices_beyond_the_available(tiny_idx_dir, tmp_path, capsys):
    n = jax.local_device_count() + 1
    args = _train_args(tiny_idx_dir, tmp_path / "run", "--devices", str(n))
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--devices {n}, but only" in err


# ------------------------------------------------------------ 2 and 4 devices
# Last in this module: the worker has run beside the tests above.
@pytest.fixture(scope="module")
def worker_results(_worker) -> dict[str, np.ndarray]:
    proc, out, log = _worker
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the 4-device worker did not finish within {TIMEOUT_S} s")
    assert proc.returncode == 0, log.read_text()[-4000:]
    with np.load(out) as f:
        return dict(f)


def _pick(results, prefix):
    keys = sorted((k for k in results if k.startswith(prefix + "/")), key=_leaf_index)
    assert keys, f"no results under {prefix}"
    return [results[k] for k in keys]


def _leaf_index(key):
    last = key.rsplit("/", 1)[-1]
    return int(last) if last.isdigit() else -1


@pytest.mark.parametrize("grad", train.GRAD_KINDS)
@pytest.mark.parametrize("num_devices", [2, 4])
def test_batch_gradient_is_the_single_device_gradient(
    worker_results, grad, num_devices
):
    one = f"grad/{grad}/-/0"
    many = f"grad/{grad}/-/{num_devices}"
    chex.assert_trees_all_close(
        _pick(worker_results, many), _pick(worker_results, one), **TOL
    )


@pytest.mark.parametrize("grad", train.GRAD_KINDS)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("num_devices", [2, 4])
def test_steps_give_the_single_device_params(worker_results, grad, opt, num_devices):
    one = f"step/{grad}/{opt}/0"
    many = f"step/{grad}/{opt}/{num_devices}"
    chex.assert_trees_all_close(
        _pick(worker_results, f"{many}/params"),
        _pick(worker_results, f"{one}/params"),
        **TOL,
    )
    np.testing.assert_allclose(
        worker_results[f"{many}/loss"], worker_results[f"{one}/loss"], **TOL
    )


@pytest.mark.parametrize("grad", train.GRAD_KINDS)
@pytest.mark.parametrize("num_devices", [2, 4])
def test_dp_steps_give_the_single_device_params(worker_results, grad, num_devices):
    # Each device clips its own examples; the noise is drawn once, for the global B.
    one = _pick(worker_results, f"dp/{grad}/sgd/0/params")
    many = _pick(worker_results, f"dp/{grad}/sgd/{num_devices}/params")
    chex.assert_trees_all_close(many, one, **TOL)
    plain = _pick(worker_results, f"step/{grad}/sgd/0/params")
    assert not np.allclose(one[0], plain[0])  # clipping and noise did something


@pytest.mark.parametrize("grad", train.GRAD_KINDS)
@pytest.mark.parametrize("num_devices", [2, 4])
def test_train_epochs_gives_the_single_device_run(worker_results, grad, num_devices):
    one = f"fit/{grad}/adam/0"
    many = f"fit/{grad}/adam/{num_devices}"
    for part in ("params", "opt_state"):
        chex.assert_trees_all_close(
            _pick(worker_results, f"{many}/{part}"),
            _pick(worker_results, f"{one}/{part}"),
            **TOL,
        )
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose(
            worker_results[f"{many}/{name}"], worker_results[f"{one}/{name}"], **TOL
        )
    np.testing.assert_array_equal(
        worker_results[f"{many}/test_accuracy"], worker_results[f"{one}/test_accuracy"]
    )
    assert worker_results[f"{many}/step"] == worker_results[f"{one}/step"] == 12


def test_the_sharded_step_reduces_across_devices(worker_results):
    assert worker_results["hlo_has_all_reduce"]
