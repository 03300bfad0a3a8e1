"""The layer protocol: a frozen spec with a pure forward and a hand-derived backward.

A layer is a frozen, hashable dataclass (so it can be a static argument of
``jax.jit``) holding only configuration. Its mathematics are five methods, all pure:

* ``output_shape(input_shape)``: the per-example output shape (no batch axis) for a
  per-example input shape; raises :class:`LayerShapeError` when the layer cannot take
  that input, saying what it expects and how to fix the network.
* ``init(key, input_shape, dtype)``: the layer's parameters, a dict of arrays
  (``{}`` for a layer without parameters).
* ``init_state(input_shape, dtype)``: the layer's non-trained state, a dict of arrays
  (``{}`` for all but :class:`~jaxbp.layers.BatchNorm`'s running statistics).
* ``forward(params, x, *, state, key, train)``: ``(y, cache, new_state)``, where
  ``x`` has a leading batch axis, ``cache`` is everything the backward needs and
  ``new_state`` is ``state`` after this batch (unchanged outside training).
* ``backward(params, cache, dy)``: ``(grads, dx)``, the vector-Jacobian product
  written by hand: ``grads = dy^T dy/dparams`` shaped like ``params`` and
  ``dx = dy^T dy/dx`` shaped like ``x``.

No backward may use ``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.linearize``,
``jax.linear_transpose`` or ``custom_vjp``; ``tests/test_layers.py`` patches them all to
raise and runs every layer's backward.

:func:`chain_forward` and :func:`chain_backward` compose layers: they are the one
delta rule that :class:`~jaxbp.Sequential` and :class:`~jaxbp.layers.Residual` share.
"""

from typing import Any, Protocol, runtime_checkable

import jax

Array = jax.Array
Shape = tuple[int, ...]
LayerParams = dict[str, Array]
LayerState = dict[str, Array]


class LayerShapeError(ValueError):
    """A layer was given an input of a shape it cannot take.

    The message says what the layer expects and what it got (per-example shapes, with
    ``B`` for the batch axis); :class:`~jaxbp.Sequential` prefixes the layer's index
    and name.
    """


@runtime_checkable
class Layer(Protocol):
    """What :class:`~jaxbp.Sequential` needs of a layer (see the module docstring)."""

    def output_shape(self, input_shape: Shape) -> Shape: ...

    def init(self, key: Array, input_shape: Shape, dtype) -> LayerParams: ...

    def init_state(self, input_shape: Shape, dtype) -> LayerState: ...

    def forward(
        self,
        params: LayerParams,
        x: Array,
        *,
        state: LayerState | None = None,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, Any, LayerState]: ...

    def backward(
        self, params: LayerParams, cache: Any, dy: Array
    ) -> tuple[LayerParams, Array]: ...


def shape_str(shape: Shape) -> str:
    """A batched shape as a message shows it: ``(B, 4, 4, 50)``."""
    return "(" + ", ".join(["B", *map(str, shape)]) + ")"


def chain_output_shapes(layers, input_shape: Shape) -> list[Shape]:
    """The per-example shape after each layer, ``[input_shape, s_1, ..., s_n]``.

    Raises:
      LayerShapeError: naming the first layer (its index, 1-based, and spec) that
        cannot take the shape it is given.
    """
    shapes = [tuple(input_shape)]
    for i, layer in enumerate(layers, start=1):
        try:
            shapes.append(tuple(layer.output_shape(shapes[-1])))
        except LayerShapeError as err:
            raise LayerShapeError(f"layer {i} {layer}: {err}") from None
    return shapes


def layer_key(key: Array | None, index: int) -> Array | None:
    """Layer ``index``'s own random stream: the chain's key with the index folded in."""
    return None if key is None else jax.random.fold_in(key, index)


def chain_forward(
    layers, params: list, x: Array, *, states=None, key=None, train=False
) -> tuple[Array, list, list]:
    """Runs layers in order, keeping each input and cache for the backward pass.

    Args:
      layers: the layer specs.
      params: one parameter dict per layer.
      x: the input, batch axis first.
      states: one state dict per layer, or ``None`` (no running statistics).
      key: a ``jax.random`` key for random layers (each layer folds in its index).
      train: training mode (batch statistics, dropout) or evaluation.

    Returns:
      ``(y, caches, new_states)``: the output, every layer's cache and state.
    """
    if states is None:
        states = [None] * len(layers)
    caches, new_states = [], []
    for i, (layer, p, s) in enumerate(zip(layers, params, states, strict=True)):
        x, cache, s = layer.forward(p, x, state=s, key=layer_key(key, i), train=train)
        caches.append(cache)
        new_states.append(s)
    return x, caches, new_states


def chain_backward(
    layers, params: list, caches: list, dy: Array
) -> tuple[list, Array, list[Array]]:
    """The delta rule through a chain: each layer's backward, from the last down.

    ``delta_{i-1} = backward_i(delta_i)``: the cotangent of the chain's output is
    carried down one layer at a time, each layer turning the cotangent of its output
    into those of its parameters and its input.

    Returns:
      ``(grads, dx, deltas)``: one gradient dict per layer, the cotangent of the
      chain's input, and ``deltas[i]``, the cotangent of layer ``i``'s output.
    """
    n = len(layers)
    grads, deltas = [None] * n, [None] * n
    for i in range(n - 1, -1, -1):
        deltas[i] = dy
        grads[i], dy = layers[i].backward(params[i], caches[i], dy)
    return grads, dy, deltas
