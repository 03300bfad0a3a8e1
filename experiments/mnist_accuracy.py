"""Test accuracy on MNIST, trained through the jaxbp CLI with both gradients.

Trains the two classic MNIST networks exactly as a user would, by running
``python -m jaxbp train --dataset mnist ...`` once with ``--grad manual`` (the
hand-derived delta rule) and once with ``--grad autodiff`` (``jax.grad``), and reads
each run's ``metrics.json``:

* 784-512-512-10 ReLU, softmax cross-entropy, Adam (target: test accuracy >= 0.98);
* 784-30-10 sigmoid, softmax cross-entropy, plain SGD (target: >= 0.95).

Every other setting is the CLI's default (batch 64, 10 epochs, cosine decay of the
default learning rate, float32); each network and gradient is trained from seeds 0,
1 and 2. The exact command of every run is recorded beside its result. The data come
from ``$JAXBP_DATA_DIR/mnist``, else the cache, else a download (11.6 MB). A full
run took 4.4 minutes on a busy 2-core CPU.

``--quick`` trains each network for one epoch from seed 0 (a smoke test, about 20 s).

Writes ``mnist_accuracy.json``.

Example:
  JAXBP_DATA_DIR=../shared/data python experiments/mnist_accuracy.py
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

import _common

GRADS = ("manual", "autodiff")

#: name: the flags that pick the network and optimizer, and the target accuracy.
NETWORKS = {
    "784-512-512-10 relu adam": {
        "flags": ["--hidden", "512,512", "--activation", "relu", "--optimizer", "adam"],
        "target": 0.98,
    },
    "784-30-10 sigmoid sgd": {
        "flags": ["--hidden", "30", "--activation", "sigmoid", "--optimizer", "sgd"],
        "target": 0.95,
    },
}


def train_command(flags: list[str], grad: str, seed: int, epochs: int | None):
    """The ``jaxbp train`` arguments of one run (without ``--out``)."""
    args = ["train", "--dataset", "mnist", "--grad", grad, *flags]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    if seed != 0:
        args += ["--seed", str(seed)]
    return args


def run_cli(args: list[str], out: pathlib.Path) -> dict:
    """Runs ``python -m jaxbp <args> --out OUT``; returns its ``metrics.json``.

    The run's own per-epoch lines go to this script's output as they come.
    """
    command = [sys.executable, "-m", "jaxbp", *args, "--out", str(out)]
    proc = subprocess.run(command, check=False)
    if proc.returncode != 0:
        raise SystemExit(
            f"mnist_accuracy: `jaxbp {shlex.join(args)}` exited {proc.returncode}"
        )
    return json.loads((out / "metrics.json").read_text())


def summarize(runs: list[dict]) -> list[dict]:
    """One row per network and gradient: accuracies over the seeds, target met."""
    rows = []
    for name, network in NETWORKS.items():
        for grad in GRADS:
            mine = [r for r in runs if r["network"] == name and r["grad"] == grad]
            accs = [r["final_test_accuracy"] for r in mine]
            rows.append({
                "network": name,
                "grad": grad,
                "seeds": ",".join(str(r["seed"]) for r in mine),
                "test_accuracy_by_seed": accs,
                "min": min(accs),
                "mean": sum(accs) / len(accs),
                "max": max(accs),
                "target": network["target"],
                "met": min(accs) >= network["target"],
            })  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds; every network and gradient is trained once "
        "per seed (default 0,1,2; 0 with --quick)",
    )
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = "0" if args.quick else "0,1,2"
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    epochs = 1 if args.quick else None
    environment = _common.environment()

    runs = []
    with tempfile.TemporaryDirectory(prefix="mnist_accuracy-") as tmp:
        for name, network in NETWORKS.items():
            for seed in seeds:
                for grad in GRADS:
                    cli_args = train_command(network["flags"], grad, seed, epochs)
                    print(f"\n$ jaxbp {shlex.join(cli_args)}", flush=True)
                    t0 = time.perf_counter()
                    metrics = run_cli(cli_args, pathlib.Path(tmp) / f"{len(runs)}")
                    accuracy = metrics["final_test_accuracy"]
                    runs.append({
                        "network": name,
                        "grad": grad,
                        "seed": seed,
                        "command": f"jaxbp {shlex.join(cli_args)}",
                        "config": metrics["config"],
                        "num_params": metrics["num_params"],
                        "train_examples": metrics["train_examples"],
                        "test_examples": metrics["test_examples"],
                        "final_test_accuracy": accuracy,
                        "test_accuracy_per_epoch": [
                            h["test_accuracy"] for h in metrics["history"]
                        ],
                        "train_loss_per_epoch": [
                            h["train_loss"] for h in metrics["history"]
                        ],
                        "train_time_s": metrics["timing"]["train_time_s"],
                        "wall_s": time.perf_counter() - t0,
                        "target": network["target"],
                        "met": accuracy >= network["target"],
                    })  # fmt: skip

    summary = summarize(runs)
    print(f"\n{'network':<26} {'grad':<9} {'seeds':<7} {'test accuracy':<28} target")
    for row in summary:
        accs = ", ".join(f"{a:.4f}" for a in row["test_accuracy_by_seed"])
        print(
            f"{row['network']:<26} {row['grad']:<9} {row['seeds']:<7} {accs:<28} "
            f">= {row['target']}: {'met' if row['met'] else 'NOT MET'}"
        )
    if args.quick:
        print("(--quick: one epoch each, not the measured result)")
    record = {
        "command": _common.command_line(__file__, argv),
        "quick": args.quick,
        "data_dir": os.environ.get("JAXBP_DATA_DIR"),
        "environment": environment,
        "summary": summary,
        "runs": runs,
    }
    path = _common.write_json(args.out / "mnist_accuracy.json", record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
