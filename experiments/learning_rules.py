"""Learning rules beyond backprop on MNIST: accuracy, and alignment with jax.grad.

Trains, through ``python -m jaxbp train --dataset mnist`` as a user would, each
network with backprop (``--grad manual``) and the learning rules of
:mod:`jaxbp.feedback`, from seeds 0, 1 and 2, and reads each run's ``metrics.json``:

* 784-1000-10 sigmoid (the network of Lillicrap et al. 2016): backprop and feedback
  alignment. Target: FA's mean test accuracy within 0.6 points of backprop's, and
  the hidden layer's update angle to the true gradient starting near 90 degrees and
  falling well below it within the first epoch.
* 784-800-800-10 tanh (a network of Nøkland 2016): backprop, feedback alignment,
  direct feedback alignment and sign symmetry. Target: FA and DFA each >= 97.5 %
  test accuracy; sign symmetry: reported.

Settings, the same for every rule and backprop (so that only the backward matrix
differs): softmax cross-entropy, Adam with peak learning rate 1e-3 and cosine decay
to zero, batch 64, float32, Glorot-uniform forward weights and zero biases, feedback
matrices Glorot-uniform of their own shape (``jaxbp.feedback.init_feedback``) drawn
from the seed, so that a rule starts from exactly backprop's parameters and sees the
same batches. 20 epochs for the 784-1000-10 network, 8 for 784-800-800-10: the full
run has to fit in about an hour of a 2-core CPU (an epoch takes about 7 s and 14 s
there, plus about 20 s per run to start, load MNIST, compile and evaluate). A first
run of 6 and 5 epochs left the sigmoid network far from converged (backprop's
training loss 0.097) and feedback alignment 0.71 points behind it.
The papers' own optimizers and much longer training were not reproduced (Lillicrap et
al. used plain SGD). Adam at 1e-3 was chosen from one-epoch runs on the 800-800
network: FA reached 94.8 % test accuracy with it, 91.9 % with Adam at 3e-4 and 91.2 %
with SGD at 0.1 (DFA: 94.5 %, 92.0 %, 91.3 %); one optimizer for every rule and
backprop keeps the comparison fair. Every rule run measures the alignment every 50
steps (``--align-every 50``, inside the epoch, counted in its time) and after every
epoch.

``--quick`` is a smoke test of the pipeline, not of the result: each network with its
hidden layers a tenth as wide (784-100-10, 784-80-80-10), each rule, one epoch, seed
0 (about a minute); it writes under ``experiments/results/quick/`` (never over the
published results).

Writes ``learning_rules.json`` and ``learning_rules.png``.

Example:
  JAXBP_DATA_DIR=../shared/data python experiments/learning_rules.py
"""

import functools
import os
import pathlib

import _common
import _runs

BP = "manual"
FA, DFA, SS = "feedback-alignment", "direct-feedback-alignment", "sign-symmetry"
ALIGN_EVERY = 50
COMMON_FLAGS = ["--optimizer", "adam", "--lr", "1e-3", "--batch-size", "64"]

#: name: the network's flags, its rules, epochs, and the accuracy target of FA/DFA.
NETWORKS = {
    "784-1000-10 sigmoid": {
        "flags": ["--hidden", "1000", "--activation", "sigmoid"],
        "quick_hidden": "100",
        "grads": (BP, FA),
        "epochs": 20,
    },
    "784-800-800-10 tanh": {
        "flags": ["--hidden", "800,800", "--activation", "tanh"],
        "quick_hidden": "80,80",
        "grads": (BP, FA, DFA, SS),
        "epochs": 8,
        "target": 0.975,
    },
}


def train_command(
    network: dict, grad: str, seed: int, epochs: int, *, quick: bool = False
) -> list[str]:
    """The ``jaxbp train`` arguments of one run (without ``--out``)."""
    flags = list(network["flags"])
    if quick:
        flags[flags.index("--hidden") + 1] = network["quick_hidden"]
    args = ["train", "--dataset", "mnist", *flags, "--grad", grad]
    args += [*COMMON_FLAGS, "--epochs", str(epochs), "--seed", str(seed)]
    if grad != BP:
        args += ["--align-every", str(ALIGN_EVERY)]
    return args


def plan_runs(seeds: list[int], *, quick: bool) -> list[_runs.PlannedRun]:
    """Every network, seed and rule (backprop first), in that order."""
    return [
        _runs.PlannedRun(
            name,
            grad,
            seed,
            train_command(
                network, grad, seed, 1 if quick else network["epochs"], quick=quick
            ),
        )
        for name, network in NETWORKS.items()
        for seed in seeds
        for grad in network["grads"]
    ]


def run_record(
    run: _runs.PlannedRun, metrics: dict, wall_s: float, *, quick: bool
) -> dict:
    """One run's record: accuracy and loss per epoch, times, and the alignment."""
    history = metrics["history"]
    return {
        "network": run.network,
        "grad": run.grad,
        "seed": run.seed,
        "quick": quick,
        "command": run.command,
        "config": metrics["config"],
        "num_params": metrics["num_params"],
        "final_test_accuracy": metrics["final_test_accuracy"],
        "test_accuracy_per_epoch": [h["test_accuracy"] for h in history],
        "train_loss_per_epoch": [h["train_loss"] for h in history],
        "epoch_times_s": metrics["timing"]["epoch_times_s"],
        "median_epoch_s": metrics["timing"]["median_epoch_s"],
        "alignment_per_epoch": [h.get("alignment") for h in history],
        "alignment_steps": [s for h in history for s in h.get("alignment_steps", [])],
        "wall_s": wall_s,
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(runs: list[dict]) -> list[dict]:
    """One row per network and rule: accuracy over the seeds, angles, targets."""
    rows = []
    for name, network in NETWORKS.items():
        bp = [
            r["final_test_accuracy"]
            for r in runs
            if r["network"] == name and r["grad"] == BP
        ]
        for grad in network["grads"]:
            mine = [r for r in runs if r["network"] == name and r["grad"] == grad]
            if not mine:
                continue
            accs = [r["final_test_accuracy"] for r in mine]
            row = {
                "network": name,
                "grad": grad,
                "seeds": [r["seed"] for r in mine],
                "epochs": network["epochs"] if not mine[0]["quick"] else 1,
                "test_accuracy_by_seed": accs,
                "mean": _mean(accs),
                "min": min(accs),
                "max": max(accs),
                "median_epoch_s": _mean([r["median_epoch_s"] for r in mine]),
            }
            if grad != BP:
                hidden = len(mine[0]["alignment_per_epoch"][0]["update_angle"]) - 1
                row["update_angle_first_step"] = [
                    _mean([r["alignment_steps"][0]["update_angle"][l] for r in mine])
                    for l in range(hidden)
                ]
                row["update_angle_after_epoch_1"] = [
                    _mean(
                        [r["alignment_per_epoch"][0]["update_angle"][l] for r in mine]
                    )  # fmt: skip
                    for l in range(hidden)
                ]
                row["update_angle_final"] = [
                    _mean(
                        [r["alignment_per_epoch"][-1]["update_angle"][l] for r in mine]
                    )  # fmt: skip
                    for l in range(hidden)
                ]
                row["delta_angle_final"] = [
                    _mean(
                        [r["alignment_per_epoch"][-1]["delta_angle"][l] for r in mine]
                    )  # fmt: skip
                    for l in range(hidden)
                ]
                if bp:
                    row["points_below_backprop"] = 100 * (_mean(bp) - row["mean"])
                if grad == FA and "target" not in network:
                    row["target"] = "within 0.6 points of backprop"
                    row["met"] = bp != [] and row["points_below_backprop"] <= 0.6
                elif grad in (FA, DFA) and "target" in network:
                    row["target"] = f">= {network['target']}"
                    row["met"] = row["min"] >= network["target"]
            rows.append(row)
    return rows


def plot(runs: list[dict], path: pathlib.Path) -> None:
    """Hidden layers' update angles over the steps, and test accuracy per epoch."""
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = {FA: "C0", DFA: "C1", SS: "C2", BP: "k"}
    for ax, name in zip(axes[:2], NETWORKS, strict=True):
        for r in runs:
            if r["network"] != name or r["grad"] == BP:
                continue
            steps = [s["step"] for s in r["alignment_steps"]]
            hidden = len(r["alignment_steps"][0]["update_angle"]) - 1
            for l in range(hidden):
                angles = [s["update_angle"][l] for s in r["alignment_steps"]]
                label = f"{r['grad']} layer {l + 1}" if r["seed"] == r0(runs) else None
                style = "-" if l == 0 else "--"
                ax.plot(steps, angles, style, color=colors[r["grad"]], alpha=0.6,
                        lw=1, label=label)  # fmt: skip
        ax.axhline(90, color="0.6", lw=0.8, ls=":")
        ax.set(title=f"{name}: hidden update angle to jax.grad", xlabel="step",
               ylabel="degrees", ylim=(0, 100))  # fmt: skip
        ax.legend(fontsize=7)
    ax = axes[2]
    for r in runs:
        style = "-" if r["network"].startswith("784-800") else ":"
        label = f"{r['network'].split()[0]} {r['grad']}"
        label = label if r["seed"] == r0(runs) else None
        epochs = range(1, len(r["test_accuracy_per_epoch"]) + 1)
        ax.plot(epochs, r["test_accuracy_per_epoch"], style, marker="o", ms=3,
                color=colors[r["grad"]], label=label)  # fmt: skip
    ax.set(title="test accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0.9, 1.0))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def r0(runs):
    """The first seed run (its lines are the ones labelled)."""
    return min(r["seed"] for r in runs)


def print_summary(summary: list[dict], *, quick: bool) -> None:
    """One line per network and rule: accuracy by seed, angles, target."""
    print(f"\n{'network':<21} {'grad':<26} {'test accuracy by seed':<26} angles")
    for row in summary:
        accs = ", ".join(f"{a:.4f}" for a in row["test_accuracy_by_seed"])
        note = ""
        if "update_angle_final" in row:
            first = "/".join(f"{a:.0f}" for a in row["update_angle_first_step"])
            one = "/".join(f"{a:.0f}" for a in row["update_angle_after_epoch_1"])
            last = "/".join(f"{a:.0f}" for a in row["update_angle_final"])
            note = f"dW angle {first} -> {one} (epoch 1) -> {last} deg"
        if "met" in row:
            note += f"; {row['target']}: {'met' if row['met'] else 'NOT MET'}"
        print(f"{row['network']:<21} {row['grad']:<26} {accs:<26} {note}")
    if quick:
        print("(--quick: a tenth of the widths, one epoch each: not the result)")


def settings(*, quick: bool) -> dict:
    """What every run shares: the flags, the alignment interval, the epochs."""
    return {
        "common_flags": COMMON_FLAGS,
        "align_every": ALIGN_EVERY,
        "epochs": {n: 1 if quick else v["epochs"] for n, v in NETWORKS.items()},
        "feedback_init": "Glorot uniform of each matrix's own shape",
    }


def write(out: pathlib.Path, record: dict) -> None:
    """``learning_rules.json``, and ``learning_rules.png`` where matplotlib is."""
    path = _common.write_json(out / "learning_rules.json", record)
    try:
        plot(record["runs"], out / "learning_rules.png")
        print(f"wrote {path}, {out / 'learning_rules.png'}")
    except ImportError:
        print(f"wrote {path} (no matplotlib: no plot)")


def parse_args(argv=None):
    """The flags, checked; ``seeds`` becomes a list."""
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds (default 0,1,2; 0 with --quick)",
    )
    args = parser.parse_args(argv)
    args.seeds = _runs.parse_seeds(parser, args.seeds, quick=args.quick)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    environment = _common.environment()
    runs = _runs.train_runs(
        plan_runs(args.seeds, quick=args.quick),
        functools.partial(run_record, quick=args.quick),
    )
    summary = summarize(runs)
    print_summary(summary, quick=args.quick)
    record = {
        "command": _common.command_line(__file__, argv),
        "quick": args.quick,
        "data_dir": os.environ.get("JAXBP_DATA_DIR"),
        "settings": settings(quick=args.quick),
        "environment": environment,
        "summary": summary,
        "runs": runs,
    }
    write(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
