"""Smoke tests of the experiment scripts: each ``--quick`` mode runs and writes results.

The four scripts run at once (each in its own Python, as ``python
experiments/NAME.py --quick --out TMP``), so the whole module takes about as long as
the slowest of them.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = ("worked_examples", "fd_cost", "equivalence_atlas", "training_curves")
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> dict:
    """Runs every script's --quick mode at once; ``{name: (rc, output, out_dir)}``."""
    procs = {}
    env = os.environ.copy()
    env.setdefault("JAX_PLATFORMS", "cpu")
    for name in SCRIPTS:
        out = tmp_path_factory.mktemp(name)
        procs[name] = (
            subprocess.Popen(
                [
                    sys.executable,
                    str(EXPERIMENTS / f"{name}.py"),
                    "--quick",
                    "--out",
                    str(out),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=ROOT,
            ),
            out,
        )
    runs = {}
    for name, (proc, out) in procs.items():
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        runs[name] = (proc.returncode, output, out)
    return runs


def _ok(runs, name) -> tuple[str, pathlib.Path]:
    rc, output, out = runs[name]
    assert rc == 0, f"{name} --quick exited {rc}:\n{output[-4000:]}"
    return output, out


def _png(path: pathlib.Path) -> None:
    assert path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_help():
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in SCRIPTS
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} --help: {stderr}"
        assert "--quick" in stdout and "--out" in stdout, name


def test_worked_examples(quick_runs):
    output, out = _ok(quick_runs, "worked_examples")
    record = json.loads((out / "worked_examples.json").read_text())
    sig = record["sigmoid_2_2_2"]
    assert sig["passed"]
    assert all(c["ok"] for c in sig["checks"].values())
    assert sig["forward"]["o1"] == pytest.approx(0.60944600, abs=5e-9)
    assert sig["updated_weights"]["W5"]["manual"] == pytest.approx(0.43703857, abs=5e-9)
    reg = record["linear_regression"]
    assert len(reg["loss_curve_manual"]) == reg["epochs"] == 1000
    assert reg["max_abs_trajectory_difference"] < 1e-12
    final = reg["final"]["manual"]
    assert final["w"] == pytest.approx(2, abs=0.05)
    assert final["b"] == pytest.approx(1, abs=0.05)
    assert "0.02592286" in output
    _png(out / "worked_examples.png")


def test_fd_cost(quick_runs):
    _, out = _ok(quick_runs, "fd_cost")
    record = json.loads((out / "fd_cost.json").read_text())
    rows = record["rows"]
    assert len(rows) >= 2
    for r in rows:
        assert r["forward_s"] > 0 and r["manual_grad_s"] > 0 and r["fd_full_s"] > 0
    # Finite differences of every parameter cost far more than one backward pass.
    assert rows[-1]["fd_full_s"] > 10 * rows[-1]["manual_grad_s"]
    assert record["epoch_extrapolation"]["speedup"] > 1
    with (out / "fd_cost.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    _png(out / "fd_cost.png")


def test_equivalence_atlas(quick_runs):
    _, out = _ok(quick_runs, "equivalence_atlas")
    record = json.loads((out / "equivalence_atlas.json").read_text())
    rows = record["rows"]
    assert rows
    for r in rows:
        assert r["manual_vs_autodiff_float64_passed"], r
        assert r["manual_vs_autodiff_float64_max_rel"] < 1e-10
        assert r["manual_vs_autodiff_float32_max_rel"] < 1e-4
    assert {r["loss"] for r in rows} == {"half_sse", "mse", "softmax_cross_entropy"}
    with (out / "equivalence_atlas.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    _png(out / "equivalence_atlas.png")


def test_training_curves(quick_runs):
    _, out = _ok(quick_runs, "training_curves")
    record = json.loads((out / "training_curves.json").read_text())
    assert record["config"]["hidden"] == [100]
    assert record["datasets"]["fashion_mnist"]["network"].startswith("MLP(784-100-10,")
    res = record["datasets"]["fashion_mnist"]
    expected = "real" if os.environ.get("JAXBP_DATA_DIR") else None
    if expected:
        assert res["data"]["source"] == "real"
    runs = res["runs"]
    assert len(runs["manual"]["history"]) == len(runs["autodiff"]["history"]) == 1
    summary = res["summary"]
    # One epoch from the same seed: the two runs stay together.
    assert summary["max_abs_curve_difference"]["train_loss"] < 1e-4
    assert summary["max_abs_param_difference"] < 1e-3
    if res["data"]["source"] == "real":
        assert summary["final_test_accuracy"]["manual"] > 0.6
    with (out / "training_curves.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    _png(out / "training_curves.png")


# --- the benchmarks and the MNIST proxy: --quick runs end to end
def _run_quick(name, out, *extra):
    env = os.environ.copy()
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--quick", "--out", str(out)]
        + list(extra),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=TIMEOUT_S,
    )


def test_bench_speed_quick(tmp_path):
    proc = _run_quick("bench_speed", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = json.loads((tmp_path / "bench_speed_quick.json").read_text())
    text = json.dumps(record)
    assert "jaxbp" in text and "numpy" in text
    assert "samples" in text


def test_per_example_bench_quick(tmp_path):
    proc = _run_quick("per_example_bench", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "per_example_bench_quick.json").stat().st_size > 100


def test_mnist_proxy_quick(tmp_path, shared_data_dir):
    proc = _run_quick("mnist_proxy", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = json.loads((tmp_path / "mnist_proxy.json").read_text())
    assert set(record["runs"]) == {"784-512-512-10 relu adam", "784-30-10 sigmoid sgd"}
    for run in record["runs"].values():
        assert 0.5 < run["test_accuracy"] <= 1
