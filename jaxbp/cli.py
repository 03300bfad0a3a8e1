"""The ``jaxbp`` command line: ``check``, ``train`` and ``download``.

``jaxbp check`` prints the per-leaf report of manual against autodiff (and finite
difference) gradients; ``jaxbp train`` trains an MLP on MNIST or Fashion-MNIST and
writes ``metrics.json``, ``checkpoint.npz`` and ``curves.png`` to ``--out``;
``jaxbp download`` fetches a dataset into the cache. Bad flags and missing data end
with a one-line message and a non-zero exit status, never a traceback.
"""

import argparse
import json
import pathlib
import platform
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import checkpoint, data, explainer, parallel, train
from jaxbp._atomic import write_atomically
from jaxbp.activations import ACTIVATIONS
from jaxbp.explainer import command as explain_command
from jaxbp.gradcheck import check_gradients
from jaxbp.losses import LOSSES
from jaxbp.mlp import MLP

DATASETS = ("fashion_mnist", "mnist")


class UsageError(Exception):
    """A bad flag or flag combination, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, not usage plus message."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _widths(text: str) -> list[int]:
    """``"512,512"`` -> ``[512, 512]``; ``""`` or ``"none"`` -> no hidden layer."""
    if text.strip().lower() in ("", "none"):
        return []
    return [_positive_int(part) for part in text.split(",") if part.strip()]


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(_positive_int(part) for part in text.split(","))
    if len(sizes) < 2:
        raise argparse.ArgumentTypeError("needs at least an input and an output size")
    return sizes


def _add_net_flags(p: argparse.ArgumentParser, *, activation: str) -> None:
    p.add_argument(
        "--activation",
        default=activation,
        choices=sorted(ACTIVATIONS),
        help=f"hidden-layer activation (default {activation})",
    )
    p.add_argument(
        "--output-activation",
        default="identity",
        choices=sorted(ACTIVATIONS),
        help="output activation (default identity; softmax cross-entropy needs it)",
    )
    p.add_argument(
        "--loss",
        default="softmax_cross_entropy",
        choices=sorted(LOSSES),
        help="objective, the mean over the batch (default softmax_cross_entropy)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxbp`` argument parser with its three subcommands."""
    parser = _Parser(
        prog="jaxbp",
        description="Backpropagation in JAX: a hand-derived backward pass beside "
        "jax.grad.",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="{check,train,download,explain}"
    )
    sub.required = True

    check = sub.add_parser(
        "check",
        help="report manual vs autodiff vs finite-difference gradients, per leaf",
        description="Compare the hand-derived gradient with jax.grad and central "
        "finite differences for one network and batch, leaf by leaf. Exits 1 if "
        "any comparison fails.",
    )
    check.add_argument(
        "--sizes",
        type=_sizes,
        default=(784, 100, 10),
        help="layer widths, input first (default 784,100,10)",
    )
    _add_net_flags(check, activation="sigmoid")
    check.add_argument("--batch-size", type=_positive_int, default=16)
    check.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="dtype of manual vs autodiff (default float32)",
    )
    check.add_argument(
        "--fd-samples",
        type=int,
        default=200,
        help="coordinates per leaf to check by finite differences in float64 "
        "(default 200; 0 skips them, -1 checks every parameter)",
    )
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=run_check)

    tr = sub.add_parser(
        "train",
        help="train an MLP on MNIST or Fashion-MNIST",
        description="Train an MLP with the hand-derived (manual) or automatic "
        "gradient. Writes metrics.json, checkpoint.npz and (with matplotlib) "
        "curves.png to --out.",
    )
    tr.add_argument("--dataset", choices=DATASETS, default="fashion_mnist")
    tr.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="folder holding the dataset's four IDX files (default: $JAXBP_DATA_DIR, "
        "then the cache, then a download)",
    )
    tr.add_argument(
        "--hidden",
        type=_widths,
        action="append",
        help="hidden layer widths, repeatable or comma-separated: --hidden 512,512 "
        "(default 100)",
    )
    _add_net_flags(tr, activation="relu")
    tr.add_argument("--grad", choices=train.GRAD_KINDS, default="manual")
    tr.add_argument("--optimizer", choices=train.OPTIMIZERS, default="adam")
    tr.add_argument(
        "--lr",
        type=_positive_float,
        help="(peak) learning rate; default per optimizer: "
        + ", ".join(f"{k} {v:g}" for k, v in train.DEFAULT_LEARNING_RATES.items()),
    )
    tr.add_argument(
        "--schedule",
        choices=train.SCHEDULES,
        default="cosine",
        help="learning-rate schedule over the whole run (default cosine decay)",
    )
    tr.add_argument("--batch-size", type=_positive_int, default=64)
    tr.add_argument("--epochs", type=_positive_int, default=10)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    tr.add_argument(
        "--dp-clip",
        type=_positive_float,
        metavar="C",
        help="DP-SGD: clip each example's gradient to L2 norm C (off by default; no "
        "privacy accounting is done)",
    )
    tr.add_argument(
        "--dp-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="DP-SGD: Gaussian noise std SIGMA * C on the sum of clipped gradients "
        "(needs --dp-clip; default 0)",
    )
    tr.add_argument(
        "--devices",
        type=_positive_int,
        help="train data-parallel on this many local devices, each batch split "
        "evenly over them (default: all local devices; 1: one device, no mesh)",
    )
    tr.add_argument(
        "--out",
        type=pathlib.Path,
        help="run folder for metrics.json, checkpoint.npz, curves.png "
        "(default runs/<dataset>-<grad>)",
    )
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out (same flags)",
    )
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="start over even if --out already holds a checkpoint",
    )
    tr.add_argument("--quiet", action="store_true", help="print only the final line")
    tr.set_defaults(func=run_train)

    dl = sub.add_parser(
        "download",
        help="download and verify a dataset into the cache",
        description="Fetch both splits of a dataset into the cache "
        "($JAXBP_CACHE_DIR, $XDG_CACHE_HOME/jaxbp or ~/.cache/jaxbp), verifying "
        "the published checksums.",
    )
    dl.add_argument("--dataset", choices=DATASETS, default="fashion_mnist")
    dl.set_defaults(func=run_download)
    _add_explain_parser(sub)
    return parser


# ------------------------------------------------------------------------- check
def run_check(args) -> int:
    """``jaxbp check``: print the gradient report; 0 if it passes, 1 if not."""
    net = MLP(args.sizes, args.activation, args.output_activation, args.loss)
    kx, ky, kp = jax.random.split(jax.random.key(args.seed), 3)
    params = net.init(kp)
    x = jax.random.uniform(kx, (args.batch_size, net.sizes[0]))
    if net.loss_fn.needs_logits or net.sizes[-1] > 1:
        y = jax.random.randint(ky, (args.batch_size,), 0, net.sizes[-1])
    else:
        y = jax.random.uniform(ky, (args.batch_size, 1))
    fd_samples = None if args.fd_samples < 0 else args.fd_samples
    report = check_gradients(
        net,
        params,
        x,
        y,
        dtype=args.dtype,
        finite_differences=args.fd_samples != 0,
        fd_samples=fd_samples,
        seed=args.seed,
    )
    print(
        f"{net.num_params:,} parameters; random batch of {args.batch_size}, "
        f"seed {args.seed}"
    )
    print(report)
    return 0 if report.passed else 1


# ------------------------------------------------------------------------- train
def _train_config(args) -> dict:
    hidden = [w for group in (args.hidden or [[100]]) for w in group]
    lr = (
        args.lr if args.lr is not None else train.DEFAULT_LEARNING_RATES[args.optimizer]
    )
    return {
        "dataset": args.dataset,
        "sizes": [784, *hidden, 10],
        "activation": args.activation,
        "output_activation": args.output_activation,
        "loss": args.loss,
        "grad": args.grad,
        "optimizer": args.optimizer,
        "lr": lr,
        "schedule": args.schedule,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "dtype": args.dtype,
        "dp_clip": args.dp_clip,
        "dp_noise": args.dp_noise,
    }


def _data_mesh(args):
    """The mesh of ``--devices``, or ``None`` for one device."""
    available = jax.local_device_count()
    n = available if args.devices is None else args.devices
    if n > available:
        platform_name = jax.local_devices()[0].platform
        raise UsageError(
            f"jaxbp train: --devices {n}, but only {available} {platform_name} "
            "device(s) are available (on CPU, simulate more with JAX_NUM_CPU_DEVICES=N)"
        )
    if args.batch_size % n:
        which = f"--devices {n}" if args.devices else f"the {n} local devices"
        raise UsageError(
            f"jaxbp train: --batch-size {args.batch_size} is not divisible by {which}; "
            f"every device takes an equal share of each batch, so use a multiple of {n}"
        )
    return None if n == 1 else parallel.make_data_mesh(n)


def _load_split(args, split: str):
    images, labels = data.load_dataset(args.dataset, split, data_dir=args.data_dir)
    # Keep the pixels as uint8 on the device; each batch is scaled to [0, 1] inside
    # the compiled step (4x less memory traffic than a float copy).
    return images.reshape(len(images), -1), labels.astype(np.int32)


def _write_json(path: pathlib.Path, record: dict) -> None:
    """Writes JSON atomically (temp file, fsync, rename)."""
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode())


def _plot_curves(path: pathlib.Path, history: list[dict], title: str) -> bool:
    """Writes loss and accuracy per epoch to ``path``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "s-", color="C1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="test accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run_train(args) -> int:
    """``jaxbp train``."""
    config = _train_config(args)
    if args.dp_noise and args.dp_clip is None:
        raise UsageError("jaxbp train: --dp-noise needs --dp-clip")
    if not args.dp_noise >= 0:
        raise UsageError(f"jaxbp train: --dp-noise must be >= 0, got {args.dp_noise}")
    dp = None
    if args.dp_clip is not None:
        dp = train.DPConfig(args.dp_clip, args.dp_noise)
    out = args.out or pathlib.Path("runs") / f"{args.dataset}-{args.grad}"
    ckpt_path = out / "checkpoint.npz"
    if args.resume and args.overwrite:
        raise UsageError("jaxbp train: --resume and --overwrite exclude each other")
    if ckpt_path.exists() and not (args.resume or args.overwrite):
        raise UsageError(
            f"jaxbp train: {out} already holds a checkpoint; pass --resume to continue "
            "it or --overwrite to start over"
        )
    if args.resume and not ckpt_path.exists():
        raise UsageError(f"jaxbp train: --resume: no checkpoint at {ckpt_path}")
    mesh = _data_mesh(args)
    num_devices = 1 if mesh is None else parallel.num_data_shards(mesh)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    net = MLP(
        tuple(config["sizes"]), args.activation, args.output_activation, args.loss
    )
    x, y = _load_split(args, "train")
    xt, yt = _load_split(args, "test")
    steps_per_epoch = len(x) // args.batch_size
    if steps_per_epoch == 0:
        raise UsageError(
            f"jaxbp train: --batch-size {args.batch_size} exceeds the {len(x)} "
            "training examples"
        )
    optimizer = train.make_optimizer(
        args.optimizer,
        config["lr"],
        schedule=args.schedule,
        total_steps=args.epochs * steps_per_epoch,
    )
    state = train.init_train_state(
        net, optimizer, jax.random.key(args.seed), dtype=jnp.dtype(args.dtype)
    )
    history: list[dict] = []
    start_epoch = 0
    if args.resume:
        saved_config = checkpoint.read_meta(ckpt_path).get("config", {})
        if saved_config != config:
            changed = sorted(k for k in config if saved_config.get(k) != config[k])
            raise UsageError(
                f"jaxbp train: --resume with different flags ({', '.join(changed)}); "
                "resume with the flags of the run in --out"
            )
        state, meta = checkpoint.restore_train_state(ckpt_path, state)
        history = meta.get("history", [])
        start_epoch = int(meta.get("epoch", 0))
    out.mkdir(parents=True, exist_ok=True)

    device = jax.devices()[0]
    record = {
        "config": config,
        "network": str(net),
        "num_params": net.num_params,
        "train_examples": int(len(x)),
        "test_examples": int(len(xt)),
        "examples_per_epoch": steps_per_epoch * args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "device": f"{device.platform} ({device.device_kind})",
        "num_devices": num_devices,
        "available_devices": jax.device_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }
    if num_devices > 1:
        record["device"] = f"{num_devices} x {record['device']}"
    if not args.quiet:
        print(
            f"{net} with {net.num_params:,} parameters on {record['device']}: "
            f"{args.dataset} {len(x):,} train / {len(xt):,} test, {args.grad} "
            f"gradients, {args.optimizer} lr {config['lr']:g} ({args.schedule}), "
            f"batch {args.batch_size}",
            flush=True,
        )

    timing: dict = {}

    def write_metrics():
        final = history[-1] if history else {}
        times = [h["epoch_time_s"] for h in history]
        record.update(
            history=history,
            epochs_done=len(history),
            final_test_accuracy=final.get("test_accuracy"),
            final_test_loss=final.get("test_loss"),
            timing={
                **timing,
                "epoch_times_s": times,
                "median_epoch_s": float(np.median(times)) if times else None,
                "train_time_s": float(np.sum(times)),
            },
        )
        _write_json(out / "metrics.json", record)

    def on_epoch(state, log: train.EpochLog):
        history.append(log._asdict())
        checkpoint.save_checkpoint(
            ckpt_path,
            state,
            net,
            meta={"config": config, "epoch": log.epoch, "history": history},
        )
        write_metrics()
        if not args.quiet:
            print(
                f"epoch {log.epoch:>3}/{args.epochs}  train loss {log.train_loss:.4f}  "
                f"test loss {log.test_loss:.4f}  test acc {log.test_accuracy:.4f}  "
                f"{log.epoch_time_s:6.2f} s  {log.samples_per_s:>9,.0f} samples/s",
                flush=True,
            )

    if start_epoch >= args.epochs:
        print(f"{out} already trained {start_epoch} epochs; nothing to do")
        return 0
    state, _, compile_timing = train.fit(
        net,
        optimizer,
        state,
        (x, y),
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad=args.grad,
        test_data=(xt, yt),
        start_epoch=start_epoch,
        on_epoch=on_epoch,
        mesh=mesh,
        dp=dp,
    )
    timing.update(compile_timing)
    write_metrics()
    if _plot_curves(out / "curves.png", history, f"{net}, {args.grad} gradients"):
        plot_note = f", {out / 'curves.png'}"
    else:
        plot_note = " (pip install 'jaxbp[plot]' for curves.png)"
    print(
        f"final test accuracy {history[-1]['test_accuracy']:.4f}; wrote "
        f"{out / 'metrics.json'}, {ckpt_path}{plot_note}"
    )
    return 0


# ------------------------------------------------------------------------- download
def run_download(args) -> int:
    """``jaxbp download``: fetch both splits into the cache."""
    for split in data.SPLITS:
        paths = data.fetch_split(args.dataset, split, progress=True)
        data.load_dataset(args.dataset, split)  # validates the structure too
        print(f"{args.dataset} {split}: {paths.images}, {paths.labels}")
    return 0


# ------------------------------------------------------------------------- explain
def _add_explain_parser(sub) -> None:
    """The ``jaxbp explain`` subcommand: one step of a small network, every number."""
    ex = sub.add_parser(
        "explain",
        help="show every number of one backpropagation step of a small network",
        description="Trace one gradient-descent step of a small MLP on one example "
        "(or a few): the forward pass, the loss, the delta of every unit, the chain "
        "rule for every weight and bias (sum over paths and matrix form), the "
        "manual gradient beside jax.grad's, and the weights after the step. At most "
        "8 units per layer, 4 layers and 4 examples.",
        epilog="Examples: jaxbp explain --example sigmoid-2-2-2 | jaxbp explain "
        "--params params.json --activation sigmoid --output-activation sigmoid "
        "--loss half_sse --x 0.1,0.2 --y 0.4,0.6 --format html --out step.html",
    )
    ex.add_argument(
        "--example",
        choices=explainer.example_names(),
        help="a worked example shipped with jaxbp (its network, parameters, data "
        "and learning rate; its published numbers are checked, exit 1 if one fails)",
    )
    ex.add_argument(
        "--sizes",
        type=_sizes,
        help="layer widths, input first, e.g. 2,2,2 (default: from --params)",
    )
    _add_net_flags(ex, activation="sigmoid")
    ex.add_argument(
        "--params",
        type=pathlib.Path,
        metavar="FILE",
        help='JSON parameters: [{"w": [[...]], "b": [...]}, ...], w shaped '
        "(fan_in, fan_out)",
    )
    ex.add_argument("--seed", type=int, help="draw the parameters from this seed")
    ex.add_argument(
        "--x",
        action="append",
        metavar="X1,X2,...",
        help="inputs of one example, comma-separated; repeat for a small batch "
        "(write --x=-1,2 when the first number is negative)",
    )
    ex.add_argument(
        "--y",
        action="append",
        metavar="T1,T2,...",
        help="targets of one example (or one integer class label); repeat with --x "
        "(--y=-1,2 when the first is negative)",
    )
    ex.add_argument(
        "--lr",
        type=_positive_float,
        help="learning rate of the step (default: the example's, else 0.5)",
    )
    ex.add_argument("--digits", type=int, default=8, help="decimals shown (default 8)")
    ex.add_argument(
        "--format",
        choices=("text", "json", "html"),
        default="text",
        help="text for the terminal (default), json, or one self-contained html page",
    )
    ex.add_argument(
        "--out", type=pathlib.Path, metavar="FILE", help="write here instead of stdout"
    )
    ex.set_defaults(func=run_explain)


def run_explain(args) -> int:
    """``jaxbp explain``: 0, or 1 if an example's published numbers do not reproduce."""
    try:
        output, ok = explain_command.run(
            example=args.example,
            sizes=args.sizes,
            activation=args.activation,
            output_activation=args.output_activation,
            loss=args.loss,
            params_path=args.params,
            seed=args.seed,
            x=args.x or (),
            y=args.y or (),
            lr=args.lr,
            output_format=args.format,
            digits=args.digits,
        )
        if args.out is not None:
            write_atomically(args.out, output.encode())
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(f"jaxbp explain: error: {e}") from None
    if args.out is None:
        sys.stdout.write(output)
    else:
        print(f"wrote {args.out}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxbp`` console script and ``python -m jaxbp``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except (
        data.DataError,
        checkpoint.CheckpointError,
        train.DivergenceError,
        ValueError,
    ) as e:
        # One line: the data layer's guidance spans several lines for library users.
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        message = message.replace("data_dir=", "--data-dir")
        print(f"jaxbp: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jaxbp: interrupted", file=sys.stderr)
        return 130
