"""Checkpoints: the training state in one ``.npz`` file, written atomically.

A checkpoint holds the parameters under readable names (``params/0/w``,
``params/0/b``, ...), the flattened optimizer state, the step, the PRNG key data and a
JSON ``meta`` record (the network spec and whatever the caller adds, such as the
training config and history). :func:`load_params` needs nothing but the file;
:func:`restore_train_state` puts the optimizer state back into the structure of a
template state made the same way as the one saved.

Writing goes to a temporary file in the same folder, is flushed and ``fsync``-ed, and
is renamed over the destination with ``os.replace``, so a reader (or a process killed
mid-write) sees either the old complete checkpoint or the new complete one.
"""

import io
import json
import os
import pathlib
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._atomic import write_atomically
from jaxbp.mlp import MLP, Params
from jaxbp.train import TrainState

FORMAT_VERSION = 1
#: What a checkpoint is, for the errors about files that are not one.
_WHAT_IT_IS = (
    "a jaxbp checkpoint is the .npz file that jaxbp.save_checkpoint writes, such as "
    "the checkpoint.npz that `jaxbp train --out RUN` writes after every epoch"
)
#: The first bytes of an .npz file (a zip archive).
_NPZ_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, not a checkpoint, or does not fit what
    it is loaded into."""


def save_checkpoint(
    path: str | os.PathLike, state: TrainState, net: MLP, *, meta: dict | None = None
) -> pathlib.Path:
    """Writes ``state`` to ``path`` atomically (temp file, fsync, rename).

    Args:
      path: destination file (conventionally ``checkpoint.npz``).
      state: the :class:`~jaxbp.train.TrainState` to save.
      net: the network spec, recorded so the file can be loaded on its own.
      meta: extra JSON-serialisable information (config, history, epoch).

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    arrays: dict[str, np.ndarray] = {}
    for l, layer in enumerate(state.params):
        for name in ("w", "b"):
            arrays[f"params/{l}/{name}"] = np.asarray(layer[name])
    opt_leaves = jax.tree.leaves(state.opt_state)
    for i, leaf in enumerate(opt_leaves):
        arrays[f"opt_state/{i}"] = np.asarray(leaf)
    arrays["step"] = np.asarray(state.step)
    arrays["key"] = np.asarray(jax.random.key_data(state.key))
    record = {
        "format": FORMAT_VERSION,
        "net": {
            "sizes": list(net.sizes),
            "activation": net.activation,
            "output_activation": net.output_activation,
            "objective": net.objective,
        },
        "opt_state_leaves": len(opt_leaves),
        "key_impl": str(jax.random.key_impl(state.key)),
        **(meta or {}),
    }
    arrays["meta"] = np.frombuffer(json.dumps(record).encode(), np.uint8)

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())
    return path


def _not_a_checkpoint(path: pathlib.Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a jaxbp checkpoint: {why}; {_WHAT_IT_IS}")


def _read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file; {_WHAT_IT_IS}"
        )
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPZ_MAGIC))
        if not _NPZ_MAGIC.startswith(head):
            raise _not_a_checkpoint(path, "it is not an .npz archive")
        if head != _NPZ_MAGIC:  # cut off within its first bytes
            raise EOFError(f"the file holds {len(head)} bytes")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        if "meta" not in arrays:
            raise _not_a_checkpoint(path, "it has no 'meta' record")
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except CheckpointError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        NotImplementedError,  # zipfile: a corrupt header names an unknown method
        RuntimeError,  # zipfile: an entry flagged as encrypted
    ) as e:
        if "allow_pickle" in str(e):  # numpy's advice to load object arrays unsafely
            raise _not_a_checkpoint(path, "it holds Python objects") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from e
    if not isinstance(meta, dict) or "format" not in meta:
        raise _not_a_checkpoint(path, "its 'meta' record is not jaxbp's")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {meta.get('format')}, expected "
            f"{FORMAT_VERSION}"
        )
    return arrays, meta


def load_checkpoint(path: str | os.PathLike) -> tuple[MLP, Params, dict]:
    """Loads the network spec, parameters and metadata of a checkpoint.

    Args:
      path: a file written by :func:`save_checkpoint` (e.g. ``RUN/checkpoint.npz``
        from ``jaxbp train --out RUN``).

    Returns:
      ``(net, params, meta)``: the :class:`~jaxbp.MLP`, its parameters as a list of
      ``{"w", "b"}`` dicts of ``jax.Array``, and the JSON metadata.

    Raises:
      CheckpointError: if the file is missing, corrupt, incomplete or not a
        checkpoint.

    Examples:
      >>> net, params, meta = load_checkpoint("run/checkpoint.npz")  # doctest: +SKIP
      >>> net.forward(params, x).argmax(-1)  # doctest: +SKIP
    """
    arrays, meta = _read(path)
    net, params = _net_and_params(arrays, meta, path)
    return net, params, meta


def _net_and_params(arrays: dict, meta: dict, path) -> tuple[MLP, Params]:
    """The network spec and parameters held by a read checkpoint."""
    try:
        net = MLP(**{**meta["net"], "sizes": tuple(meta["net"]["sizes"])})
    except (KeyError, TypeError):
        raise _not_a_checkpoint(path, "it records no network") from None
    try:
        params = [
            {name: jnp.asarray(arrays[f"params/{l}/{name}"]) for name in ("w", "b")}
            for l in range(net.depth)
        ]
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path} lacks {e}") from None
    net.check_params(params)
    return net, params


def load_params(path: str | os.PathLike) -> Params:
    """Just the parameters of a checkpoint: a list of ``{"w", "b"}`` dicts."""
    return load_checkpoint(path)[1]


def restore_train_state(
    path: str | os.PathLike, template: TrainState
) -> tuple[TrainState, dict]:
    """Restores the full :class:`~jaxbp.train.TrainState` of a checkpoint.

    Args:
      path: the checkpoint file.
      template: a state built the same way as the saved one (same network and
        optimizer), e.g. by :func:`jaxbp.train.init_train_state`; only its structure,
        shapes and dtypes are used.

    Returns:
      ``(state, meta)``.

    Raises:
      CheckpointError: if the file does not fit the template.
    """
    arrays, meta = _read(path)
    net, params = _net_and_params(arrays, meta, path)
    if len(params) != len(template.params):
        raise CheckpointError(
            f"checkpoint {path} holds {net} with {len(params)} layers but the run "
            f"expects {len(template.params)}"
        )
    template_params = jax.tree.leaves(template.params)
    for saved, want in zip(jax.tree.leaves(params), template_params, strict=True):
        if saved.shape != want.shape or saved.dtype != want.dtype:
            raise CheckpointError(
                f"checkpoint {path} holds parameters {saved.shape} {saved.dtype} where "
                f"the run expects {want.shape} {want.dtype}"
            )
    leaves, treedef = jax.tree.flatten(template.opt_state)
    if meta.get("opt_state_leaves") != len(leaves):
        raise CheckpointError(
            f"checkpoint {path} has {meta.get('opt_state_leaves')} optimizer-state "
            f"arrays but this optimizer has {len(leaves)}: was it saved with another "
            "optimizer?"
        )
    try:
        saved_opt = [arrays[f"opt_state/{i}"] for i in range(len(leaves))]
        step, key_data = arrays["step"], arrays["key"]
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path} lacks {e}") from None
    opt_leaves: list[Any] = []
    for i, (saved, want) in enumerate(zip(saved_opt, leaves, strict=True)):
        if saved.shape != np.shape(want):
            raise CheckpointError(
                f"checkpoint {path}: optimizer state {i} has shape {saved.shape}, "
                f"expected {np.shape(want)}"
            )
        opt_leaves.append(jnp.asarray(saved, dtype=jnp.result_type(want)))
    key = jax.random.wrap_key_data(
        jnp.asarray(key_data), impl=jax.random.key_impl(template.key)
    )
    state = TrainState(
        params=params,
        opt_state=jax.tree.unflatten(treedef, opt_leaves),
        step=jnp.asarray(step, jnp.int32),
        key=key,
    )
    return state, meta


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint (config, epoch, history) without its arrays.

    Raises:
      CheckpointError: if the file is missing, corrupt or not a checkpoint.
    """
    return _read(path)[1]
