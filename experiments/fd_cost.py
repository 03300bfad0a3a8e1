"""Why backpropagation: the cost of one gradient by finite differences vs backprop.

Times, for 784-H-10 ReLU networks (softmax cross-entropy) from about 800 to 79,510
parameters on one fixed batch, a jitted forward pass (the loss), the jitted
hand-derived gradient (value_and_manual_grad), the jitted jax.grad gradient
(value_and_grad) and a full gradient by central finite differences
(jaxbp.finite_difference_grad, two forward passes per parameter, wrapped in one
jax.jit so compilation is not timed). Where a full finite-difference gradient is too
slow, a random subset of coordinates is timed and the time scaled linearly to all
parameters; the script checks that linearity on a mid-size network where the full
run is affordable. Fits log-log slopes of time against parameter count, and
extrapolates the cost of one epoch of 60,000 images for 784-100-10.

Timings are medians of interleaved repeats (other processes share the CPU).
Writes fd_cost.json, fd_cost.csv and fd_cost.png.

Example:
  python experiments/fd_cost.py
"""

import sys

import _common
import jax
import jax.numpy as jnp
import numpy as np

import jaxbp

HIDDEN = (1, 2, 5, 10, 25, 50, 100)
HIDDEN_QUICK = (1, 2)
EPOCH_EXAMPLES = 60_000
#: Coordinates evaluated at once by finite_difference_grad (its default is 512): each
#: is a perturbed copy of all parameters, so large chunks of large networks spill out
#: of cache. Both are timed; the faster counts.
FD_CHUNKS = (8, 512)


def fd_jit(net: jaxbp.MLP, chunk: int):
    """``(params, x, y, indices) -> difference quotients``, compiled once."""
    return jax.jit(
        lambda p, x, y, idx: jaxbp.finite_difference_grad(
            lambda q: net.loss(q, x, y), p, indices=idx, chunk=chunk
        )
    )


def _calibrate(fn, target_s: float) -> int:
    """How many calls of ``fn`` (already compiled) take about ``target_s``."""
    import time

    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    once = max(time.perf_counter() - t0, 1e-6)
    return max(1, int(target_s / once))


def measure(hidden: int, *, batch: int, fd_coords: int, repeats: int, key) -> dict:
    """Times forward, manual and autodiff gradients and finite differences for one H."""
    net = jaxbp.MLP(
        (784, hidden, 10),
        activation="relu",
        output_activation="identity",
        objective="softmax_cross_entropy",
    )
    kp, kx, ky, ki = jax.random.split(key, 4)
    params = net.init(kp)
    x = jax.random.uniform(kx, (batch, 784))
    y = jax.random.randint(ky, (batch,), 0, 10)
    num_params = net.num_params

    loss = jax.jit(net.loss)
    manual = jax.jit(net.value_and_manual_grad)
    auto = jax.jit(jax.value_and_grad(net.loss))
    n_fd = min(num_params, fd_coords)
    # Coordinates spread over all layers and leaves (a random sample, sorted).
    idx = jnp.asarray(
        np.sort(np.random.default_rng(hidden).choice(num_params, n_fd, replace=False))
    )
    fns = {
        "forward": lambda: loss(params, x, y),
        "manual": lambda: manual(params, x, y),
        "autodiff": lambda: auto(params, x, y),
    }
    number = _calibrate(fns["forward"], 0.05)
    timed = _common.time_interleaved(fns, repeats=repeats, number=number)
    fd_fns = {chunk: fd_jit(net, chunk) for chunk in FD_CHUNKS}
    fd_all = _common.time_interleaved(
        {chunk: lambda fd=fd: fd(params, x, y, idx) for chunk, fd in fd_fns.items()},
        repeats=max(3, repeats // 3),
        number=1,
    )
    best_chunk = min(FD_CHUNKS, key=lambda c: fd_all[c]["median_s"])
    fd_timed = fd_all[best_chunk]
    fd_per_coord = fd_timed["median_s"] / n_fd
    fwd = timed["forward"]["median_s"]
    return {
        "network": f"784-{hidden}-10",
        "hidden": hidden,
        "num_params": num_params,
        "batch": batch,
        "forward_s": fwd,
        "manual_grad_s": timed["manual"]["median_s"],
        "autodiff_grad_s": timed["autodiff"]["median_s"],
        "fd_coords_timed": n_fd,
        "fd_subset_s": fd_timed["median_s"],
        "fd_chunk": best_chunk,
        "fd_subset_s_by_chunk": {c: fd_all[c]["median_s"] for c in FD_CHUNKS},
        "fd_full_s": fd_per_coord * num_params,
        # The textbook count: exactly two forward passes per parameter.
        "fd_two_forwards_s": 2 * fwd * num_params,
        "fd_extrapolated": n_fd < num_params,
        "fd_per_coord_s": fd_per_coord,
        "fd_per_coord_over_forward": fd_per_coord / fwd,
        "manual_over_forward": timed["manual"]["median_s"] / fwd,
        "autodiff_over_forward": timed["autodiff"]["median_s"] / fwd,
        "calls_per_sample": number,
        "samples": {k: v["samples_s"] for k, v in timed.items()}
        | {f"fd_chunk{c}": fd_all[c]["samples_s"] for c in FD_CHUNKS},
    }


def linearity_check(hidden: int, counts, *, batch: int, key, chunk: int) -> dict:
    """Finite-difference time against the number of coordinates on one network."""
    net = jaxbp.MLP((784, hidden, 10), activation="relu")
    kp, kx, ky = jax.random.split(key, 3)
    params = net.init(kp)
    x = jax.random.uniform(kx, (batch, 784))
    y = jax.random.randint(ky, (batch,), 0, 10)
    fd = fd_jit(net, chunk)
    counts = sorted({min(c, net.num_params) for c in counts} | {net.num_params})
    rng = np.random.default_rng(0)
    fns = {}
    for n in counts:
        idx = jnp.asarray(np.sort(rng.choice(net.num_params, n, replace=False)))
        fns[n] = lambda idx=idx: fd(params, x, y, idx)
    timed = _common.time_interleaved(fns, repeats=3, number=1)
    times = [timed[n]["median_s"] for n in counts]
    slope = float(np.polyfit(np.log(counts), np.log(times), 1)[0])
    # t = overhead + per_coord * n, fitted to the subsets (not the full run).
    per_coord, overhead = np.polyfit(counts[:-1], times[:-1], 1)
    # The full gradient against the linear scaling of the largest subset, as the
    # main table scales its subsets.
    base = len(counts) - 2
    predicted = times[base] / counts[base] * counts[-1]
    return {
        "network": f"784-{hidden}-10",
        "num_params": net.num_params,
        "chunk": chunk,
        "coords": counts,
        "seconds": times,
        "loglog_slope": slope,
        "linear_fit_overhead_s": float(overhead),
        "linear_fit_per_coord_s": float(per_coord),
        "full_measured_s": times[-1],
        "full_predicted_from_subset_s": predicted,
        "subset_used_for_prediction": counts[base],
        "prediction_ratio": times[-1] / predicted,
    }


def loglog_fit(p, t) -> dict:
    slope, intercept = np.polyfit(np.log(p), np.log(t), 1)
    return {"slope": float(slope), "intercept": float(intercept)}


def plot(path, rows, fits, batch):
    plt = _common.pyplot()
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(12, 4.5))
    p = np.array([r["num_params"] for r in rows], float)
    series = [
        ("fd_full_s", "finite differences (jaxbp.finite_difference_grad)", "C3", "s"),
        ("fd_two_forwards_s", "2 forward passes x parameters", "C3", "x"),
        ("autodiff_grad_s", "backprop: jax.grad", "C1", "^"),
        ("manual_grad_s", "backprop: manual delta rule", "C0", "o"),
        ("forward_s", "one forward pass (loss)", "k", "."),
    ]
    grid = np.geomspace(p.min(), p.max(), 50)
    for key, label, color, marker in series:
        t = np.array([r[key] for r in rows])
        fit = fits[key]["all"]
        ax.loglog(p, t, marker, color=color, label=f"{label}: slope {fit['slope']:.2f}")
        ax.loglog(
            grid,
            np.exp(fit["intercept"]) * grid ** fit["slope"],
            "-",
            color=color,
            alpha=0.5,
        )
    extrap = [r for r in rows if r["fd_extrapolated"]]
    if extrap:
        ax.loglog(
            [r["num_params"] for r in extrap],
            [r["fd_full_s"] for r in extrap],
            "s",
            mfc="white",
            color="C3",
            label="(scaled from a timed subset of coordinates)",
        )
    ax.set(
        xlabel="parameters",
        ylabel="seconds per gradient",
        title=f"784-H-10 ReLU, batch {batch}, CPU",
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax_ratio.semilogx(
        p, [r["manual_over_forward"] for r in rows], "o-", label="manual / forward"
    )
    ax_ratio.semilogx(
        p, [r["autodiff_over_forward"] for r in rows], "^-", label="jax.grad / forward"
    )
    ax_ratio.semilogx(
        p,
        [r["fd_per_coord_over_forward"] for r in rows],
        "s-",
        color="C3",
        label="finite differences per parameter / forward",
    )
    ax_ratio.set(
        xlabel="parameters", ylabel="time / one forward pass", title="cost in forwards"
    )
    ax_ratio.set_ylim(bottom=0)
    ax_ratio.legend(fontsize=8)
    ax_ratio.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: The timings that get a log-log slope, and their names in the printout.
FITTED = {
    "forward_s": "forward",
    "manual_grad_s": "manual backprop",
    "autodiff_grad_s": "jax.grad",
    "fd_full_s": "finite differences",
    "fd_two_forwards_s": "2 forwards x params",
}


def parse_args(argv=None):
    """The flags; adds ``hidden`` (the widths to time), and with --quick sets
    ``fd_coords`` and ``repeats`` to the smoke run's."""
    parser = _common.make_parser(__doc__)
    parser.add_argument("--batch", type=int, default=64, help="batch size (64)")
    parser.add_argument(
        "--fd-coords",
        type=int,
        default=8192,
        help="time at most this many finite-difference coordinates per network and "
        "scale linearly to all parameters (default 8192)",
    )
    parser.add_argument(
        "--repeats", type=int, default=9, help="interleaved timing rounds (9)"
    )
    args = parser.parse_args(argv)
    args.hidden = HIDDEN_QUICK if args.quick else HIDDEN
    if args.quick:
        args.fd_coords, args.repeats = 256, 3
    return args


def measure_all(args, key) -> list[dict]:
    """:func:`measure` for every width, one printed line each."""
    print(
        f"one gradient of 784-H-10 (ReLU, softmax cross-entropy), batch {args.batch}, "
        f"float32, {jax.devices()[0].platform}; medians of interleaved repeats"
    )
    head = (
        f"{'network':>10} {'params':>7} {'forward':>9} {'manual':>9} {'jax.grad':>9} "
        f"{'man/fwd':>7} {'FD coords':>9} {'chunk':>5} {'FD/coord':>9} {'FD full':>9}"
    )
    print(head)
    print("-" * len(head))
    rows = []
    for h in args.hidden:
        r = measure(
            h, batch=args.batch, fd_coords=args.fd_coords, repeats=args.repeats, key=key
        )
        rows.append(r)
        mark = "*" if r["fd_extrapolated"] else " "
        print(
            f"{r['network']:>10} {r['num_params']:>7} {r['forward_s'] * 1e6:7.0f}us "
            f"{r['manual_grad_s'] * 1e6:7.0f}us {r['autodiff_grad_s'] * 1e6:7.0f}us "
            f"{r['manual_over_forward']:7.2f} {r['fd_coords_timed']:>9} "
            f"{r['fd_chunk']:>5} "
            f"{r['fd_per_coord_s'] * 1e6:7.1f}us {r['fd_full_s']:8.2f}s{mark}",
            flush=True,
        )
    if any(r["fd_extrapolated"] for r in rows):
        print(
            f"* FD full = time of {args.fd_coords} random coordinates scaled linearly "
            "to all parameters"
        )
    return rows


def measure_linearity(args, rows: list[dict], key) -> dict:
    """:func:`linearity_check` on 784-25-10 (784-1-10 with --quick), printed."""
    lin_hidden = 1 if args.quick else 25
    counts = (128, 256) if args.quick else (1024, 2048, 4096, 8192)
    chunk = next(r["fd_chunk"] for r in rows if r["hidden"] == lin_hidden)
    lin = linearity_check(lin_hidden, counts, batch=args.batch, key=key, chunk=chunk)
    print(
        f"\nlinearity of finite differences on {lin['network']} "
        f"({lin['num_params']} params): coordinates {lin['coords']} took "
        + ", ".join(f"{t:.3f}" for t in lin["seconds"])
        + f" s; log-log slope {lin['loglog_slope']:.3f}; the full gradient took "
        f"{lin['full_measured_s']:.3f} s vs {lin['full_predicted_from_subset_s']:.3f}"
        f" s scaled from {lin['subset_used_for_prediction']} coordinates "
        f"(measured / scaled = {lin['prediction_ratio']:.3f}); a line t = a + b n "
        f"through the subsets has a = {lin['linear_fit_overhead_s'] * 1e3:.0f} ms, "
        f"b = {lin['linear_fit_per_coord_s'] * 1e6:.0f} us per coordinate"
    )
    return lin


def fit_slopes(rows: list[dict]) -> dict:
    """Log-log fits of each timing against the parameter count: over all sizes, and
    over sizes >= 5,000 (``None`` where fewer than two are)."""
    p = np.array([r["num_params"] for r in rows], float)
    big = p >= 5000
    fits = {}
    for key_name in FITTED:
        t = np.array([r[key_name] for r in rows])
        fits[key_name] = {
            "all": loglog_fit(p, t),
            "params>=5000": loglog_fit(p[big], t[big]) if big.sum() >= 2 else None,
        }
    return fits


def print_fits(rows: list[dict], fits: dict) -> None:
    """The slopes, and each gradient's cost in forward passes."""
    print("\nlog-log slopes of time vs parameters (all sizes; sizes >= 5,000):")
    for key_name, label in FITTED.items():
        f = fits[key_name]
        big = f["params>=5000"]
        big_text = f"{big['slope']:.2f}" if big else "n/a"
        print(f"  {label:20} {f['all']['slope']:.2f}; {big_text}")
    ratios_m = [r["manual_over_forward"] for r in rows]
    ratios_a = [r["autodiff_over_forward"] for r in rows]
    fd_ratio = [r["fd_per_coord_over_forward"] for r in rows]
    print(
        f"backprop / forward: manual {min(ratios_m):.2f}-{max(ratios_m):.2f}, "
        f"jax.grad {min(ratios_a):.2f}-{max(ratios_a):.2f} (median "
        f"{np.median(ratios_m):.2f}, {np.median(ratios_a):.2f}); finite differences "
        f"cost {min(fd_ratio):.2f}-{max(fd_ratio):.2f} forwards per parameter"
    )


def extrapolate_epoch(big: dict, batch: int) -> dict:
    """The cost of one epoch of 60,000 images with each gradient, from ``big``'s row."""
    batches = EPOCH_EXAMPLES / batch
    epoch = {
        "network": big["network"],
        "num_params": big["num_params"],
        "batch": batch,
        "gradients_per_epoch": batches,
        "finite_differences_s": batches * big["fd_full_s"],
        "two_forwards_per_param_s": batches * big["fd_two_forwards_s"],
        "manual_backprop_s": batches * big["manual_grad_s"],
        "autodiff_backprop_s": batches * big["autodiff_grad_s"],
    }
    epoch["speedup"] = epoch["finite_differences_s"] / epoch["manual_backprop_s"]
    epoch["speedup_two_forwards"] = (
        epoch["two_forwards_per_param_s"] / epoch["manual_backprop_s"]
    )
    return epoch


def print_epoch(epoch: dict, big: dict, *, quick: bool) -> None:
    """One epoch's cost by finite differences and by backprop."""
    print(
        f"\none epoch of {EPOCH_EXAMPLES:,} images ({epoch['gradients_per_epoch']:g} "
        f"gradients of batch {epoch['batch']}) for {big['network']} "
        f"({big['num_params']:,} params) on this machine:"
    )
    print(
        f"  finite differences: {_common.human_seconds(epoch['finite_differences_s'])}"
        f"  ({big['fd_full_s']:.2f} s per gradient)"
    )
    print(
        "  (at exactly 2 forward passes per parameter it would be "
        f"{_common.human_seconds(epoch['two_forwards_per_param_s'])})"
    )
    print(
        f"  manual backprop:    {_common.human_seconds(epoch['manual_backprop_s'])}"
        f"  ({big['manual_grad_s'] * 1e3:.3f} ms per gradient)"
    )
    print(
        f"  jax.grad backprop:  {_common.human_seconds(epoch['autodiff_backprop_s'])}"
        f"  ({big['autodiff_grad_s'] * 1e3:.3f} ms per gradient)"
    )
    print(
        f"  finite differences are {epoch['speedup']:,.0f}x slower than manual "
        f"backprop ({epoch['speedup_two_forwards']:,.0f}x at 2 forwards per "
        "parameter)"
    )
    if quick:
        print("  (--quick: tiny networks only; the largest here is not 784-100-10)")


def write(args, rows: list[dict], fits: dict, lin: dict, epoch: dict) -> None:
    """fd_cost.json, fd_cost.csv and fd_cost.png."""
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "quick": args.quick,
        "batch": args.batch,
        "dtype": "float32",
        "fd_method": "central differences, jaxbp.finite_difference_grad (2 forward "
        f"passes per coordinate, chunks of {FD_CHUNKS} under lax.map, the faster "
        "per network), inside one jax.jit",
        "fd_coords_cap": args.fd_coords,
        "rows": rows,
        "fits": fits,
        "linearity_check": lin,
        "epoch_extrapolation": epoch,
        "environment": _common.environment(),
    }
    json_path = _common.write_json(args.out / "fd_cost.json", record)
    csv_path = _common.write_csv(
        args.out / "fd_cost.csv",
        [{k: v for k, v in r.items() if k != "samples"} for r in rows],
    )
    png_path = args.out / "fd_cost.png"
    plot(png_path, rows, fits, args.batch)
    print(f"\nwrote {json_path}, {csv_path}, {png_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    key = jax.random.key(0)
    rows = measure_all(args, key)
    lin = measure_linearity(args, rows, key)
    fits = fit_slopes(rows)
    print_fits(rows, fits)
    epoch = extrapolate_epoch(rows[-1], args.batch)
    print_epoch(epoch, rows[-1], quick=args.quick)
    write(args, rows, fits, lin, epoch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
