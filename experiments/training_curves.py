"""Training curves: manual and autodiff gradients from the same seed, overlaid.

Trains the `jaxbp train` default run, `jaxbp.TrainConfig()` (784-100-10 ReLU, softmax
cross-entropy, Adam at 2e-3 with cosine decay, batch 64, 10 epochs, seed 0, float32,
uint8 pixels scaled inside the step), on Fashion-MNIST and on MNIST, twice each: once
with the hand-derived gradient and once with jax.grad, from the same seed (same initial
parameters, same shuffles), through `jaxbp.config.setup` and `jaxbp.config.fit`, the
path `jaxbp train` takes. Records per epoch the training loss, test loss and test
accuracy of both runs, the largest difference between the two curves, the final
accuracies and the largest parameter difference at the end.

--quick trains 1 epoch on 5,000 examples (evaluating on 2,000) of Fashion-MNIST when
its files are found ($JAXBP_DATA_DIR or the cache, never downloading), else on a small
synthetic dataset.

Writes training_curves.json, training_curves.csv and training_curves.png.

Example:
  JAXBP_DATA_DIR=../shared/data python experiments/training_curves.py
"""

import dataclasses
import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp.config import TrainConfig, fit, load_data, setup
from jaxbp.data import DataError

GRADS = ("manual", "autodiff")


def synthetic(n_train: int, n_test: int, seed: int = 0):
    """Random uint8 'images' with labels from a random linear teacher."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(784, 10))
    out = []
    for n in (n_train, n_test):
        x = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        y = np.argmax((x / 255.0 - 0.5) @ teacher, axis=1).astype(np.int32)
        out.append((x, y))
    return out


def run(config: TrainConfig, train_data, test_data, *, verbose: bool = True) -> dict:
    """Trains ``config`` once per gradient source from the same seed.

    Returns:
      ``{"network", "num_params", "first_step", "runs": {grad: {"history",
      "timing", "params"}}}``.
    """
    results = {}
    for grad in GRADS:
        run_setup = setup(
            dataclasses.replace(config, grad=grad),
            train_data=train_data,
            test_data=test_data,
        )
        if grad == GRADS[0]:
            first = _first_step_difference(run_setup)

        def on_epoch(state, log, grad=grad):
            if not verbose:
                return
            print(
                f"  {grad:>8} epoch {log.epoch:>2}: train loss {log.train_loss:.6f}  "
                f"test loss {log.test_loss:.6f}  test acc {log.test_accuracy:.4f}  "
                f"({log.epoch_time_s:.1f} s)",
                flush=True,
            )

        t0 = time.perf_counter()
        state, logs, timing = fit(run_setup, on_epoch=on_epoch)
        results[grad] = {
            "history": [log._asdict() for log in logs],
            "timing": timing | {"wall_s": time.perf_counter() - t0},
            "params": state.params,
        }
    net = run_setup.net
    return {"network": str(net), "num_params": net.num_params, "first_step": first} | {
        "runs": results
    }


def _first_step_difference(run_setup) -> dict:
    """Manual vs autodiff gradient on the first batch of the run (before training)."""
    net, params = run_setup.net, run_setup.state.params
    x, y = run_setup.train_data
    n = run_setup.config.batch_size
    dtype = jnp.dtype(run_setup.config.dtype)
    xb = jnp.asarray(x[:n], dtype) / jnp.asarray(255, dtype)  # as the step scales
    yb = jnp.asarray(y[:n])
    manual = jax.jit(net.value_and_manual_grad)(params, xb, yb)[1]
    auto = jax.jit(jax.grad(net.loss))(params, xb, yb)
    comp = jaxbp.compare_grads(manual, auto, names=("manual", "autodiff"))
    return {"max_abs": max(l.max_abs for l in comp.leaves), "max_rel": comp.max_rel}


def precision_check(config: TrainConfig, train_data, test_data, epochs: int) -> dict:
    """Manual vs autodiff over a short run in float32 and in float64 (same recipe).

    Shows whether the two runs part because of float32 rounding: in float64 the same
    two runs should stay together to many more digits. Compares the training losses
    and the parameters.
    """
    out = {}
    for dtype in ("float32", "float64"):
        cfg = dataclasses.replace(config, dtype=dtype, epochs=epochs)
        with jax.enable_x64(dtype == "float64"):
            s = summarize(run(cfg, train_data, test_data, verbose=False))
        out[dtype] = {
            "max_abs_train_loss_difference": s["max_abs_curve_difference"][
                "train_loss"
            ],
            "max_abs_param_difference": s["max_abs_param_difference"],
            "first_step_grad_difference": s["first_step_grad_difference"],
        }
        print(
            f"  {dtype}, {epochs} epochs: max |diff| of the epoch train losses "
            f"{out[dtype]['max_abs_train_loss_difference']:.2e}; max |param diff| "
            f"{s['max_abs_param_difference']:.2e}; first-batch gradient max |diff| "
            f"{s['first_step_grad_difference']['max_abs']:.2e}",
            flush=True,
        )
    return {"epochs": epochs} | out


def summarize(result: dict) -> dict:
    m, a = (result["runs"][g]["history"] for g in GRADS)
    diffs = {
        key: float(max(abs(x[key] - y[key]) for x, y in zip(m, a, strict=True)))
        for key in ("train_loss", "test_loss", "test_accuracy")
    }
    pm, pa = (result["runs"][g]["params"] for g in GRADS)
    param_diff = max(
        float(jnp.max(jnp.abs(u - v)))
        for u, v in zip(jax.tree.leaves(pm), jax.tree.leaves(pa), strict=True)
    )
    param_scale = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(pm))
    return {
        "max_abs_curve_difference": diffs,
        "final_test_accuracy": {
            g: result["runs"][g]["history"][-1]["test_accuracy"] for g in GRADS
        },
        "final_test_loss": {
            g: result["runs"][g]["history"][-1]["test_loss"] for g in GRADS
        },
        "final_train_loss": {
            g: result["runs"][g]["history"][-1]["train_loss"] for g in GRADS
        },
        "max_abs_param_difference": param_diff,
        "max_abs_param": param_scale,
        "first_step_grad_difference": result["first_step"],
        "median_epoch_s": {
            g: float(
                np.median([h["epoch_time_s"] for h in result["runs"][g]["history"]])
            )
            for g in GRADS
        },
    }


def plot(path, results: dict):
    plt = _common.pyplot()
    names = list(results)
    fig, axes = plt.subplots(
        len(names), 4, figsize=(16, 3.6 * len(names)), squeeze=False
    )
    for row, name in zip(axes, names, strict=True):
        res = results[name]
        runs = res["runs"]
        epochs = [h["epoch"] for h in runs["manual"]["history"]]
        for ax, key, label in zip(
            row[:3],
            ("train_loss", "test_loss", "test_accuracy"),
            ("train loss (mean over the epoch)", "test loss", "test accuracy"),
            strict=True,
        ):
            for grad, style in (
                ("manual", dict(ls="-", lw=4, alpha=0.45, marker="o")),
                ("autodiff", dict(ls="--", lw=1.5, marker="x", color="k")),
            ):
                ax.plot(
                    epochs, [h[key] for h in runs[grad]["history"]], label=grad, **style
                )
            ax.set(xlabel="epoch", title=f"{name}: {label}")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        ax = row[3]
        for key in ("train_loss", "test_loss", "test_accuracy"):
            d = [
                abs(x[key] - y[key])
                for x, y in zip(
                    runs["manual"]["history"], runs["autodiff"]["history"], strict=True
                )
            ]
            ax.semilogy(epochs, np.maximum(d, 1e-12), "o-", label=key)
        ax.set(xlabel="epoch", title="|manual - autodiff|  (floored at 1e-12)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        "manual (delta rule) and autodiff (jax.grad) gradients, same seed: "
        + "; ".join(f"{n}: {results[n]['network']}" for n in names),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    """The flags; fills in ``datasets`` and ``precision_epochs`` for --quick or not."""
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help="datasets to train on (default fashion_mnist mnist; --quick: "
        "fashion_mnist)",
    )
    parser.add_argument(
        "--data",
        choices=("auto", "real", "synthetic"),
        default="auto",
        help="real files, synthetic data, or auto: real where found (--quick: "
        "synthetic where not; never downloads in --quick)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override TrainConfig's epochs (default 10; --quick: 1)",
    )
    parser.add_argument(
        "--precision-epochs",
        type=int,
        default=None,
        help="also train manual and autodiff this many epochs in float32 and in "
        "float64 to see how far rounding parts them (default 2; --quick: 0)",
    )
    args = parser.parse_args(argv)
    args.datasets = args.datasets or (
        ["fashion_mnist"] if args.quick else ["fashion_mnist", "mnist"]
    )
    if args.precision_epochs is None:
        args.precision_epochs = 0 if args.quick else 2
    return args


def make_config(args) -> TrainConfig:
    """``jaxbp train``'s defaults, with --quick's or --epochs' epochs; printed."""
    overrides = {}
    if args.quick:
        overrides["epochs"] = 1
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = TrainConfig(**overrides)
    print(
        "config (jaxbp train defaults"
        + (f", overridden: {overrides}" if overrides else "")
        + f"): {config}"
    )
    return config


def dataset(name: str, args):
    """``(source, (x, y), (xt, yt))`` of one dataset, or ``(reason, None, None)``.

    ``source`` is ``"real"`` or ``"synthetic"``; with --quick, the real files are
    never downloaded (synthetic data stands in with ``--data auto``) and the data
    are cut to 5,000 training and 2,000 test examples.
    """
    source = "real"
    if args.data == "synthetic":
        source = "synthetic"
        (x, y), (xt, yt) = synthetic(5000 if args.quick else 20000, 2000)
    else:
        try:
            (x, y), (xt, yt) = load_data(name, offline=True if args.quick else None)
        except DataError as e:
            lines = str(e).splitlines() or [type(e).__name__]
            reason = next((s for s in lines if "missing" in s), lines[0]).strip()
            if not (args.quick and args.data == "auto"):
                print(f"{name}: skipped, the data is not available: {reason}")
                return reason, None, None
            print(f"{name}: real files not found ({reason}); using synthetic data")
            source = "synthetic"
            (x, y), (xt, yt) = synthetic(5000, 2000)
    if args.quick:
        x, y, xt, yt = x[:5000], y[:5000], xt[:2000], yt[:2000]
    return source, (x, y), (xt, yt)


def measure(config: TrainConfig, name: str, source: str, train_data, test_data,
            precision_epochs: int) -> dict:  # fmt: skip
    """Both runs on one dataset, their summary, and the precision check if asked."""
    print(
        f"\n{name} ({source}): {len(train_data[0]):,} train / {len(test_data[0]):,} "
        f"test, {config.epochs} epochs, batch {config.batch_size}"
    )
    config = dataclasses.replace(config, dataset=name)
    result = run(config, train_data, test_data)
    result["summary"] = summarize(result)
    result["data"] = {
        "source": source,
        "train": len(train_data[0]),
        "test": len(test_data[0]),
    }
    if precision_epochs > 0:
        print(
            f"\nprecision check on {name}: manual vs autodiff, same recipe for "
            f"{precision_epochs} epochs, in float32 and in float64"
        )
        result["precision_check"] = precision_check(
            config, train_data, test_data, precision_epochs
        )
    return result


def print_summary(results: dict, skipped: dict) -> None:
    """One paragraph per dataset: final accuracies and how far the runs parted."""
    print("\nsummary (manual vs autodiff, same seed)")
    for name, res in results.items():
        s = res["summary"]
        d = s["max_abs_curve_difference"]
        print(
            f"  {name} ({res['network']}): final test accuracy manual "
            f"{s['final_test_accuracy']['manual']:.4f}, autodiff "
            f"{s['final_test_accuracy']['autodiff']:.4f}; max |diff| over epochs: "
            f"train loss {d['train_loss']:.2e}, test loss {d['test_loss']:.2e}, test "
            f"accuracy {d['test_accuracy']:.2e}; max |param diff| at the end "
            f"{s['max_abs_param_difference']:.2e} (largest |param| "
            f"{s['max_abs_param']:.2f}); first-batch gradient max |diff| "
            f"{s['first_step_grad_difference']['max_abs']:.2e} (rel "
            f"{s['first_step_grad_difference']['max_rel']:.2e}); median epoch "
            f"{s['median_epoch_s']['manual']:.1f} s manual, "
            f"{s['median_epoch_s']['autodiff']:.1f} s autodiff"
        )
    for name, reason in skipped.items():
        print(f"  {name}: skipped ({reason})")


def write(args, config: TrainConfig, results: dict, skipped: dict) -> None:
    """training_curves.json (without the parameters), .csv (one row per dataset,
    gradient and epoch) and .png."""
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "quick": args.quick,
        "config": config.to_dict(),
        "datasets": {
            name: {k: v for k, v in res.items() if k != "runs"}
            | {
                "runs": {
                    g: {k: v for k, v in r.items() if k != "params"}
                    for g, r in res["runs"].items()
                }
            }
            for name, res in results.items()
        },
        "skipped": skipped,
        "environment": _common.environment(),
    }
    csv_rows = [
        {"dataset": name, "grad": grad} | h
        for name, res in results.items()
        for grad in GRADS
        for h in res["runs"][grad]["history"]
    ]
    json_path = _common.write_json(args.out / "training_curves.json", record)
    csv_path = _common.write_csv(args.out / "training_curves.csv", csv_rows)
    png_path = args.out / "training_curves.png"
    plot(png_path, results)
    print(f"wrote {json_path}, {csv_path}, {png_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    config = make_config(args)
    results, skipped = {}, {}
    for name in args.datasets:
        source, train_data, test_data = dataset(name, args)
        if train_data is None:
            skipped[name] = source
            continue
        results[name] = measure(
            config, name, source, train_data, test_data, args.precision_epochs
        )
    if not results:
        print("no dataset could be loaded; nothing to plot")
        return 1
    print_summary(results, skipped)
    write(args, config, results, skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
