"""Multi-host data parallelism through JAX's own runtime, on one machine.

Two processes on 127.0.0.1, two CPU devices each, join one job with
``jax.distributed.initialize`` (gloo collectives on CPU), each feeds its half of every
global batch (``jax.make_array_from_process_local_data``), and they must end with the
same parameters as each other and as one process training on one device with the
whole batches (``tests/_multihost_worker.py``).
"""

import os
import pathlib
import socket
import subprocess
import sys

import chex
import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent
WORKER = HERE / "_multihost_worker.py"
TIMEOUT_S = 120
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for name in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES"):
        env.pop(name, None)
    return env


def _start(out: pathlib.Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for every process (``TIMEOUT_S`` in all); kills them all on a timeout."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate()
        pytest.fail(f"a worker did not finish within {TIMEOUT_S} s")
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("multihost")
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        _start(
            folder / f"process{i}.npz",
            f"--process-id={i}",
            "--num-processes=2",
            f"--coordinator={coordinator}",
            "--local-devices=2",
        )
        for i in range(2)
    ]
    procs.append(_start(folder / "single.npz"))  # one process, one device
    _finish(procs)
    return {
        name: _load(folder / f"{name}.npz")
        for name in ("process0", "process1", "single")
    }


def test_processes_train_in_lockstep(runs):
    chex.assert_trees_all_equal(runs["process0"], runs["process1"])


@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_two_hosts_match_one_device(runs, grad):
    multi = {k: v for k, v in runs["process0"].items() if k.startswith(grad + "/")}
    single = {k: v for k, v in runs["single"].items() if k.startswith(grad + "/")}
    assert multi.keys() == single.keys() and len(multi) > 1
    chex.assert_trees_all_close(multi, single, **TOL)
    # And training moved the parameters: the comparison is not of two starts.
    assert not np.allclose(single[f"{grad}/loss"][0], single[f"{grad}/loss"][-1])


def test_fit_on_two_hosts_matches_one_device(runs):
    multi = {k: v for k, v in runs["process0"].items() if k.startswith("fit/")}
    single = {k: v for k, v in runs["single"].items() if k.startswith("fit/")}
    assert multi.keys() == single.keys() and len(multi) > 1
    chex.assert_trees_all_close(multi, single, **TOL)
