"""The residual block ``y = x + block(x)``: a branching graph whose backward sums paths.

He et al. (2016) add a block's output to its input. The input feeds two paths, the
identity and the block, so by the multivariate chain rule its cotangent is the sum of
the cotangents along both:

.. math::

   \\frac{\\partial L}{\\partial x} = \\frac{\\partial L}{\\partial y}
   + \\Big(\\frac{\\partial\\, \\mathrm{block}}{\\partial x}\\Big)^\\top
   \\frac{\\partial L}{\\partial y}.

The block is a chain of layers run by :func:`~jaxbp.layers.chain_forward` and
:func:`~jaxbp.layers.chain_backward`, the same functions that run a
:class:`~jaxbp.Sequential` network.
"""

import dataclasses

import jax

from jaxbp.layers.base import (
    Layer,
    LayerShapeError,
    Shape,
    chain_backward,
    chain_forward,
    chain_output_shapes,
    shape_str,
)

Array = jax.Array


def as_layer_tuple(layers, owner: str) -> tuple:
    """``layers`` (one layer or a sequence) as a tuple, each checked to be a layer."""
    layers = (layers,) if isinstance(layers, Layer) else tuple(layers)
    if not layers:
        raise ValueError(f"{owner} needs at least one layer")
    for i, layer in enumerate(layers, start=1):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{owner} layer {i} is {layer!r}, not a layer: a layer has "
                "output_shape, init, init_state, forward and backward "
                "(see jaxbp.layers.base)"
            )
    return layers


@dataclasses.dataclass(frozen=True)
class Residual:
    """``y = x + block(x)`` for a block that keeps the shape of its input.

    Args:
      block: a layer or a sequence of layers; its parameters are a list with one
        entry per layer, like a :class:`~jaxbp.Sequential` network's.
    """

    block: tuple

    def __post_init__(self):
        object.__setattr__(self, "block", as_layer_tuple(self.block, "Residual"))

    def __str__(self) -> str:
        return f"Residual({', '.join(map(str, self.block))})"

    def _shapes(self, input_shape: Shape) -> list[Shape]:
        try:
            shapes = chain_output_shapes(self.block, input_shape)
        except LayerShapeError as err:
            raise LayerShapeError(f"in its block, {err}") from None
        if shapes[-1] != tuple(input_shape):
            raise LayerShapeError(
                f"its block maps {shape_str(input_shape)} to {shape_str(shapes[-1])}; "
                "x + block(x) needs the block to keep the shape (use SAME padding "
                "and as many features as the input has channels)"
            )
        return shapes

    def output_shape(self, input_shape: Shape) -> Shape:
        self._shapes(input_shape)
        return tuple(input_shape)

    def init(self, key: Array, input_shape: Shape, dtype) -> list:
        shapes = self._shapes(input_shape)
        keys = jax.random.split(key, len(self.block))
        return [
            layer.init(k, s, dtype)
            for layer, k, s in zip(self.block, keys, shapes, strict=False)
        ]

    def init_state(self, input_shape: Shape, dtype) -> list:
        shapes = self._shapes(input_shape)
        return [
            layer.init_state(s, dtype)
            for layer, s in zip(self.block, shapes, strict=False)
        ]

    def forward(self, params, x, *, state=None, key=None, train=False):
        fx, caches, new_state = chain_forward(
            self.block, params, x, states=state, key=key, train=train
        )
        return x + fx, caches, new_state  # y = x + block(x)

    def backward(self, params, cache, dy):
        grads, dx_block, _ = chain_backward(self.block, params, cache, dy)
        # dL/dx = dL/dy (the identity path) + block^T dL/dy (the block's path)
        return grads, dy + dx_block
