"""Checkpoints: the training state in one ``.npz`` file, written atomically.

A checkpoint holds the parameters under their key paths (``params/0/w``,
``params/0/b``, ..., ``params/4/1/w`` for the second layer of a residual block that
is layer 5), a :class:`~jaxbp.Sequential`'s running statistics the same way
(``model_state/1/mean``), a learning rule's fixed feedback matrices the same way
(``feedback/1``, :mod:`jaxbp.feedback`), the flattened optimizer state, the step, the
PRNG key data and a JSON ``meta`` record (the network spec, an MLP's sizes and
activations or a Sequential's canonical layer spec, and whatever the caller adds, such
as the training config and history). :func:`load_params` needs nothing but the file;
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

from jaxbp import models
from jaxbp._atomic import write_atomically
from jaxbp.mlp import MLP, Params
from jaxbp.sequential import Sequential
from jaxbp.train import TrainState

Net = MLP | Sequential

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


def _name(prefix: str, key_path) -> str:
    """A leaf's name in the file: ``params/3/w`` for the key path ``[3]['w']``."""
    parts = [str(getattr(k, "idx", getattr(k, "key", k))) for k in key_path]
    return "/".join([prefix, *parts])


def _net_record(net: Net) -> dict:
    """The JSON record of a network spec, from which :func:`_net_of` rebuilds it."""
    if isinstance(net, Sequential):
        return {
            "spec": models.to_spec(net.layers),
            "input_shape": list(net.input_shape),
            "objective": net.objective,
        }
    return {
        "sizes": list(net.sizes),
        "activation": net.activation,
        "output_activation": net.output_activation,
        "objective": net.objective,
    }


def save_checkpoint(
    path: str | os.PathLike, state: TrainState, net: Net, *, meta: dict | None = None
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
    for prefix in ("params", "model_state", "feedback"):
        for key_path, leaf in jax.tree.leaves_with_path(getattr(state, prefix)):
            arrays[_name(prefix, key_path)] = np.asarray(leaf)
    opt_leaves = jax.tree.leaves(state.opt_state)
    for i, leaf in enumerate(opt_leaves):
        arrays[f"opt_state/{i}"] = np.asarray(leaf)
    arrays["step"] = np.asarray(state.step)
    arrays["key"] = np.asarray(jax.random.key_data(state.key))
    record = {
        "format": FORMAT_VERSION,
        "net": _net_record(net),
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


def load_checkpoint(path: str | os.PathLike) -> tuple[Net, Params, dict]:
    """Loads the network spec, parameters and metadata of a checkpoint.

    Args:
      path: a file written by :func:`save_checkpoint` (e.g. ``RUN/checkpoint.npz``
        from ``jaxbp train --out RUN``).

    Returns:
      ``(net, params, meta)``: the :class:`~jaxbp.MLP` or
      :class:`~jaxbp.Sequential`, its parameters (a list with one dict of
      ``jax.Array`` per layer), and the JSON metadata. A Sequential with BatchNorm
      also needs its running statistics to evaluate: :func:`load_model_state`.

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


def _net_of(meta: dict, path) -> Net:
    """The network spec a read checkpoint records."""
    try:
        record = meta["net"]
        if "spec" not in record:
            return MLP(**{**record, "sizes": tuple(record["sizes"])})
        layers = models.parse(record["spec"])
        input_shape = tuple(record["input_shape"])
        objective = record["objective"]
    except (KeyError, TypeError):
        raise _not_a_checkpoint(path, "it records no network") from None
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {path} records a network this jaxbp cannot build: {e}"
        ) from None
    return Sequential(layers, input_shape=input_shape, objective=objective)


def _named_tree(arrays: dict, prefix: str, template, path):
    """The arrays named ``prefix/...`` in the structure of ``template``."""
    leaves, treedef = jax.tree.flatten_with_path(template)
    try:
        values = [jnp.asarray(arrays[_name(prefix, kp)]) for kp, _ in leaves]
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path} lacks {e}") from None
    return jax.tree.unflatten(treedef, values)


def _net_and_params(arrays: dict, meta: dict, path) -> tuple[Net, Params]:
    """The network spec and parameters held by a read checkpoint."""
    net = _net_of(meta, path)
    template = jax.eval_shape(net.init, jax.random.key(0))
    params = _named_tree(arrays, "params", template, path)
    net.check_params(params)
    return net, params


def _model_state(arrays: dict, net: Net, path):
    """A Sequential's running statistics from a read checkpoint; ``None`` for an
    MLP."""
    if not isinstance(net, Sequential):
        return None
    return _named_tree(arrays, "model_state", jax.eval_shape(net.init_state), path)


def load_params(path: str | os.PathLike) -> Params:
    """Just the parameters of a checkpoint: a list with one dict per layer."""
    return load_checkpoint(path)[1]


def load_model_state(path: str | os.PathLike) -> list | None:
    """A Sequential's non-trained state (BatchNorm's running statistics), as
    ``net.forward(params, x, state=...)`` takes it; ``None`` for an MLP.

    Raises:
      CheckpointError: as :func:`load_checkpoint`.
    """
    arrays, meta = _read(path)
    return _model_state(arrays, _net_of(meta, path), path)


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
    model_state = _model_state(arrays, net, path)
    fb = None
    if template.feedback is not None:
        fb = _named_tree(arrays, "feedback", template.feedback, path)
    for name, saved_tree, want_tree in (
        ("parameters", params, template.params),
        ("running statistics", model_state, template.model_state),
        ("feedback matrices", fb, template.feedback),
    ):
        if jax.tree.structure(saved_tree) != jax.tree.structure(want_tree):
            raise CheckpointError(
                f"checkpoint {path} holds {net}, whose {name} do not fit the run's "
                "network"
            )
        wanted = jax.tree.leaves(want_tree)
        for saved, want in zip(jax.tree.leaves(saved_tree), wanted, strict=True):
            if saved.shape != want.shape or saved.dtype != want.dtype:
                raise CheckpointError(
                    f"checkpoint {path} holds {name} {saved.shape} {saved.dtype} "
                    f"where the run expects {want.shape} {want.dtype}"
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
        model_state=model_state,
        feedback=fb,
    )
    return state, meta


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint (config, epoch, history) without its arrays.

    Raises:
      CheckpointError: if the file is missing, corrupt or not a checkpoint.
    """
    return _read(path)[1]
