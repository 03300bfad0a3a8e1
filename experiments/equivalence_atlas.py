"""Equivalence atlas: manual vs autodiff gradients for every activation, loss and depth.

For each hidden activation, each loss and depth 1-4 (8-16-...-16-4 networks: depth 1
is 8-4, depth 4 is 8-16-16-16-4), at a few batch sizes with fixed seeds, runs
jaxbp.check_network_grad twice: in float32 (manual vs jax.grad in float32, finite
differences in float32) and in float64 (all in float64), at the same parameters and
batch, every coordinate. Records the max relative error (|a - b| / max(|a|, |b|, tiny),
max over leaves) of manual vs autodiff, and of manual and autodiff vs central finite
differences, with pass/fail: manual vs autodiff at the library's dtype-aware
tolerances, against finite differences at each coordinate's error budget (rounding +
truncation), with coordinates where the loss is not smooth (ReLU corners) counted as
kinks and passed when the gradient lies inside the one-sided quotients' bracket.

The output activation is the hidden activation for half_sse and mse (so that depth 1
tests the activation too) and identity for softmax_cross_entropy, which takes logits
(so its depth-1 row is the same network for every activation).

Writes equivalence_atlas.csv (one row per activation, loss, depth, batch size),
equivalence_atlas.json (the same plus a summary) and equivalence_atlas.png (heat maps
of log10 max relative error, worst over batch sizes).

Example:
  python experiments/equivalence_atlas.py
"""

import itertools
import sys
import time

import _common
import jax
import numpy as np

import jaxbp
from jaxbp.finite_differences import machine_eps
from jaxbp.gradcheck.check import FD_SAFETY
from jaxbp.gradcheck.report import GRAD_RTOL

#: float32's default finite-difference step for a parameter of scale 1.
H32 = machine_eps("float32") ** (1 / 3)

LOSSES = ("half_sse", "mse", "softmax_cross_entropy")
DEPTHS = (1, 2, 3, 4)
BATCHES = (1, 16)
QUICK_ACTIVATIONS = ("tanh",)
QUICK_DEPTHS = (2,)
QUICK_BATCHES = (4,)
WIDTH_IN, WIDTH_HIDDEN, WIDTH_OUT = 8, 16, 4


def network(activation: str, loss: str, depth: int) -> jaxbp.MLP:
    sizes = (WIDTH_IN, *([WIDTH_HIDDEN] * (depth - 1)), WIDTH_OUT)
    output = "identity" if loss == "softmax_cross_entropy" else activation
    return jaxbp.MLP(
        sizes, activation=activation, output_activation=output, objective=loss
    )


def case_inputs(activation: str, loss: str, depth: int, batch: int, seed: int):
    """The network, parameters and batch of one case (fixed by ``seed``)."""
    net = network(activation, loss, depth)
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = net.init(kp)
    x = jax.random.normal(kx, (batch, WIDTH_IN))
    if loss == "softmax_cross_entropy":
        y = jax.random.randint(ky, (batch,), 0, WIDTH_OUT)
    else:
        y = jax.random.uniform(ky, (batch, WIDTH_OUT))
    return net, params, x, y


def one_case(activation: str, loss: str, depth: int, batch: int, seed: int) -> dict:
    """Both gradchecks (float32 and float64) for one network and batch."""
    net, params, x, y = case_inputs(activation, loss, depth, batch, seed)
    row = {
        "activation": activation,
        "loss": loss,
        "depth": depth,
        "batch": batch,
        "seed": seed,
        "network": str(net),
        "num_params": net.num_params,
    }
    for dtype in ("float32", "float64"):
        report = jaxbp.check_network_grad(
            net, params, x, y, dtype=dtype, fd_dtype=dtype
        )
        manual_auto, manual_fd, auto_fd = report.comparisons
        for name, comp in (
            ("manual_vs_autodiff", manual_auto),
            ("manual_vs_fd", manual_fd),
            ("autodiff_vs_fd", auto_fd),
        ):
            row[f"{name}_{dtype}_max_rel"] = comp.max_rel
            row[f"{name}_{dtype}_max_abs"] = max(leaf.max_abs for leaf in comp.leaves)
            row[f"{name}_{dtype}_passed"] = comp.passed
            row[f"{name}_{dtype}_kinks"] = comp.kinks
    return row


def diagnose_fd32(row: dict) -> dict:
    """Why float32 finite differences failed on one case: the step or the rounding.

    Re-checks the same network and batch (a) in float64 with float32's step (for a
    parameter of scale 1), and (b) in float32 with a 10x smaller step. A failure in
    (a) means the step itself is the problem, not float32 rounding; a pass in (b)
    confirms it.
    """
    net, params, x, y = case_inputs(
        row["activation"], row["loss"], row["depth"], row["batch"], row["seed"]
    )
    h32 = H32
    out = {}
    for label, dtype, step in (
        ("float64_at_float32_step", "float64", h32),
        ("float32_at_step_over_10", "float32", h32 / 10),
    ):
        report = jaxbp.check_network_grad(
            net, params, x, y, dtype=dtype, fd_dtype=dtype, fd_step=step
        )
        out[label] = {
            "step": step,
            "manual_vs_fd_max_rel": report.comparisons[1].max_rel,
            "passed": report.comparisons[1].passed and report.comparisons[2].passed,
        }
    return out


def worst(rows, key):
    """Max over batch sizes of ``key``, per (activation, loss, depth)."""
    out = {}
    for r in rows:
        cell = (r["activation"], r["loss"], r["depth"])
        value = r[key]
        if value is None or np.isnan(value):
            value = np.inf
        out[cell] = max(out.get(cell, -np.inf), value)
    return out


def plot(path, rows, activations, losses, depths):
    plt = _common.pyplot()
    columns = [(loss, d) for loss in losses for d in depths]
    panels = [
        ("manual_vs_autodiff", "float32", "manual vs jax.grad"),
        ("manual_vs_autodiff", "float64", "manual vs jax.grad"),
        ("manual_vs_fd", "float32", "manual vs finite differences"),
        ("manual_vs_fd", "float64", "manual vs finite differences"),
    ]
    short = {"half_sse": "sse", "mse": "mse", "softmax_cross_entropy": "xent"}
    fig, axes = plt.subplots(
        2, 2, figsize=(max(10, 1.0 * len(columns) + 4), 2.2 + 0.9 * len(activations))
    )
    floor = -18
    for ax, (kind, dtype, title) in zip(axes.ravel(), panels, strict=True):
        values = worst(rows, f"{kind}_{dtype}_max_rel")
        fails = worst(
            [r | {"_fail": 0.0 if r[f"{kind}_{dtype}_passed"] else 1.0} for r in rows],
            "_fail",
        )
        grid = np.array(
            [[values[(a, loss, d)] for loss, d in columns] for a in activations]
        )
        with np.errstate(divide="ignore"):
            logs = np.log10(np.where(grid > 0, grid, 10.0**floor))
        logs = np.clip(logs, floor, 1)
        image = ax.imshow(logs, cmap="viridis", vmin=floor, vmax=0, aspect="auto")
        tol = (
            f"tol {GRAD_RTOL[dtype]:g}"
            if kind == "manual_vs_autodiff"
            else f"budget x{FD_SAFETY:g}"
        )
        for i, a in enumerate(activations):
            for j, (loss, d) in enumerate(columns):
                v = grid[i, j]
                text = (
                    "0" if v == 0 else f"{np.log10(v):.0f}" if np.isfinite(v) else "nan"
                )
                failed = fails[(a, loss, d)] > 0
                ax.text(
                    j,
                    i,
                    text + ("✗" if failed else ""),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="red"
                    if failed
                    else ("black" if logs[i, j] > -6 else "white"),
                    fontweight="bold" if failed else "normal",
                )
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([f"{short[loss]}\nd{d}" for loss, d in columns], fontsize=7)
        ax.set_yticks(range(len(activations)))
        ax.set_yticklabels(activations, fontsize=8)
        ax.set_title(f"{title}, {dtype} ({tol})", fontsize=9)
        fig.colorbar(image, ax=ax, label="log10 max rel err")
    fig.suptitle(
        "max relative error, worst over batch sizes "
        "(cell text: log10; ✗ = fails the library tolerance)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    """The flags; adds the ``activations``, ``depths`` and ``batches`` to run."""
    parser = _common.make_parser(__doc__)
    args = parser.parse_args(argv)
    if args.quick:
        args.activations, args.depths = QUICK_ACTIVATIONS, QUICK_DEPTHS
        args.batches = QUICK_BATCHES
    else:
        args.activations, args.depths = tuple(jaxbp.ACTIVATIONS), DEPTHS
        args.batches = BATCHES
    return args


def print_plan(args, cases: list) -> None:
    """What will run, and the tolerances it is held to."""
    print(
        f"equivalence atlas: {len(args.activations)} activations x {len(LOSSES)} "
        f"losses x depths {list(args.depths)} x batch sizes {list(args.batches)} = "
        f"{len(cases)} cases, each checked in float32 and float64"
    )
    print(
        f"tolerances: manual vs jax.grad {GRAD_RTOL['float32']:g} (float32), "
        f"{GRAD_RTOL['float64']:g} (float64); vs finite differences each "
        f"coordinate's error budget (x{FD_SAFETY:g} on rounding), kinks accepted "
        "inside the one-sided bracket"
    )


def measure(cases: list) -> tuple[list[dict], float]:
    """:func:`one_case` for every case, with a fixed seed each; rows and seconds."""
    t0 = time.perf_counter()
    rows = []
    for i, (act, loss, depth, batch) in enumerate(cases):
        seed = 1000 * depth + 10 * batch + i % 7
        rows.append(one_case(act, loss, depth, batch, seed))
        if (i + 1) % 12 == 0:
            print(
                f"  {i + 1}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    return rows, time.perf_counter() - t0


def summarize_autodiff(rows: list[dict], activations, depths) -> dict:
    """Prints, per dtype, the worst manual-vs-autodiff error per activation x (loss,
    depth); returns ``{"manual_vs_autodiff_DTYPE": {max, median, failures}}``."""
    columns = [(loss, d) for loss in LOSSES for d in depths]
    short = {"half_sse": "sse", "mse": "mse", "softmax_cross_entropy": "xent"}
    summary = {}
    for dtype in ("float32", "float64"):
        key = f"manual_vs_autodiff_{dtype}_max_rel"
        values = worst(rows, key)
        print(
            f"\nmanual vs jax.grad, {dtype}: max relative error (worst over batch "
            f"sizes), tolerance {GRAD_RTOL[dtype]:g}"
        )
        print(f"{'':>11}" + "".join(f"{short[lo] + str(d):>9}" for lo, d in columns))
        for a in activations:
            print(
                f"{a:>11}" + "".join(f"{values[(a, lo, d)]:9.1e}" for lo, d in columns)
            )
        fails = [r for r in rows if not r[f"manual_vs_autodiff_{dtype}_passed"]]
        summary[f"manual_vs_autodiff_{dtype}"] = {
            "max_rel": max(values.values()),
            "median_rel": float(np.median([r[key] for r in rows])),
            "failures": len(fails),
            "cases": len(rows),
        }
        print(
            f"worst {max(values.values()):.2e}, median "
            f"{summary[f'manual_vs_autodiff_{dtype}']['median_rel']:.2e}; "
            f"{len(fails)} of {len(rows)} cases fail the tolerance"
        )
    return summary


def _fd_pass(row: dict, dtype: str) -> bool:
    """Manual and autodiff both agree with finite differences in ``dtype``."""
    return row[f"manual_vs_fd_{dtype}_passed"] and row[f"autodiff_vs_fd_{dtype}_passed"]


def diagnose_fd32_failures(f32_fail: list[dict]) -> list[dict]:
    """:func:`diagnose_fd32` for every float32 finite-difference failure, printed."""
    diagnoses = []
    if f32_fail:
        print(
            "  each float32 failure re-checked in float64 at float32's step "
            f"h={H32:.2g}, and in float32 at h={H32 / 10:.2g}:"
        )
    for r in f32_fail:
        d = diagnose_fd32(r)
        a, b = d["float64_at_float32_step"], d["float32_at_step_over_10"]
        step_is_cause = not a["passed"] and b["passed"]
        diagnoses.append(
            {k: r[k] for k in ("network", "batch", "seed")}
            | {
                "float32_manual_vs_fd_max_rel": r["manual_vs_fd_float32_max_rel"],
                "step_is_the_cause": step_is_cause,
            }
            | d
        )
        print(
            f"    {r['network']} batch {r['batch']}: float32 "
            f"{r['manual_vs_fd_float32_max_rel']:.1e}; float64 at h="
            f"{a['step']:g} {a['manual_vs_fd_max_rel']:.1e} "
            f"({'PASS' if a['passed'] else 'FAIL'}); float32 at h={b['step']:g} "
            f"{b['manual_vs_fd_max_rel']:.1e} ({'PASS' if b['passed'] else 'FAIL'})"
        )
    if diagnoses:
        n_step = sum(d["step_is_the_cause"] for d in diagnoses)
        print(
            f"  -> {n_step} of {len(diagnoses)} float32 failures are the step, not "
            "float32 rounding: float64 fails too at that step, float32 passes at a "
            "10x smaller one"
        )
    return diagnoses


def summarize_fd(rows: list[dict], activations, depths) -> dict:
    """Finite differences in float32 against float64: failures, kinks, and why
    float32 fails (re-checked); printed, and returned as the summary's entry."""
    f32_fail_f64_pass = [
        r for r in rows if not _fd_pass(r, "float32") and _fd_pass(r, "float64")
    ]
    f64_fail = [r for r in rows if not _fd_pass(r, "float64")]
    f32_fail = [r for r in rows if not _fd_pass(r, "float32")]
    by_loss = {
        loss: sum(1 for r in f32_fail_f64_pass if r["loss"] == loss) for loss in LOSSES
    }
    by_act = {
        a: sum(1 for r in f32_fail_f64_pass if r["activation"] == a)
        for a in activations
    }
    by_depth = {d: sum(1 for r in f32_fail_f64_pass if r["depth"] == d) for d in depths}
    fd32 = [r["manual_vs_fd_float32_max_rel"] for r in rows]
    fd64 = [r["manual_vs_fd_float64_max_rel"] for r in rows]
    print("\nfinite differences (central), manual and jax.grad both compared:")
    print(
        f"  float32: {len(f32_fail)} of {len(rows)} cases fail (max rel err median "
        f"{np.nanmedian(fd32):.1e}, worst {np.nanmax(fd32):.1e})"
    )
    print(
        f"  float64: {len(f64_fail)} of {len(rows)} cases fail (max rel err median "
        f"{np.nanmedian(fd64):.1e}, worst {np.nanmax(fd64):.1e})"
    )
    print(f"  float32 fails while float64 passes: {len(f32_fail_f64_pass)} cases")
    kinks = {
        dtype: [r for r in rows if r[f"manual_vs_fd_{dtype}_kinks"]]
        for dtype in ("float32", "float64")
    }
    for dtype, kink_rows in kinks.items():
        entries = sum(r[f"manual_vs_fd_{dtype}_kinks"] for r in kink_rows)
        acts = sorted({r["activation"] for r in kink_rows})
        print(
            f"  {dtype}: {len(kink_rows)} cases have kinks ({entries} entries accepted "
            f"as subgradients; activations {acts})"
        )
    print(f"    by loss:       {by_loss}")
    print(f"    by activation: {by_act}")
    print(f"    by depth:      {by_depth}")
    diagnoses = diagnose_fd32_failures(f32_fail)
    for r in f64_fail:
        print(
            f"  float64 FD failure: {r['network']} batch {r['batch']} "
            f"seed {r['seed']}: "
            f"manual vs FD {r['manual_vs_fd_float64_max_rel']:.2e}, "
            f"jax.grad vs FD {r['autodiff_vs_fd_float64_max_rel']:.2e}"
        )
    return {
        "float32_failures": len(f32_fail),
        "float64_failures": len(f64_fail),
        "float32_fail_float64_pass": len(f32_fail_f64_pass),
        "float32_fail_float64_pass_by_loss": by_loss,
        "float32_fail_float64_pass_by_activation": by_act,
        "float32_fail_float64_pass_by_depth": by_depth,
        "float32_median_max_rel": float(np.nanmedian(fd32)),
        "float64_median_max_rel": float(np.nanmedian(fd64)),
        "float32_worst_max_rel": float(np.nanmax(fd32)),
        "float64_worst_max_rel": float(np.nanmax(fd64)),
        "float32_failure_diagnoses": diagnoses,
        "kink_cases": {d: len(c) for d, c in kinks.items()},
        "kink_entries": {
            d: sum(r[f"manual_vs_fd_{d}_kinks"] for r in c) for d, c in kinks.items()
        },
        "kink_activations": {
            d: sorted({r["activation"] for r in c}) for d, c in kinks.items()
        },
        "float64_failure_cases": [
            {k: r[k] for k in ("network", "batch", "seed")} for r in f64_fail
        ],
        "cases": len(rows),
    }


def write(args, rows: list[dict], summary: dict, elapsed: float) -> None:
    """equivalence_atlas.csv, .json and .png."""
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = _common.write_csv(args.out / "equivalence_atlas.csv", rows)
    json_path = _common.write_json(
        args.out / "equivalence_atlas.json",
        {
            "quick": args.quick,
            "activations": args.activations,
            "losses": LOSSES,
            "depths": args.depths,
            "batches": args.batches,
            "widths": {"in": WIDTH_IN, "hidden": WIDTH_HIDDEN, "out": WIDTH_OUT},
            "tolerances": {
                "grad_rtol": GRAD_RTOL,
                "fd_safety": FD_SAFETY,
                "fd_step": "eps^(1/3) max(|p_i|, rms(leaf)) per coordinate",
            },
            "summary": summary,
            "rows": rows,
            "elapsed_s": elapsed,
            "environment": _common.environment(),
        },
    )
    png_path = args.out / "equivalence_atlas.png"
    plot(png_path, rows, args.activations, LOSSES, args.depths)
    print(f"wrote {csv_path}, {json_path}, {png_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = list(itertools.product(args.activations, LOSSES, args.depths, args.batches))
    print_plan(args, cases)
    rows, elapsed = measure(cases)
    summary = summarize_autodiff(rows, args.activations, args.depths)
    summary["finite_differences"] = summarize_fd(rows, args.activations, args.depths)
    print(f"\n{len(cases)} cases in {elapsed:.0f} s")
    write(args, rows, summary, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
