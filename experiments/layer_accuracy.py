"""Test accuracy of the layer networks, trained by the jaxbp CLI with both gradients.

Trains the networks of ``jaxbp train --model`` as a user would, by running
``python -m jaxbp train --model NAME ...`` once with ``--grad manual`` (every layer's
hand-derived backward) and once with ``--grad autodiff`` (``jax.grad``), and reads each
run's ``metrics.json``:

* ``lenet`` on MNIST: Caffe's LeNet (conv 5x5x20, max-pool 2, conv 5x5x50, max-pool 2,
  dense 500, ReLU, dense 10), target test accuracy >= 0.992;
* ``bn-res`` on Fashion-MNIST: convolutions with BatchNorm, a Residual block and
  Dropout, target >= 0.92 within 10 epochs.

Every other setting is the CLI's default (Adam, cosine decay of the learning rate to
zero, batch 64, float32; 10 epochs and Adam's default peak rate 2e-3 for bn-res).
LeNet trains for 15 epochs at peak rate 1e-3: with the defaults it overfits (training
loss 0.003 by epoch 8) and ends at 0.9909 (seed 0, manual), short of the target. The
exact command, the accuracy after every epoch and the epoch times of every run are
recorded beside its result, with the machine.
``--seeds`` picks the seeds (default 0,1,2), ``--networks`` the networks and
``--grads`` the gradients (default all); ``--quick`` trains LeNet for one epoch from
seed 0 (about a minute on 2 cores).

Writes ``layer_accuracy_NAME.json`` (``NAME`` the networks run, joined by ``_``) after
every run. Runs already in that file for other seeds or gradients are kept (a rerun of
the same network, gradient and seed replaces its record), so the seeds can be trained
in several sittings; ``"complete"`` says whether the file holds every network's runs
with both gradients and seeds 0, 1 and 2. Each run records its own command and
machine.

Example:
  JAXBP_DATA_DIR=../shared/data python experiments/layer_accuracy.py --seeds 0
"""

import os

import _common
import _runs
from mnist_accuracy import GRADS

#: name: the dataset, the flags that pick the network, and the target accuracy.
NETWORKS = {
    "lenet": {
        "dataset": "mnist",
        "flags": ["--model", "lenet", "--lr", "0.001", "--epochs", "15"],
        "target": 0.992,
    },
    "bn-res": {
        "dataset": "fashion_mnist",
        "flags": ["--model", "bn-res"],
        "target": 0.92,
    },
}


def train_command(name: str, grad: str, seed: int, epochs: int | None) -> list[str]:
    """The ``jaxbp train`` arguments of one run (without ``--out``)."""
    network = NETWORKS[name]
    args = ["train", "--dataset", network["dataset"], *network["flags"], "--grad", grad]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    if seed != 0:
        args += ["--seed", str(seed)]
    return args


def plan_runs(names, grads, seeds, epochs: int | None) -> list[_runs.PlannedRun]:
    """Seed by seed, so that a sitting cut short has both gradients of every network
    for the first seeds."""
    return [
        _runs.PlannedRun(name, grad, seed, train_command(name, grad, seed, epochs))
        for seed in seeds
        for name in names
        for grad in grads
    ]


def run_record(run: _runs.PlannedRun, metrics: dict, wall_s: float) -> dict:
    """One run's record: its command, accuracy per epoch, times and machine."""
    accuracy = metrics["final_test_accuracy"]
    target = NETWORKS[run.network]["target"]
    return {
        "network": run.network,
        "grad": run.grad,
        "seed": run.seed,
        "command": run.command,
        "config": metrics["config"],
        "num_params": metrics["num_params"],
        "final_test_accuracy": accuracy,
        "test_accuracy_per_epoch": [h["test_accuracy"] for h in metrics["history"]],
        "epoch_time_s": [h["epoch_time_s"] for h in metrics["history"]],
        "train_time_s": metrics["timing"]["train_time_s"],
        "wall_s": wall_s,
        "target": target,
        "met": accuracy >= target,
        "environment": _common.environment(),
    }


def print_table(runs: list[dict]) -> None:
    """One line per run: its accuracy against the target."""
    print(f"\n{'network':<8} {'grad':<9} {'seed':<5} {'test accuracy':<14} target")
    for r in runs:
        print(
            f"{r['network']:<8} {r['grad']:<9} {r['seed']:<5} "
            f"{r['final_test_accuracy']:<14.4f} >= {r['target']}: "
            f"{'met' if r['met'] else 'NOT MET'}"
        )


def parse_args(argv=None):
    """The flags, checked; adds ``seeds``, ``names`` and ``grads`` as lists."""
    parser = _common.make_parser(__doc__)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds")
    parser.add_argument(
        "--grads",
        default=",".join(GRADS),
        help="comma-separated gradients among manual, autodiff (default both)",
    )
    parser.add_argument(
        "--networks",
        default=",".join(NETWORKS),
        help=f"comma-separated networks among {', '.join(NETWORKS)}",
    )
    args = parser.parse_args(argv)
    args.seeds = _runs.parse_seeds(parser, args.seeds, quick=args.quick)
    args.names = ["lenet"] if args.quick else args.networks.split(",")
    unknown = [n for n in args.names if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network {unknown[0]!r}; known: {', '.join(NETWORKS)}")
    if any(g not in GRADS for g in args.grads.split(",")):
        parser.error(f"--grads must be among {', '.join(GRADS)}, got {args.grads!r}")
    args.grads = args.grads.split(",")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    epochs = 1 if args.quick else None
    path = args.out / f"layer_accuracy_{'_'.join(args.names)}.json"
    result = _runs.train_into_file(
        path,
        plan_runs(args.names, args.grads, args.seeds, epochs),
        run_record,
        command=_common.command_line(__file__, argv),
        header={"quick": args.quick, "data_dir": os.environ.get("JAXBP_DATA_DIR")},
        wanted={(n, g, s) for n in args.names for g in GRADS for s in (0, 1, 2)},
    )
    print_table(result["runs"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
