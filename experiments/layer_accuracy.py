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

import json
import os
import pathlib
import shlex
import tempfile
import time

import _common
from mnist_accuracy import GRADS, run_cli

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


def run_one(name: str, grad: str, seed: int, epochs: int | None, out) -> dict:
    """Trains one network with one gradient and seed; returns its record."""
    cli_args = train_command(name, grad, seed, epochs)
    print(f"\n$ jaxbp {shlex.join(cli_args)}", flush=True)
    t0 = time.perf_counter()
    metrics = run_cli(cli_args, out)
    accuracy = metrics["final_test_accuracy"]
    return {
        "network": name,
        "grad": grad,
        "seed": seed,
        "command": f"jaxbp {shlex.join(cli_args)}",
        "config": metrics["config"],
        "num_params": metrics["num_params"],
        "final_test_accuracy": accuracy,
        "test_accuracy_per_epoch": [h["test_accuracy"] for h in metrics["history"]],
        "epoch_time_s": [h["epoch_time_s"] for h in metrics["history"]],
        "train_time_s": metrics["timing"]["train_time_s"],
        "wall_s": time.perf_counter() - t0,
        "target": NETWORKS[name]["target"],
        "met": accuracy >= NETWORKS[name]["target"],
    }


def _key(run: dict) -> tuple:
    return run["network"], run["grad"], run["seed"]


def main(argv=None) -> int:
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
    seeds_text = args.seeds or ("0" if args.quick else "0,1,2")
    try:
        seeds = [int(s) for s in seeds_text.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {seeds_text!r}")
    names = ["lenet"] if args.quick else args.networks.split(",")
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network {unknown[0]!r}; known: {', '.join(NETWORKS)}")
    grads = args.grads.split(",")
    if any(g not in GRADS for g in grads):
        parser.error(f"--grads must be among {', '.join(GRADS)}, got {args.grads!r}")
    epochs = 1 if args.quick else None
    path = args.out / f"layer_accuracy_{'_'.join(names)}.json"
    earlier = json.loads(path.read_text())["runs"] if path.is_file() else []
    record = {
        "commands": [],
        "quick": args.quick,
        "data_dir": os.environ.get("JAXBP_DATA_DIR"),
        "complete": False,
        "runs": [],
    }
    if path.is_file():
        record["commands"] = json.loads(path.read_text()).get("commands", [])
    record["commands"].append(_common.command_line(__file__, argv))
    planned = {(n, g, s) for s in seeds for n in names for g in grads}
    runs = record["runs"]
    runs += [r for r in earlier if _key(r) not in planned]
    with tempfile.TemporaryDirectory(prefix="layer_accuracy-") as tmp:
        # Seed by seed, so that a run cut short has both gradients of every network
        # for the first seeds; the record is rewritten after every run.
        for seed in seeds:
            for name in names:
                for grad in grads:
                    out = pathlib.Path(tmp) / f"{len(runs)}"
                    run = run_one(name, grad, seed, epochs, out)
                    run["environment"] = _common.environment()
                    runs.append(run)
                    runs.sort(key=_key)
                    record["complete"] = {
                        (n, g, s) for n in names for g in GRADS for s in (0, 1, 2)
                    } <= {_key(r) for r in runs}
                    _common.write_json(path, record)
    print(f"\n{'network':<8} {'grad':<9} {'seed':<5} {'test accuracy':<14} target")
    for r in runs:
        print(
            f"{r['network']:<8} {r['grad']:<9} {r['seed']:<5} "
            f"{r['final_test_accuracy']:<14.4f} >= {r['target']}: "
            f"{'met' if r['met'] else 'NOT MET'}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
