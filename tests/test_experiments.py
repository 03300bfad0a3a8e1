"""Smoke tests of the experiment scripts: each ``--quick`` mode runs and writes results.

The scripts run at once (each in its own Python, as ``python experiments/NAME.py
--quick``), so the whole module takes about as long as the slowest of them. They run
without ``--out``, as a user would, so these tests also check that ``--quick`` writes
to ``experiments/results/quick/`` and leaves the published results alone.
"""

import csv
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
RESULTS = EXPERIMENTS / "results"
QUICK_RESULTS = RESULTS / "quick"
SCRIPTS = (
    "worked_examples",
    "fd_cost",
    "equivalence_atlas",
    "training_curves",
    "per_example_bench",
    "gradcheck_speed",
    "learning_rules_speed",
)
#: Scripts that need the real MNIST/Fashion-MNIST files (``JAXBP_DATA_DIR``).
DATA_SCRIPTS = ("data_load_speed", "mnist_accuracy", "learning_rules", "kfac_vs_adam")
TIMEOUT_S = 600


def _have_data() -> bool:
    """Whether ``JAXBP_DATA_DIR`` names a folder, as the ``shared_data_dir`` fixture."""
    value = os.environ.get("JAXBP_DATA_DIR")
    return bool(value) and pathlib.Path(value).is_dir()


def _published_results() -> dict[str, str]:
    """SHA-256 of every file under experiments/results except quick/, by path."""
    return {
        str(path.relative_to(RESULTS)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(RESULTS.rglob("*"))
        if path.is_file() and QUICK_RESULTS not in path.parents
    }


@pytest.fixture(scope="module")
def quick_runs() -> dict:
    """Runs every script's --quick mode at once, without --out.

    Returns:
      ``{name: (rc, output, out_dir)}`` and, under ``"published"``, the hashes of
      the published results before and after the runs.
    """
    before = _published_results()
    scripts = SCRIPTS + (DATA_SCRIPTS if _have_data() else ())
    procs = {}
    env = os.environ.copy()
    env.setdefault("JAX_PLATFORMS", "cpu")
    for name in scripts:
        procs[name] = subprocess.Popen(
            [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--quick"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
    runs = {}
    for name, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        runs[name] = (proc.returncode, output, QUICK_RESULTS)
    runs["published"] = (before, _published_results())
    return runs


def _ok(runs, name) -> tuple[str, pathlib.Path]:
    rc, output, out = runs[name]
    assert rc == 0, f"{name} --quick exited {rc}:\n{output[-4000:]}"
    return output, out


def _png(path: pathlib.Path) -> None:
    assert path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


@pytest.fixture
def common(monkeypatch):
    """``experiments/_common.py``, imported as the scripts import it."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import _common

    return _common


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], RESULTS),
        (["--quick"], QUICK_RESULTS),
        (["--out", "elsewhere"], pathlib.Path("elsewhere")),
        (["--quick", "--out", "elsewhere"], pathlib.Path("elsewhere")),
    ],
)
def test_make_parser_out_defaults(common, argv, expected):
    parser = common.make_parser("An experiment.\n\nMore words.")
    parser.add_argument("--size", type=int, default=3)
    assert parser.parse_args(argv).out == expected
    assert parser.parse_known_args([*argv, "--other"])[0].out == expected
    assert common.RESULTS_DIR == RESULTS and common.QUICK_RESULTS_DIR == QUICK_RESULTS


def test_quick_runs_leave_the_published_results_untouched(quick_runs):
    before, after = quick_runs["published"]
    assert before, "experiments/results holds no published results"
    assert after == before


@pytest.mark.parametrize("name", SCRIPTS + DATA_SCRIPTS)
def test_quick_writes_to_the_quick_folder(quick_runs, name):
    if name not in quick_runs:
        pytest.skip("JAXBP_DATA_DIR names no folder: no real MNIST/Fashion-MNIST files")
    output, _ = _ok(quick_runs, name)
    assert str(QUICK_RESULTS) in output, output[-2000:]


def test_help():
    # Every script: --help works and offers --quick and --out.
    names = sorted(p.stem for p in EXPERIMENTS.glob("[!_]*.py"))
    assert set(SCRIPTS + DATA_SCRIPTS) <= set(names)
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in names
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
    expected = "real" if _have_data() else None
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


# --- the speed benchmark: --quick runs end to end
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


def test_per_example_bench(quick_runs):
    _, out = _ok(quick_runs, "per_example_bench")
    record = json.loads((out / "per_example_bench.json").read_text())
    assert record["quick"] and record["results"]
    for r in record["results"]:
        assert r["median_ms"]["norms"] > 0 and r["median_ms"]["manual_materialised"] > 0
    _png(out / "per_example_bench.png")


def test_per_example_conv_bench_quick(tmp_path):
    proc = _run_quick("per_example_conv_bench", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = json.loads((tmp_path / "per_example_conv_bench.json").read_text())
    assert record["quick"] and record["results"]
    for r in record["results"]:
        assert [c["auto_picks"] for c in r["convs"]] == ["materialise", "gram"]
        for c in r["convs"]:
            assert c["gram_vs_materialise_max_rel_diff"] < 1e-4
        assert r["whole_step"]["median_ms"]["clipped_auto"] > 0


def test_gradcheck_speed(quick_runs):
    _, out = _ok(quick_runs, "gradcheck_speed")
    record = json.loads((out / "gradcheck_speed.json").read_text())
    assert record["quick"] and record["num_params"] > 0
    results = record["results"]
    assert {"python_default", "mlp_all", "general_all"} <= set(results)
    for name, r in results.items():
        assert r["passed"], name
        assert r["median_s"] > 0, name
    assert "every coordinate" in results["mlp_all"]["coverage"]


def test_data_load_speed(quick_runs, shared_data_dir):
    _, out = _ok(quick_runs, "data_load_speed")
    record = json.loads((out / "data_load_speed.json").read_text())
    assert record["splits"] == ["test"] and record["num_images"] == 10000
    assert 0 < record["min_s"] <= record["median_s"] <= record["max_s"]


def test_mnist_accuracy(quick_runs, shared_data_dir):
    output, out = _ok(quick_runs, "mnist_accuracy")
    record = json.loads((out / "mnist_accuracy.json").read_text())
    runs = record["runs"]
    assert [(r["network"], r["grad"]) for r in runs] == [
        ("784-512-512-10 relu adam", "manual"),
        ("784-512-512-10 relu adam", "autodiff"),
        ("784-30-10 sigmoid sgd", "manual"),
        ("784-30-10 sigmoid sgd", "autodiff"),
    ]
    for r in runs:
        # Trained through the CLI on all of MNIST, one epoch.
        assert r["command"].startswith("jaxbp train --dataset mnist --grad ")
        assert r["train_examples"] == 60000 and r["test_examples"] == 10000
        assert len(r["test_accuracy_per_epoch"]) == 1
        assert r["final_test_accuracy"] > 0.9, r
    # The two gradients train the same network to within float32 rounding.
    for manual, autodiff in (runs[0:2], runs[2:4]):
        assert (
            abs(manual["final_test_accuracy"] - autodiff["final_test_accuracy"]) < 0.01
        )
    assert len(record["summary"]) == 4
    assert "$ jaxbp train --dataset mnist --grad manual --hidden 512,512" in output


@pytest.fixture
def runs_module(monkeypatch):
    """``experiments/_runs.py`` with ``train`` faked: its "accuracy" counts the runs."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import _runs

    trained = []

    def fake_train(args, out):
        trained.append(args)
        return {"final_test_accuracy": len(trained)}

    monkeypatch.setattr(_runs, "train", fake_train)
    return _runs, trained


def _record(run, metrics, wall_s):
    return {
        "network": run.network,
        "grad": run.grad,
        "seed": run.seed,
        "command": run.command,
        "accuracy": metrics["final_test_accuracy"],
    }


def test_train_runs_keeps_the_plans_order(runs_module):
    runs, trained = runs_module
    plan = [
        runs.PlannedRun("net", grad, 0, ["train", "--grad", grad])
        for grad in ("manual", "autodiff")
    ]
    records = runs.train_runs(plan, _record)
    assert [r["grad"] for r in records] == ["manual", "autodiff"]
    assert records[0]["command"] == "jaxbp train --grad manual"
    assert trained == [p.args for p in plan]


def test_train_into_file_merges_with_the_earlier_file(runs_module, tmp_path):
    runs, _ = runs_module
    path = tmp_path / "result.json"
    wanted = {("net", g, s) for g in ("a", "m") for s in (0, 1)}

    def sitting(grads, seeds):
        plan = [runs.PlannedRun("net", g, s, ["train"]) for s in seeds for g in grads]
        return runs.train_into_file(
            path, plan, _record, command=f"sitting {seeds}", header={"quick": True},
            wanted=wanted,
        )  # fmt: skip

    first = sitting(("m", "a"), (1,))
    assert [r["grad"] for r in first["runs"]] == ["a", "m"]  # sorted
    assert not first["complete"]
    sitting(("m", "a"), (0,))
    again = sitting(("m",), (1,))  # replaces one run's record, keeps the others
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(again))
    assert list(on_disk) == ["commands", "quick", "complete", "runs"]
    assert on_disk["commands"] == ["sitting (1,)", "sitting (0,)", "sitting (1,)"]
    assert on_disk["complete"]
    keys = [runs.run_key(r) for r in on_disk["runs"]]
    assert keys == sorted(wanted)
    assert on_disk["runs"][keys.index(("net", "m", 1))]["accuracy"] == 5  # the rerun
