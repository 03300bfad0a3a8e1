"""Input validation for :class:`jaxbp.MLP`: parameters, inputs and batches.

Each check raises an error that names the problem (the layer, the leaf, the shape or
dtype it found and the one it expected), so that a mistake is reported where it is made
rather than as a shape error deep inside a matrix product. :class:`jaxbp.MLP` calls
these before its mathematics; they are also its methods ``check_params``,
``check_inputs`` and ``check_batch``.

Only what is known while tracing can be checked under ``jax.jit``: shapes and dtypes.
Label values are checked whenever they are concrete (outside ``jit``); inside ``jit``
an out-of-range label turns its target row into NaN
(:func:`jaxbp.losses.prepare_targets`), so the loss and every gradient are NaN rather
than silently wrong.
"""

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.losses import prepare_targets

if TYPE_CHECKING:
    from jaxbp.mlp import MLP, Params

Array = jax.Array


def check_params(net: "MLP", params: "Params") -> None:
    """Checks that ``params`` matches the spec ``net``.

    Args:
      net: the network spec.
      params: a list of ``{"w": (fan_in, fan_out), "b": (fan_out,)}`` dicts.

    Raises:
      TypeError: if ``params`` is not a list of ``{"w", "b"}`` dicts or holds
        non-float or mixed dtypes.
      ValueError: on a wrong number of layers or a wrong shape.
    """
    if not isinstance(params, list | tuple):
        raise TypeError(
            f"params must be a list of {{'w', 'b'}} dicts, got {type(params).__name__}"
        )
    if len(params) != net.depth:
        raise ValueError(f"params has {len(params)} layers but {net} has {net.depth}")
    dtype = None
    layers = zip(params, net.sizes[:-1], net.sizes[1:], strict=True)
    for l, (layer, fan_in, fan_out) in enumerate(layers):
        if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
            keys = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
            raise TypeError(
                f"params[{l}] must be a dict with keys 'w' and 'b', got {keys}"
            )
        for name, shape in (("w", (fan_in, fan_out)), ("b", (fan_out,))):
            leaf = layer[name]
            if tuple(jnp.shape(leaf)) != shape:
                raise ValueError(
                    f"params[{l}]['{name}'] has shape {tuple(jnp.shape(leaf))} but "
                    f"layer {l} of {net} expects {shape}"
                )
            leaf_dtype = jnp.result_type(leaf)
            if not jnp.issubdtype(leaf_dtype, jnp.floating):
                raise TypeError(
                    f"params[{l}]['{name}'] has dtype {leaf_dtype}; parameters must "
                    "be floating point"
                )
            if dtype is not None and leaf_dtype != dtype:
                raise TypeError(
                    f"params[{l}]['{name}'] has dtype {leaf_dtype} but earlier "
                    f"parameters are {dtype}; use one dtype throughout"
                )
            dtype = leaf_dtype


def check_inputs(net: "MLP", params: "Params", x: Array) -> Array:
    """Checks ``params`` and ``x``; returns ``x`` in the parameters' dtype.

    A lower-precision float ``x`` (``float16``, ``bfloat16``) is cast up to the
    parameters' dtype, which loses nothing. A higher-precision ``x`` (``float64`` with
    ``float32`` parameters, under x64) is an error rather than a silent cast down.
    Without x64, JAX itself holds every array in 32 bits, so a NumPy ``float64`` array
    becomes ``float32`` as it does everywhere in JAX.

    Args:
      net: the network spec.
      params: the parameter list.
      x: inputs ``(B, sizes[0])``, floating point.

    Returns:
      ``x`` as a ``jax.Array`` of the parameters' dtype.

    Raises:
      ValueError: if ``x`` is not ``(B, sizes[0])``.
      TypeError: if ``x`` is not floating point, or is more precise than the
        parameters.
    """
    check_params(net, params)
    return check_x(x, (net.sizes[0],), jnp.result_type(params[0]["w"]))


def check_x(x: Array, input_shape: tuple[int, ...], param_dtype) -> Array:
    """Checks a batch of inputs against a per-example shape and the parameters' dtype.

    Args:
      x: inputs ``(B, *input_shape)``, floating point.
      input_shape: the per-example shape the network takes.
      param_dtype: the dtype of the parameters.

    Returns:
      ``x`` as a ``jax.Array`` of ``param_dtype``.

    Raises:
      ValueError: if ``x`` is not ``(B, *input_shape)``.
      TypeError: if ``x`` is not floating point, or is more precise than the
        parameters.
    """
    shape = tuple(jnp.shape(x))
    if len(input_shape) == 1:
        if len(shape) != 2:
            raise ValueError(
                f"x must be a 2-D batch (batch, {input_shape[0]}), got shape {shape}"
            )
        if shape[1] != input_shape[0]:
            raise ValueError(
                f"x has {shape[1]} features but the first layer expects "
                f"{input_shape[0]}"
            )
    elif len(shape) != len(input_shape) + 1 or shape[1:] != tuple(input_shape):
        want = ", ".join(["batch", *map(str, input_shape)])
        raise ValueError(f"x must be a batch ({want}), got shape {shape}")
    x_dtype = jnp.result_type(x)
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise TypeError(
            f"x has dtype {x_dtype}; inputs must be floating point (scale uint8 "
            "images to [0, 1] with jaxbp.data.to_float)"
        )
    if jnp.promote_types(x_dtype, param_dtype) != param_dtype:
        raise TypeError(
            f"x has dtype {x_dtype} but the parameters are {param_dtype}: casting x "
            "down would lose precision silently. Cast x yourself "
            f"(x.astype(jnp.{param_dtype})) or use {x_dtype} parameters "
            f"(net.init(key, dtype=jnp.{x_dtype}))"
        )
    return jnp.asarray(x, param_dtype)


def check_batch(
    net: "MLP", params: "Params", x: Array, y: Array
) -> tuple[Array, Array]:
    """Checks a batch; returns ``(x, targets)``, targets float ``(B, sizes[-1])``.

    Integer labels are range-checked whenever their values are concrete (outside
    ``jit``). Inside ``jit`` only shapes and dtypes can be checked, and a label out of
    range becomes a target row of NaN, so the loss and its gradients are NaN (and
    :func:`jaxbp.fit` stops naming the step) instead of silently wrong.

    Args:
      net: the network spec.
      params: the parameter list.
      x: inputs ``(B, sizes[0])``.
      y: integer labels ``(B,)`` in ``[0, sizes[-1])`` or float targets
        ``(B, sizes[-1])``.

    Returns:
      ``(x, targets)``: ``x`` as :func:`check_inputs` returns it and float targets
      ``(B, sizes[-1])`` of the same dtype (labels made one-hot).

    Raises:
      ValueError: on mismatched batch sizes, a wrong target width or labels out of
        range.
      TypeError: on a wrong dtype.
    """
    x = check_inputs(net, params, x)
    return x, check_targets(y, x, net.sizes[-1])


def check_targets(y: Array, x: Array, num_out: int) -> Array:
    """Checks labels or targets against a checked batch ``x``; returns float targets.

    Args:
      y: integer labels ``(B,)`` in ``[0, num_out)`` or float targets
        ``(B, num_out)``.
      x: the checked inputs (for the batch size and the dtype).
      num_out: the network's number of outputs.

    Returns:
      Float targets ``(B, num_out)`` in ``x``'s dtype (labels made one-hot; a label
      out of range, under ``jit``, a row of NaN).
    """
    y_shape = tuple(jnp.shape(y))
    y_dtype = jnp.result_type(y)
    if y_shape[:1] != x.shape[:1]:
        raise ValueError(
            f"y has batch size {y_shape[0] if y_shape else None} but x has "
            f"{x.shape[0]} (y shape {y_shape}, x shape {x.shape})"
        )
    if len(y_shape) == 1:
        if not jnp.issubdtype(y_dtype, jnp.integer):
            raise TypeError(
                f"y of shape {y_shape} must hold integer class labels, got dtype "
                f"{y_dtype}; float targets must be shaped (batch, {num_out})"
            )
        if not isinstance(y, jax.core.Tracer) and y_shape[0] > 0:
            labels = np.asarray(y)
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= num_out:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"label {bad} is out of range: labels must be in "
                    f"[0, {num_out - 1}] for {num_out} outputs"
                )
    elif len(y_shape) == 2:
        if y_shape[1] != num_out:
            raise ValueError(
                f"y has {y_shape[1]} columns but the last layer has {num_out} outputs"
            )
        if not jnp.issubdtype(y_dtype, jnp.floating):
            raise TypeError(f"float targets y must be floating point, got {y_dtype}")
    else:
        raise ValueError(
            f"y must be labels (batch,) or targets (batch, {num_out}), got {y_shape}"
        )
    return prepare_targets(jnp.asarray(y), num_out, x.dtype)
