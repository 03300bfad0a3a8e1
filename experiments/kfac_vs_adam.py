"""K-FAC against Adam on MNIST: epochs and seconds to 98 % test accuracy.

Trains 784-512-512-10 ReLU (softmax cross-entropy, batch 64, float32, cosine decay to
zero over the run) through ``python -m jaxbp train --dataset mnist`` as a user would,
with ``--optimizer kfac`` (:func:`jaxbp.curvature.scale_by_kfac`: damping 0.1, the
inverse factors refreshed every 10 steps, then the learning rate) and with
``--optimizer adam``, and reads each run's ``metrics.json``.

1. A learning-rate grid per optimizer (``GRIDS``), seed 0, ``GRID_EPOCHS`` epochs;
   each optimizer keeps the rate with the best final test accuracy (a rate that
   diverges is recorded as failed and left out).
2. Seeds 0, 1 and 2 at the chosen rates, ``EPOCHS`` epochs each.

Per run: the test accuracy after every epoch, the epoch wall-clock times (training
only, as ``jaxbp train`` records them: compilation and evaluation excluded), the
epochs and seconds to 98 % test accuracy (``None`` if never reached) and the final
accuracy; a summary per optimizer, and the curves against epochs and against seconds.
The comparison is reported as it comes out, whichever optimizer wins.

Cost: the full run took 23 minutes on a 2-core AMD EPYC with other jobs keeping
about 1.7 of its cores busy (median epoch 28.8 s with K-FAC, 3.1 s with Adam; at
batch 64 K-FAC's preconditioning alone is 7.7x the gradient's matrix-product FLOPs
every step). Each finished run is written to the result file at once (``"complete":
false`` until the last). ``--quick`` (784-32-32-10, one rate each, one epoch, seed 0)
took 96 s; it is a smoke test of the pipeline, not of the result, and writes under
``experiments/results/quick/`` (never over the published results).

Writes ``kfac_vs_adam.json`` and ``kfac_vs_adam.png``.

Example:
  JAXBP_DATA_DIR=../shared/data python experiments/kfac_vs_adam.py
"""

import os
import pathlib
import shlex
import statistics
import tempfile
import time

import _common
import _runs

TARGET = 0.98
OPTIMIZERS = ("kfac", "adam")
#: The learning rates tried per optimizer (seed 0, GRID_EPOCHS epochs each).
GRIDS = {"kfac": (0.05, 0.2, 0.5), "adam": (1e-3, 2e-3, 4e-3)}
#: The one rate each tries with --quick (the default of jaxbp.optim).
QUICK_GRIDS = {"kfac": (0.2,), "adam": (2e-3,)}
GRID_EPOCHS = 2
EPOCHS = 8
COMMON_FLAGS = ["--dataset", "mnist", "--activation", "relu", "--batch-size", "64"]
HIDDEN, QUICK_HIDDEN = "512,512", "32,32"


def train_command(
    optimizer: str, lr: float, seed: int, epochs: int, *, quick: bool = False
) -> list[str]:
    """The ``jaxbp train`` arguments of one run (without ``--out``)."""
    hidden = QUICK_HIDDEN if quick else HIDDEN
    return [
        "train",
        *COMMON_FLAGS,
        "--hidden",
        hidden,
        "--optimizer",
        optimizer,
        "--lr",
        f"{lr:g}",
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
    ]


def to_target(accuracies: list[float], epoch_times: list[float]):
    """``(epochs, seconds)`` until the test accuracy first reaches :data:`TARGET`,
    or ``(None, None)``."""
    for i, acc in enumerate(accuracies):
        if acc >= TARGET:
            return i + 1, sum(epoch_times[: i + 1])
    return None, None


def one_run(optimizer, lr, seed, epochs, *, quick, phase, folder) -> dict:
    """Trains one run and returns its record; a grid run that fails (diverges) is
    recorded as failed, with no accuracy."""
    cli_args = train_command(optimizer, lr, seed, epochs, quick=quick)
    print(f"\n$ jaxbp {shlex.join(cli_args)}", flush=True)
    t0 = time.perf_counter()
    with _common.OtherLoad() as load:
        m = _runs.train(cli_args, folder, check=phase != "grid")
    record = {
        "phase": phase,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "quick": quick,
        "command": f"jaxbp {shlex.join(cli_args)}",
        "failed": m is None,
        "wall_s": time.perf_counter() - t0,
        "other_load_cores": load.cores,
    }
    if m is None:  # the command's own error line (divergence, say) is in the log
        return {**record, "final_test_accuracy": None}
    accs = [h["test_accuracy"] for h in m["history"]]
    times = m["timing"]["epoch_times_s"]
    epochs_to, seconds_to = to_target(accs, times)
    return {
        **record,
        "config": m["config"],
        "num_params": m["num_params"],
        "test_accuracy_per_epoch": accs,
        "train_loss_per_epoch": [h["train_loss"] for h in m["history"]],
        "epoch_times_s": times,
        "compile_s": m["timing"].get("compile_s"),
        "epochs_to_target": epochs_to,
        "seconds_to_target": seconds_to,
        "final_test_accuracy": m["final_test_accuracy"],
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(runs: list[dict]) -> list[dict]:
    """One row per optimizer over its seed runs."""
    rows = []
    for optimizer in OPTIMIZERS:
        mine = [
            r for r in runs if r["optimizer"] == optimizer and r["phase"] == "seeds"
        ]
        if not mine:
            continue
        accs = [r["final_test_accuracy"] for r in mine]
        rows.append({
            "optimizer": optimizer,
            "lr": mine[0]["lr"],
            "seeds": [r["seed"] for r in mine],
            "final_test_accuracy_by_seed": accs,
            "final_test_accuracy_mean": _mean(accs),
            "epochs_to_target_by_seed": [r["epochs_to_target"] for r in mine],
            "seconds_to_target_by_seed": [r["seconds_to_target"] for r in mine],
            "reached_target": sum(r["epochs_to_target"] is not None for r in mine),
            "epochs_to_target_mean": _mean([r["epochs_to_target"] for r in mine]),
            "seconds_to_target_mean": _mean([r["seconds_to_target"] for r in mine]),
            "median_epoch_s": statistics.median(
                t for r in mine for t in r["epoch_times_s"]
            ),
        })  # fmt: skip
    return rows


def plot(runs: list[dict], path: pathlib.Path) -> None:
    """Test accuracy of the seed runs against epochs and against training seconds."""
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"kfac": "C0", "adam": "C1"}
    for r in runs:
        if r["phase"] != "seeds":
            continue
        accs = r["test_accuracy_per_epoch"]
        seconds, total = [], 0.0
        for t in r["epoch_times_s"]:
            total += t
            seconds.append(total)
        label = f"{r['optimizer']} lr {r['lr']:g}" if r["seed"] == 0 else None
        for ax, xs in zip(axes, (range(1, len(accs) + 1), seconds), strict=True):
            ax.plot(xs, accs, marker="o", ms=3, color=colors[r["optimizer"]],
                    alpha=0.8, label=label)  # fmt: skip
    for ax, xlabel in zip(axes, ("epoch", "training seconds"), strict=True):
        ax.axhline(TARGET, color="0.5", lw=0.8, ls=":")
        ax.set(xlabel=xlabel, ylabel="test accuracy", ylim=(0.95, 1.0))
        ax.legend(fontsize=8)
    axes[0].set_title("784-512-512-10 ReLU, MNIST: test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(summary: list[dict]) -> None:
    print(f"\n{'optimizer':<9} {'lr':>7} {'final accuracy by seed':<26} "
          f"{'epochs to 98%':<14} seconds to 98%")  # fmt: skip
    for row in summary:
        accs = ", ".join(f"{a:.4f}" for a in row["final_test_accuracy_by_seed"])
        eps = ", ".join(str(e) for e in row["epochs_to_target_by_seed"])
        secs = ", ".join(
            "None" if s is None else f"{s:.1f}"
            for s in row["seconds_to_target_by_seed"]
        )
        print(f"{row['optimizer']:<9} {row['lr']:>7g} {accs:<26} {eps:<14} {secs}")


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    args = parser.parse_args(argv)
    grids = QUICK_GRIDS if args.quick else GRIDS
    settings = {
        "common_flags": COMMON_FLAGS,
        "hidden": QUICK_HIDDEN if args.quick else HIDDEN,
        "grids": grids,
        "grid_epochs": 1 if args.quick else GRID_EPOCHS,
        "epochs": 1 if args.quick else EPOCHS,
        "seeds": [0] if args.quick else [0, 1, 2],
        "target": TARGET,
        "chosen_lr": {},
    }
    head = {
        "command": _common.command_line(__file__, argv),
        "quick": args.quick,
        "data_dir": os.environ.get("JAXBP_DATA_DIR"),
        "settings": settings,
        "environment": _common.environment(),
    }
    path = args.out / "kfac_vs_adam.json"
    runs, chosen = [], settings["chosen_lr"]

    def run(optimizer, lr, seed, epochs, phase):
        # every finished run is on disk at once: a stopped sitting keeps its runs
        folder = pathlib.Path(tmp) / str(len(runs))
        runs.append(one_run(optimizer, lr, seed, epochs, quick=args.quick,
                            phase=phase, folder=folder))  # fmt: skip
        _common.write_json(path, {**head, "complete": False, "runs": runs})
        return runs[-1]

    with tempfile.TemporaryDirectory(prefix="kfac_vs_adam-") as tmp:
        for optimizer in OPTIMIZERS:
            grid = grids[optimizer]
            if len(grid) == 1:
                chosen[optimizer] = grid[0]
                continue
            tried = [run(optimizer, lr, 0, settings["grid_epochs"], "grid")
                     for lr in grid]  # fmt: skip
            finished = [r for r in tried if not r["failed"]]
            if not finished:
                raise SystemExit(f"kfac_vs_adam: every {optimizer} rate failed")
            best = max(finished, key=lambda r: r["final_test_accuracy"])
            chosen[optimizer] = best["lr"]
        for seed in settings["seeds"]:
            for optimizer in OPTIMIZERS:
                run(optimizer, chosen[optimizer], seed, settings["epochs"], "seeds")

    summary = summarize(runs)
    print_summary(summary)
    if args.quick:
        print("(--quick: 784-32-32-10, one epoch, one rate: not the result)")
    _common.write_json(
        path, {**head, "complete": True, "summary": summary, "runs": runs}
    )
    try:
        plot(runs, args.out / "kfac_vs_adam.png")
        print(f"wrote {path}, {args.out / 'kfac_vs_adam.png'}")
    except ImportError:
        print(f"wrote {path} (no matplotlib: no plot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
