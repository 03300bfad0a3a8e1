"""The ``jaxbp`` command line: ``check``, ``train`` and ``download``.

``jaxbp check`` prints the per-leaf report of manual against autodiff (and finite
difference) gradients; ``jaxbp train`` trains an MLP (or, with ``--model``, any
:class:`~jaxbp.Sequential` network) on MNIST or Fashion-MNIST and writes
``metrics.json``, ``checkpoint.npz`` and ``curves.png`` to ``--out``, showing the
progress of a long epoch on stderr; ``jaxbp download`` fetches a dataset into the
cache.

``jaxbp train`` is input and output around :mod:`jaxbp.config`: its flags make a
:class:`~jaxbp.config.TrainConfig` (whose defaults are the flags' defaults),
:func:`~jaxbp.config.setup` and :func:`~jaxbp.config.fit` do the work, and this module
prints, checkpoints and writes ``metrics.json``. Every error is one
``jaxbp <command>: error: ...`` message and a non-zero exit status, never a traceback.
"""

import argparse
import contextlib
import dataclasses
import json
import pathlib
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from typing import TextIO

import jax
import numpy as np

from jaxbp import checkpoint, data, explainer, models, optim, parallel, train
from jaxbp import cli_explain as explain_command
from jaxbp._atomic import write_atomically
from jaxbp.activations import ACTIVATIONS
from jaxbp.config import DTYPES, TrainConfig, TrainSetup, fit, setup
from jaxbp.gradcheck import check_gradients
from jaxbp.losses import LOSSES
from jaxbp.mlp import MLP

DATASETS = tuple(data.DATASETS)
#: ``jaxbp train``'s defaults: those of :class:`~jaxbp.config.TrainConfig`.
TRAIN_DEFAULTS = TrainConfig()


class UsageError(Exception):
    """A bad flag or flag combination, reported as one line.

    Args:
      message: what is wrong (without the ``jaxbp <command>: error:`` prefix).
      prog: the command it is about (``"jaxbp train"``); ``None`` for the one being
        run.
    """

    def __init__(self, message: str, *, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, not usage plus message."""

    def error(self, message):
        raise UsageError(message, prog=self.prog)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _fd_samples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < -1:
        raise argparse.ArgumentTypeError(
            "must be -1 (every parameter), 0 (none) or a positive number of "
            f"coordinates per leaf, got {text!r}"
        )
    return value


def _float(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    ok = value > 0 if positive else value >= 0
    if not ok or not np.isfinite(value):
        which = "positive" if positive else "non-negative"
        raise argparse.ArgumentTypeError(f"must be a {which} number, got {text}")
    return value


def _positive_float(text: str) -> float:
    return _float(text, positive=True)


def _nonnegative_float(text: str) -> float:
    return _float(text, positive=False)


def _dataset(text: str) -> str:
    """A dataset's one name: ``fashion-mnist`` (its folder's) -> ``fashion_mnist``."""
    try:
        return data.dataset_spec(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


class _StoreGiven(argparse.Action):
    """Stores a flag's value and notes in ``namespace.given`` that it was given (a
    default cannot say whether the user wrote it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.option_strings[0]}


def _add_net_flags(
    p: argparse.ArgumentParser, *, activation: str, output_activation: str, loss: str
) -> None:
    p.add_argument(
        "--activation",
        default=activation,
        choices=sorted(ACTIVATIONS),
        action=_StoreGiven,
        help="hidden-layer activation (default: %(default)s)",
    )
    p.add_argument(
        "--output-activation",
        default=output_activation,
        choices=sorted(ACTIVATIONS),
        action=_StoreGiven,
        help="output activation; softmax cross-entropy needs identity "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--loss",
        default=loss,
        choices=sorted(LOSSES),
        help="objective, the mean over the batch (default: %(default)s)",
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
        help="layer widths, input first (default: 784,100,10)",
    )
    _add_net_flags(
        check,
        activation="sigmoid",
        output_activation="identity",
        loss="softmax_cross_entropy",
    )
    check.add_argument(
        "--batch-size",
        type=_positive_int,
        default=16,
        help="examples in the random batch (default: %(default)s)",
    )
    check.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of manual vs autodiff (default: %(default)s)",
    )
    check.add_argument(
        "--fd-samples",
        type=_fd_samples,
        default=200,
        help="coordinates per leaf to check by finite differences in float64; 0 "
        "skips them, -1 checks every parameter (default: %(default)s)",
    )
    check.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the parameters, the batch and the sampled coordinates "
        "(default: %(default)s)",
    )
    check.set_defaults(func=run_check)

    d = TRAIN_DEFAULTS
    tr = sub.add_parser(
        "train",
        help="train an MLP or another network on MNIST or Fashion-MNIST",
        description="Train an MLP, or the network of --model, with the "
        "hand-derived (manual) or automatic gradient. Writes metrics.json, "
        "checkpoint.npz and (with matplotlib) curves.png to --out; an epoch that "
        "takes more than a few seconds shows its progress on stderr.",
    )
    tr.add_argument(
        "--dataset",
        type=_dataset,
        choices=DATASETS,
        default=d.dataset,
        help="dataset to train and test on (default: %(default)s)",
    )
    tr.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="folder holding the dataset's four IDX files (default: "
        "$JAXBP_DATA_DIR/<dataset folder>, then the cache, then a download)",
    )
    tr.add_argument(
        "--hidden",
        type=_widths,
        action="append",
        help="hidden layer widths, repeatable or comma-separated: --hidden 512,512; "
        "'none' for no hidden layer (default: " + ",".join(map(str, d.hidden)) + ")",
    )
    _add_net_flags(
        tr,
        activation=d.activation,
        output_activation=d.output_activation,
        loss=d.loss,
    )
    presets = "; ".join(
        f"{name}: {text}" for name, text in models.PRESET_DESCRIPTIONS.items()
    )
    tr.add_argument(
        "--model",
        metavar="NAME|SPEC",
        help=f"the network instead of the MLP of --hidden and --activation: a preset "
        f"({presets}) or a spec of layers such as "
        "'reshape(28,28,1),conv(20,5),maxpool(2),flatten,dense(10)' made of "
        "dense(N), conv(F,K[,same][,stride=S]), maxpool(W), avgpool(W), flatten, "
        "reshape(D,...), bn, ln, dropout(P), res(LAYER,...) and activation names "
        "(default: mlp)",
    )
    tr.add_argument(
        "--grad",
        choices=train.GRADS,
        default=d.grad,
        help="gradient: the hand-derived delta rule (manual) or jax.grad (autodiff); "
        "or a learning rule whose backward pass does not use W^T, its fixed random "
        "feedback drawn from --seed: feedback-alignment (Lillicrap et al. 2016), "
        "direct-feedback-alignment (Nokland 2016), sign-symmetry (Liao et al. 2016); "
        "a rule is measured against jax.grad after every epoch "
        "(default: %(default)s)",
    )
    tr.add_argument(
        "--align-every",
        type=_positive_int,
        default=d.align_every,
        metavar="K",
        help="with a learning rule, also measure its angle to jax.grad on the batch "
        "of every K-th step (counted in the epoch time) (default: every epoch only)",
    )
    tr.add_argument(
        "--optimizer",
        choices=optim.OPTIMIZERS,
        default=d.optimizer,
        help="optax optimizer (default: %(default)s)",
    )
    tr.add_argument(
        "--lr",
        type=_positive_float,
        help="(peak) learning rate (default: per optimizer, "
        + ", ".join(f"{k} {v:g}" for k, v in optim.DEFAULT_LEARNING_RATES.items())
        + ")",
    )
    tr.add_argument(
        "--schedule",
        choices=optim.SCHEDULES,
        default=d.schedule,
        help="learning-rate schedule over the whole run; cosine decays to zero "
        "(default: %(default)s)",
    )
    tr.add_argument(
        "--batch-size",
        type=_positive_int,
        default=d.batch_size,
        help="examples per step (default: %(default)s)",
    )
    tr.add_argument(
        "--epochs",
        type=_positive_int,
        default=d.epochs,
        help="passes over the training set (default: %(default)s)",
    )
    tr.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seeds the initial parameters and every epoch's shuffle "
        "(default: %(default)s)",
    )
    tr.add_argument(
        "--dtype",
        choices=DTYPES,
        default=d.dtype,
        help="parameter and arithmetic dtype (default: %(default)s)",
    )
    tr.add_argument(
        "--dp-clip",
        type=_positive_float,
        default=d.dp_clip,
        metavar="C",
        help="DP-SGD: clip each example's gradient to L2 norm C; no privacy "
        "accounting is done (default: off)",
    )
    tr.add_argument(
        "--dp-noise",
        type=_nonnegative_float,
        default=d.dp_noise,
        metavar="SIGMA",
        help="DP-SGD: Gaussian noise std SIGMA * C on the sum of clipped gradients; "
        "needs --dp-clip (default: %(default)s)",
    )
    tr.add_argument(
        "--devices",
        type=_positive_int,
        help="train data-parallel on this many local devices, each batch split "
        "evenly over them; 1: one device, no mesh (default: all local devices)",
    )
    tr.add_argument(
        "--out",
        type=pathlib.Path,
        help="run folder for metrics.json, checkpoint.npz, curves.png "
        "(default: runs/<dataset>-<grad>)",
    )
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out, with the same settings "
        "(default: off)",
    )
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="start over even if --out already holds a checkpoint (default: off)",
    )
    tr.add_argument(
        "--quiet",
        action="store_true",
        help="print only the final line (default: off)",
    )
    tr.set_defaults(func=run_train)

    dl = sub.add_parser(
        "download",
        help="download and verify a dataset into the cache",
        description="Fetch both splits of a dataset into the cache "
        "($JAXBP_CACHE_DIR, $XDG_CACHE_HOME/jaxbp or ~/.cache/jaxbp), verifying "
        "the published checksums.",
    )
    dl.add_argument(
        "--dataset",
        type=_dataset,
        choices=DATASETS,
        default=d.dataset,
        help="dataset to download (default: %(default)s)",
    )
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
    fd_samples = args.fd_samples if args.fd_samples > 0 else None  # -1: all, 0: none
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
def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~jaxbp.config.TrainConfig` of parsed ``jaxbp train`` flags.

    Raises:
      UsageError: if the flags do not make a valid configuration.
    """
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if args.hidden is None:
        del settings["hidden"]
    else:
        settings["hidden"] = tuple(w for group in args.hidden for w in group)
    if args.model is not None and args.model.strip().lower() != "mlp":
        given = getattr(args, "given", set())
        mlp_flags = ["--hidden"] if args.hidden is not None else []
        mlp_flags += sorted(given & {"--activation", "--output-activation"})
        if mlp_flags:
            raise UsageError(
                f"--model conflicts with {' and '.join(mlp_flags)}: they describe "
                "the MLP, which --model replaces; write the layers in the --model "
                "spec instead"
            )
    try:
        return TrainConfig(**settings)
    except ValueError as e:
        # The config names its settings; the user wrote flags.
        message = str(e)
        for name in settings:
            if "_" in name or message.startswith(f"{name} "):
                message = re.sub(rf"\b{name}\b", _flag(name), message)
        raise UsageError(message) from None


def _flag(name: str) -> str:
    """A setting's flag: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _show(name: str, value) -> str:
    """A setting's value as its flag would be written."""
    if name == "hidden":
        return ",".join(map(str, value)) or "none"
    if name == "model":
        return "mlp" if value is None else models.preset_name(value) or value
    return "off" if value is None else str(value)  # floats: shortest exact form


def _check_resume(ckpt_path: pathlib.Path, config: TrainConfig) -> None:
    """Raises UsageError naming each setting that differs from the saved run's."""
    try:
        saved = checkpoint.read_meta(ckpt_path).get("config")
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(
            f"--resume: {e}; pass --overwrite to start over"
        ) from None
    try:
        saved_config = TrainConfig.from_dict(saved or {})
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"--resume: the checkpoint {ckpt_path} does not record a configuration "
            f"this jaxbp can read ({e}); pass --overwrite to start over"
        ) from None
    changed = saved_config.differences(config)
    if changed:
        listed = ", ".join(
            f"{_flag(name)} {_show(name, old)} (saved) vs {_show(name, new)} (now)"
            for name, old, new in changed
        )
        raise UsageError(
            f"--resume with different settings: {listed}; resume with the settings "
            f"of the run in {ckpt_path.parent}, or pass --overwrite to start over"
        )


def _data_mesh(devices: int | None, batch_size: int):
    """The mesh of ``--devices``, or ``None`` for one device."""
    available = jax.local_device_count()
    n = available if devices is None else devices
    if n > available:
        platform_name = jax.local_devices()[0].platform
        raise UsageError(
            f"--devices {n}, but only {available} {platform_name} device(s) are "
            "available (on CPU, simulate more with JAX_NUM_CPU_DEVICES=N)"
        )
    if batch_size % n:
        which = f"--devices {n}" if devices else f"the {n} local devices"
        raise UsageError(
            f"--batch-size {batch_size} is not divisible by {which}; every device "
            f"takes an equal share of each batch, so use a multiple of {n}"
        )
    return None if n == 1 else parallel.make_data_mesh(n)


def _check_mesh(config: TrainConfig, mesh) -> None:
    """Raises UsageError if the network cannot train data-parallel on ``mesh``."""
    try:
        train.check_supported(config.net, mesh=mesh)
    except ValueError as e:
        raise UsageError(f"{e}: pass --devices 1") from None


def _check_out_folder(out: pathlib.Path) -> None:
    """Raises UsageError if ``out`` exists and is not a folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")


def _make_out_folder(out: pathlib.Path) -> None:
    """Creates ``out``; raises UsageError, in one line, if it cannot."""
    _check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"--out {out}: cannot create the folder ({e.strerror or e})"
        ) from None


def _write_json(path: pathlib.Path, record: dict) -> None:
    """Writes JSON atomically (temp file, fsync, rename)."""
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode())


def _alignment_note(log: train.EpochLog) -> str:
    """``  dW angle 74,61 deg``: a rule's hidden layers' update angles to jax.grad
    (the output layer's is exact); nothing for backprop."""
    if log.alignment is None:
        return ""
    angles = log.alignment["update_angle"][:-1]
    shown = ",".join("-" if a is None else f"{a:.0f}" for a in angles)
    return f"  dW angle {shown} deg" if angles else ""


def _plot_alignment(ax, history: list[dict]) -> None:
    """The update angle to jax.grad of each hidden Dense layer over the steps."""
    num = len(history[0]["alignment"]["update_angle"]) - 1
    for layer in range(num):
        color = f"C{layer}"
        rows = [r for h in history for r in h.get("alignment_steps", [])]
        if rows:
            ax.plot(
                [r["step"] for r in rows],
                [r["update_angle"][layer] for r in rows],
                "-",
                color=color,
                alpha=0.6,
            )
        ax.plot(
            [h["step"] for h in history],
            [h["alignment"]["update_angle"][layer] for h in history],
            "o",
            color=color,
            label=f"Dense layer {layer + 1}",
        )
    ax.axhline(90, color="0.6", lw=0.8, ls="--")
    ax.set(xlabel="step", ylabel="degrees", title="update angle to jax.grad")
    ax.set_ylim(0, 100)
    ax.legend()


def _plot_curves(path: pathlib.Path, history: list[dict], title: str) -> bool:
    """Writes loss and accuracy per epoch to ``path`` (and a learning rule's update
    angles to the true gradient); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    aligned = bool(history) and "alignment" in history[0]
    if aligned:
        fig, (ax_loss, ax_acc, ax_align) = plt.subplots(1, 3, figsize=(15, 4))
        _plot_alignment(ax_align, history)
    else:
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


def _run_record(run: TrainSetup, num_devices: int) -> dict:
    """What ``metrics.json`` says about a run before its first epoch."""
    net, config = run.net, run.config
    steps_per_epoch = len(run.train_data[0]) // config.batch_size
    device = jax.devices()[0]
    device_name = f"{device.platform} ({device.device_kind})"
    if num_devices > 1:
        device_name = f"{num_devices} x {device_name}"
    shape = {"sizes": list(net.sizes)} if config.model is None else {}
    return {
        "config": config.to_dict(),
        "network": str(net),
        **shape,
        "num_params": net.num_params,
        "train_examples": len(run.train_data[0]),
        "test_examples": len(run.test_data[0]),
        "examples_per_epoch": steps_per_epoch * config.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "device": device_name,
        "num_devices": num_devices,
        "available_devices": jax.device_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }


def _default_run_name(config: TrainConfig) -> str:
    """``fashion_mnist-manual`` for the MLP, ``mnist-lenet-autodiff`` for a preset,
    ``mnist-model-manual`` for another spec."""
    if config.model is None:
        return f"{config.dataset}-{config.grad}"
    name = models.preset_name(config.model) or "model"
    return f"{config.dataset}-{name}-{config.grad}"


class _EpochProgress:
    """Shows how far a long epoch has got, on stderr.

    Nothing for an epoch's first ``after_s`` seconds (most epochs of an MLP end
    before); then a bar rewritten in place on a terminal (at most every
    ``redraw_s``), or a plain line every ``line_every_s`` otherwise. The bar is
    erased when the epoch ends, before its summary line is printed.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        bar: bool,
        after_s: float = 3.0,
        redraw_s: float = 0.2,
        line_every_s: float = 10.0,
    ):
        self.stream = stream
        self.bar = bar
        self.after_s = after_s
        self.every_s = redraw_s if bar else line_every_s
        self.shown_at: float | None = None  # elapsed_s of the last line shown
        self.done = 0

    def __call__(self, p: train.EpochProgress) -> None:
        if p.done == 0:  # a new epoch
            self.shown_at, self.done = None, 0
            return
        if p.done < self.done:  # a callback that arrived late
            return
        self.done = p.done
        if p.done == p.steps:
            if self.bar and self.shown_at is not None:
                self._write("\r\x1b[K")  # erase the bar
            self.shown_at = None
            return
        if p.elapsed_s < self.after_s:
            return
        if self.shown_at is not None and p.elapsed_s - self.shown_at < self.every_s:
            return
        self.shown_at = p.elapsed_s
        left = p.elapsed_s * (p.steps - p.done) / p.done
        text = (
            f"epoch {p.epoch}/{p.epochs}: step {p.done:,}/{p.steps:,} "
            f"({100 * p.done / p.steps:3.0f} %), {p.elapsed_s:.0f} s, about "
            f"{left:.0f} s left"
        )
        if self.bar:
            width = 24
            filled = width * p.done // p.steps
            self._write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\x1b[K")
        else:
            self._write(text + "\n")

    def close(self) -> None:
        """Ends a bar left on the screen (by an interrupted epoch)."""
        if self.bar and self.shown_at is not None:
            self._write("\n")
            self.shown_at = None

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream must not stop the training
            pass


def run_train(args) -> int:
    """``jaxbp train``: the flags' :class:`TrainConfig`, set up, fitted, recorded."""
    config = config_from_args(args)
    out = args.out or pathlib.Path("runs") / _default_run_name(config)
    ckpt_path = out / "checkpoint.npz"
    _check_out_folder(out)
    if ckpt_path.is_dir():
        raise UsageError(
            f"{ckpt_path} is a folder, where jaxbp train keeps its checkpoint file; "
            "move it away or choose another --out"
        )
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if ckpt_path.exists() and not (args.resume or args.overwrite):
        raise UsageError(
            f"{out} already holds a checkpoint; pass --resume to continue it or "
            "--overwrite to start over"
        )
    if args.resume:
        if not ckpt_path.exists():
            raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
        _check_resume(ckpt_path, config)
    mesh = _data_mesh(args.devices, config.batch_size)
    if mesh is not None:
        _check_mesh(config, mesh)
    x64 = config.dtype == "float64"
    try:
        with jax.enable_x64(True) if x64 else contextlib.nullcontext():
            return _train(args, config, out, mesh)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted(args, config, out)) from None


def _interrupted(args, config: TrainConfig, out: pathlib.Path) -> str:
    """What an interrupted ``jaxbp train`` kept, and the command that continues it."""
    ckpt_path = out / "checkpoint.npz"
    try:
        meta = checkpoint.read_meta(ckpt_path)
        same_run = TrainConfig.from_dict(meta.get("config") or {}) == config
    except (ValueError, TypeError):  # no checkpoint, or another run's
        same_run = False
    if not same_run:
        return (
            "interrupted before the first epoch ended, so no checkpoint was written; "
            "run the same command to start again"
        )
    command = ["jaxbp", "train", "--out", str(out)]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    for name, _, value in TrainConfig().differences(config):
        command += [_flag(name), _show(name, value)]
    if args.devices is not None:
        command += ["--devices", str(args.devices)]
    if args.quiet:
        command.append("--quiet")
    return (
        f"interrupted; kept the checkpoint of epoch {meta.get('epoch')} of "
        f"{config.epochs} in {ckpt_path}; resume with: {shlex.join(command)} --resume"
    )


def _train(args, config: TrainConfig, out: pathlib.Path, mesh) -> int:
    """The body of ``jaxbp train`` once its flags are checked: set up, fit, record."""
    ckpt_path = out / "checkpoint.npz"
    num_devices = 1 if mesh is None else parallel.num_data_shards(mesh)
    run = setup(config, data_dir=args.data_dir)
    history: list[dict] = []
    start_epoch = 0
    if args.resume:
        state, meta = checkpoint.restore_train_state(ckpt_path, run.state)
        run = run._replace(state=state)
        history = meta.get("history", [])
        start_epoch = int(meta.get("epoch", 0))
    _make_out_folder(out)
    record = _run_record(run, num_devices)
    if not args.quiet:
        print(
            f"{run.net} with {run.net.num_params:,} parameters on {record['device']}: "
            f"{config.dataset} {record['train_examples']:,} train / "
            f"{record['test_examples']:,} test, {config.grad} gradients, "
            f"{config.optimizer} lr {config.lr:g} ({config.schedule}), batch "
            f"{config.batch_size}",
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
        # Backprop runs record no alignment: their history keeps its old keys.
        history.append({k: v for k, v in log._asdict().items() if v is not None})
        checkpoint.save_checkpoint(
            ckpt_path,
            state,
            run.net,
            meta={"config": config.to_dict(), "epoch": log.epoch, "history": history},
        )
        write_metrics()
        if not args.quiet:
            print(
                f"epoch {log.epoch:>3}/{config.epochs}  train loss "
                f"{log.train_loss:.4f}  test loss {log.test_loss:.4f}  test acc "
                f"{log.test_accuracy:.4f}  {log.epoch_time_s:6.2f} s  "
                f"{log.samples_per_s:>9,.0f} samples/s{_alignment_note(log)}",
                flush=True,
            )

    if start_epoch >= config.epochs:
        print(f"{out} already trained {start_epoch} epochs; nothing to do")
        return 0
    progress = None
    if not args.quiet:
        progress = _EpochProgress(sys.stderr, bar=sys.stderr.isatty())
    try:
        _, _, compile_timing = fit(
            run,
            start_epoch=start_epoch,
            on_epoch=on_epoch,
            mesh=mesh,
            on_progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    timing.update(compile_timing)
    write_metrics()
    title = f"{run.net}, {config.grad} gradients"
    if _plot_curves(out / "curves.png", history, title):
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


def _print_error(prog: str, message: str) -> None:
    """``<prog>: error: <message>`` on stderr; the CLI's flag names for the library's
    argument names."""
    message = re.sub(r"\bdata_dir\b=?", "--data-dir", message).strip()
    print(f"{prog}: error: {message}", file=sys.stderr)


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
        "and learning rate; its published numbers are checked, exit 1 if one fails) "
        "(default: none)",
    )
    ex.add_argument(
        "--sizes",
        type=_sizes,
        help="layer widths, input first, e.g. 2,2,2 (default: from --params)",
    )
    _add_net_flags(
        ex,
        activation="sigmoid",
        output_activation="identity",
        loss="softmax_cross_entropy",
    )
    ex.add_argument(
        "--params",
        type=pathlib.Path,
        metavar="FILE",
        help='JSON parameters: [{"w": [[...]], "b": [...]}, ...], w shaped '
        "(fan_in, fan_out) (default: none; then --seed draws them)",
    )
    ex.add_argument(
        "--seed",
        type=int,
        help="draw the parameters from this seed instead of --params (default: none)",
    )
    ex.add_argument(
        "--x",
        action="append",
        metavar="X1,X2,...",
        help="inputs of one example, comma-separated; repeat for a small batch "
        "(write --x=-1,2 when the first number is negative) (default: none)",
    )
    ex.add_argument(
        "--y",
        action="append",
        metavar="T1,T2,...",
        help="targets of one example (or one integer class label); repeat with --x "
        "(--y=-1,2 when the first is negative) (default: none)",
    )
    ex.add_argument(
        "--lr",
        type=_positive_float,
        help="learning rate of the step (default: the example's, else 0.5)",
    )
    ex.add_argument(
        "--digits", type=int, default=8, help="decimals shown (default: %(default)s)"
    )
    ex.add_argument(
        "--format",
        choices=("text", "json", "html"),
        default="text",
        help="text for the terminal, json, or one self-contained html page "
        "(default: %(default)s)",
    )
    ex.add_argument(
        "--out",
        type=pathlib.Path,
        metavar="FILE",
        help="write here (default: standard output)",
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
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(str(e)) from None
    if args.out is None:
        sys.stdout.write(output)
    else:
        try:
            write_atomically(args.out, output.encode())
        except OSError as e:
            raise UsageError(_cannot_write(args.out, e)) from None
        print(f"wrote {args.out}")
    return 0 if ok else 1


def _cannot_write(path: pathlib.Path, error: OSError) -> str:
    """Why ``--out`` was not written, naming it rather than the temporary file."""
    if path.is_dir():
        return f"--out {path} is a folder; name a file in it, e.g. {path / 'step.html'}"
    if path.parent.exists() and not path.parent.is_dir():
        return f"--out {path}: {path.parent} is a file, not a folder"
    if not path.parent.exists():
        return f"--out {path}: the folder {path.parent} does not exist"
    return f"--out {path}: cannot write the file ({error.strerror or error})"


def _with_dash_value_hint(message: str, argv: Sequence[str]) -> str:
    """argparse's error for ``--x -1,2`` (a value read as a flag), with the fix."""
    missing = re.fullmatch(r"argument (--[\w-]+): expected one argument", message)
    if missing:
        flag = missing[1]
        for given, value in zip(argv, argv[1:], strict=False):
            if len(given) > 2 and flag.startswith(given) and re.match(r"-\.?\d", value):
                return (
                    f"{message}; to pass a value that starts with '-', join it to the "
                    f"flag: write {flag}={value}"
                )
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxbp`` console script and ``python -m jaxbp``.

    Every error is reported as ``jaxbp <command>: error: <message>`` on stderr with no
    traceback: one line, except for a data error, whose list of searched folders and
    advice keep their lines. Exit status 2 for bad flags, 1 for other errors, 130
    when interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    prog = parser.prog
    try:
        args, unknown = parser.parse_known_args(argv)
        prog = f"{parser.prog} {args.command}"
        if unknown:  # reported by the subcommand, not the top-level parser
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
        return args.func(args)
    except UsageError as e:
        _print_error(e.prog or prog, _with_dash_value_hint(str(e), argv))
        return 2
    except data.DataError as e:
        _print_error(prog, str(e))
        return 1
    except (
        checkpoint.CheckpointError,
        train.DivergenceError,
        ValueError,
        OSError,
    ) as e:
        # One line: library messages may wrap for readers of a traceback.
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        _print_error(prog, message or type(e).__name__)
        return 1
    except KeyboardInterrupt as e:
        print(f"{prog}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
