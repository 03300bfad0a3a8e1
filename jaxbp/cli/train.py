"""``jaxbp train``: input and output around :mod:`jaxbp.config`.

Its flags make a :class:`~jaxbp.config.TrainConfig` (whose defaults are the flags'
defaults); :func:`~jaxbp.config.setup` and :func:`jaxbp.fit` do the work;
this module prints each epoch, shows the progress of a long one on stderr and plots
``curves.png``, and :mod:`jaxbp.cli.run_folder` keeps ``metrics.json`` and the
checkpoint in ``--out``.
"""

import argparse
import contextlib
import dataclasses
import pathlib
import shlex
import signal
import sys
from typing import TextIO

import jax

from jaxbp import models, optim, parallel, train
from jaxbp.cli import _flags, run_folder
from jaxbp.cli._flags import UsageError
from jaxbp.config import DTYPES, TrainConfig, fit, setup

#: ``jaxbp train``'s defaults: those of :class:`~jaxbp.config.TrainConfig`.
TRAIN_DEFAULTS = TrainConfig()


def _widths(text: str) -> list[int]:
    """``"512,512"`` -> ``[512, 512]``; ``""`` or ``"none"`` -> no hidden layer."""
    if text.strip().lower() in ("", "none"):
        return []
    return [_flags.positive_int(part) for part in text.split(",") if part.strip()]


def add_parser(sub) -> None:
    """Adds ``train`` to the ``jaxbp`` subcommands ``sub``; each setting's flag is
    named for its :class:`~jaxbp.config.TrainConfig` field (``--batch-size`` for
    ``batch_size``)."""
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
        type=_flags.dataset,
        choices=_flags.DATASETS,
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
    _flags.add_net_flags(
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
        type=_flags.positive_int,
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
        type=_flags.positive_float,
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
        type=_flags.positive_int,
        default=d.batch_size,
        help="examples per step (default: %(default)s)",
    )
    tr.add_argument(
        "--epochs",
        type=_flags.positive_int,
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
    # The DP flags' values are checked once, by TrainConfig (ConfigError names the
    # flag), as a library caller's are.
    tr.add_argument(
        "--dp-clip",
        type=float,
        default=d.dp_clip,
        metavar="C",
        help="DP-SGD: clip each example's gradient to L2 norm C; no privacy "
        "accounting is done (default: off)",
    )
    tr.add_argument(
        "--dp-noise",
        type=float,
        default=d.dp_noise,
        metavar="SIGMA",
        help="DP-SGD: Gaussian noise std SIGMA * C on the sum of clipped gradients; "
        "needs --dp-clip (default: %(default)s)",
    )
    tr.add_argument(
        "--devices",
        type=_flags.positive_int,
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
    tr.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~jaxbp.config.TrainConfig` of parsed ``jaxbp train`` flags.

    Raises:
      UsageError: if ``--model`` comes with the MLP's flags.
      ConfigError: if the flags do not make a valid configuration; its ``field`` is
        the ``dest`` of the flag to name.
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
    return TrainConfig(**settings)


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


class _StopAtEpochEnd:
    """While training, a Ctrl-C stops the run once the running epoch is saved.

    Python raises ``KeyboardInterrupt`` wherever the main thread is, which in a
    training run can be inside XLA's host callback (where it becomes an internal
    runtime error) or between a lock's acquire and release. Inside this block the
    first SIGINT only sets a flag, which :meth:`check` turns into a
    ``KeyboardInterrupt`` after each epoch's checkpoint; a second one interrupts at
    once. Outside the main thread (where handlers cannot be set) nothing changes.
    """

    def __enter__(self):
        self.pending = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        """Raises ``KeyboardInterrupt`` if a Ctrl-C came since the block began."""
        if self.pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> bool:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def run(args) -> int:
    """``jaxbp train``: the flags' :class:`TrainConfig`, set up, fitted, recorded."""
    config = config_from_args(args)
    out = args.out or pathlib.Path("runs") / _default_run_name(config)
    run_folder.check_start(out, config, resume=args.resume, overwrite=args.overwrite)
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
    epoch = run_folder.saved_epoch(out, config)
    if epoch is None:
        return (
            "interrupted before the first epoch ended, so no checkpoint was written; "
            "run the same command to start again"
        )
    command = ["jaxbp", "train", "--out", str(out)]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    for name, _, value in TrainConfig().differences(config):
        command += [_flags.flag(name), run_folder.show(name, value)]
    if args.devices is not None:
        command += ["--devices", str(args.devices)]
    if args.quiet:
        command.append("--quiet")
    return (
        f"interrupted; kept the checkpoint of epoch {epoch} of {config.epochs} in "
        f"{out / run_folder.CHECKPOINT}; resume with: {shlex.join(command)} --resume"
    )


def _train(args, config: TrainConfig, out: pathlib.Path, mesh) -> int:
    """The body of ``jaxbp train`` once its flags are checked: set up, fit, record."""
    num_devices = 1 if mesh is None else parallel.num_data_shards(mesh)
    run = setup(config, data_dir=args.data_dir)
    history: list[dict] = []
    start_epoch = 0
    if args.resume:
        run, history, start_epoch = run_folder.restore(out, run)
    run_folder.make_out_folder(out)
    record = run_folder.run_record(run, num_devices)
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

    def on_epoch(state, log: train.EpochLog):
        # Backprop runs record no alignment: their history keeps its old keys.
        history.append({k: v for k, v in log._asdict().items() if v is not None})
        run_folder.save(out, state, run, epoch=log.epoch, history=history)
        run_folder.write_metrics(out, record, history, timing)
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

    def on_epoch_then_stop(state, log: train.EpochLog):
        on_epoch(state, log)
        stop.check()  # a Ctrl-C during the epoch: stop now that it is saved

    try:
        with _StopAtEpochEnd() as stop:
            _, _, compile_timing = fit(
                run,
                start_epoch=start_epoch,
                on_epoch=on_epoch_then_stop,
                mesh=mesh,
                on_progress=progress,
            )
    finally:
        if progress is not None:
            progress.close()
    timing.update(compile_timing)
    run_folder.write_metrics(out, record, history, timing)
    title = f"{run.net}, {config.grad} gradients"
    if _plot_curves(out / "curves.png", history, title):
        plot_note = f", {out / 'curves.png'}"
    else:
        plot_note = " (pip install 'jaxbp[plot]' for curves.png)"
    ckpt_path = out / run_folder.CHECKPOINT
    print(
        f"final test accuracy {history[-1]['test_accuracy']:.4f}; wrote "
        f"{out / run_folder.METRICS}, {ckpt_path}{plot_note}"
    )
    return 0
