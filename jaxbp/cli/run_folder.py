"""The run folder of ``jaxbp train``: ``metrics.json``, the checkpoint, ``--resume``.

A run folder (``--out``) holds ``checkpoint.npz`` (the training state and, in its
meta, the run's :class:`~jaxbp.config.TrainConfig`, the last epoch and the history),
``metrics.json`` (the config, the network, the device, and every epoch's numbers and
times, rewritten atomically after each epoch) and ``curves.png``. This module checks
a folder before a run starts (``--resume`` continues only the same settings,
``--overwrite`` starts over, neither refuses to touch a checkpoint), writes the two
records and reads the checkpoint back.
"""

import json
import pathlib
import platform

import jax
import numpy as np

from jaxbp import checkpoint, models, train
from jaxbp._atomic import write_atomically
from jaxbp.cli._flags import UsageError, flag
from jaxbp.config import TrainConfig, TrainSetup

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"


def show(name: str, value) -> str:
    """A setting's value as its flag would be written."""
    if name == "hidden":
        return ",".join(map(str, value)) or "none"
    if name == "model":
        return "mlp" if value is None else models.preset_name(value) or value
    return "off" if value is None else str(value)  # floats: shortest exact form


# ----------------------------------------------------------------- checks
def check_out_folder(out: pathlib.Path) -> None:
    """Raises UsageError if ``out`` exists and is not a folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")


def make_out_folder(out: pathlib.Path) -> None:
    """Creates ``out``; raises UsageError, in one line, if it cannot."""
    check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"--out {out}: cannot create the folder ({e.strerror or e})"
        ) from None


def check_start(
    out: pathlib.Path, config: TrainConfig, *, resume: bool, overwrite: bool
) -> None:
    """Raises UsageError unless a run of ``config`` may start (or resume) in ``out``.

    A checkpoint already there is continued only with ``resume`` and the same
    settings (:func:`check_resume`), replaced only with ``overwrite``.
    """
    ckpt_path = out / CHECKPOINT
    check_out_folder(out)
    if ckpt_path.is_dir():
        raise UsageError(
            f"{ckpt_path} is a folder, where jaxbp train keeps its checkpoint file; "
            "move it away or choose another --out"
        )
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if ckpt_path.exists() and not (resume or overwrite):
        raise UsageError(
            f"{out} already holds a checkpoint; pass --resume to continue it or "
            "--overwrite to start over"
        )
    if resume:
        if not ckpt_path.exists():
            raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
        check_resume(ckpt_path, config)


def check_resume(ckpt_path: pathlib.Path, config: TrainConfig) -> None:
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
            f"{flag(name)} {show(name, old)} (saved) vs {show(name, new)} (now)"
            for name, old, new in changed
        )
        raise UsageError(
            f"--resume with different settings: {listed}; resume with the settings "
            f"of the run in {ckpt_path.parent}, or pass --overwrite to start over"
        )


def saved_epoch(out: pathlib.Path, config: TrainConfig) -> int | None:
    """The last epoch the checkpoint in ``out`` saved of this run, or ``None`` (no
    checkpoint, or another run's)."""
    try:
        meta = checkpoint.read_meta(out / CHECKPOINT)
        same_run = TrainConfig.from_dict(meta.get("config") or {}) == config
    except (ValueError, TypeError):
        return None
    return meta.get("epoch") if same_run else None


# ----------------------------------------------------------------- checkpoint
def save(
    out: pathlib.Path,
    state: train.TrainState,
    run: TrainSetup,
    *,
    epoch: int,
    history: list[dict],
) -> None:
    """Saves the state after ``epoch`` with the config and history in its meta."""
    checkpoint.save_checkpoint(
        out / CHECKPOINT,
        state,
        run.net,
        meta={"config": run.config.to_dict(), "epoch": epoch, "history": history},
    )


def restore(out: pathlib.Path, run: TrainSetup) -> tuple[TrainSetup, list[dict], int]:
    """``(run, history, start_epoch)``: ``run`` with the saved state, the saved
    history and the number of epochs it has trained."""
    state, meta = checkpoint.restore_train_state(out / CHECKPOINT, run.state)
    history, start_epoch = meta.get("history", []), int(meta.get("epoch", 0))
    return run._replace(state=state), history, start_epoch


# ----------------------------------------------------------------- metrics.json
def run_record(run: TrainSetup, num_devices: int) -> dict:
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


def write_metrics(
    out: pathlib.Path, record: dict, history: list[dict], timing: dict
) -> None:
    """Adds the epochs so far and their times to ``record`` and writes it to
    ``metrics.json`` atomically (temp file, fsync, rename)."""
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
    text = json.dumps(record, indent=2) + "\n"
    write_atomically(out / METRICS, text.encode())
