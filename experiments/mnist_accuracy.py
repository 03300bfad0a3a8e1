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

import os

import _common
import _runs

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


def plan_runs(seeds: list[int], epochs: int | None) -> list[_runs.PlannedRun]:
    """Every network, seed and gradient, in that order."""
    return [
        _runs.PlannedRun(
            name, grad, seed, train_command(network["flags"], grad, seed, epochs)
        )
        for name, network in NETWORKS.items()
        for seed in seeds
        for grad in GRADS
    ]


def run_record(run: _runs.PlannedRun, metrics: dict, wall_s: float) -> dict:
    """One run's record: its command, sizes, accuracy per epoch and target."""
    accuracy = metrics["final_test_accuracy"]
    target = NETWORKS[run.network]["target"]
    return {
        "network": run.network,
        "grad": run.grad,
        "seed": run.seed,
        "command": run.command,
        "config": metrics["config"],
        "num_params": metrics["num_params"],
        "train_examples": metrics["train_examples"],
        "test_examples": metrics["test_examples"],
        "final_test_accuracy": accuracy,
        "test_accuracy_per_epoch": [h["test_accuracy"] for h in metrics["history"]],
        "train_loss_per_epoch": [h["train_loss"] for h in metrics["history"]],
        "train_time_s": metrics["timing"]["train_time_s"],
        "wall_s": wall_s,
        "target": target,
        "met": accuracy >= target,
    }


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


def print_summary(summary: list[dict], *, quick: bool) -> None:
    """One line per network and gradient: accuracy by seed against the target."""
    print(f"\n{'network':<26} {'grad':<9} {'seeds':<7} {'test accuracy':<28} target")
    for row in summary:
        accs = ", ".join(f"{a:.4f}" for a in row["test_accuracy_by_seed"])
        print(
            f"{row['network']:<26} {row['grad']:<9} {row['seeds']:<7} {accs:<28} "
            f">= {row['target']}: {'met' if row['met'] else 'NOT MET'}"
        )
    if quick:
        print("(--quick: one epoch each, not the measured result)")


def parse_args(argv=None):
    """The flags, checked; ``seeds`` becomes a list."""
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds; every network and gradient is trained once "
        "per seed (default 0,1,2; 0 with --quick)",
    )
    args = parser.parse_args(argv)
    args.seeds = _runs.parse_seeds(parser, args.seeds, quick=args.quick)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    environment = _common.environment()
    runs = _runs.train_runs(
        plan_runs(args.seeds, 1 if args.quick else None), run_record
    )
    summary = summarize(runs)
    print_summary(summary, quick=args.quick)
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
