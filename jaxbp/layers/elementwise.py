"""Layers without parameters that reshape or act elementwise: Activation, Flatten,
Reshape.

``Activation(name)`` applies one of :mod:`jaxbp.activations` and carries the cotangent
back through its hand-derived derivative, ``dL/dz = dL/da * f'(z)``; ``Flatten``
reshapes ``(B, ...)`` to ``(B, n)`` and its backward reshapes the cotangent back.
"""

import dataclasses
import math

import jax

from jaxbp.activations import get_activation
from jaxbp.layers.base import LayerShapeError, Shape, shape_str

Array = jax.Array


def activation_backward(name: str, z: Array, a: Array, da: Array) -> Array:
    """``dL/dz = dL/da * f'(z)`` for the activation ``name``, given ``a = f(z)``."""
    if name == "identity":
        return da  # f'(z) = 1
    return da * get_activation(name).deriv(z, a)


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise activation layer, ``a = f(z)``, on inputs of any shape.

    Args:
      name: one of the activations of :mod:`jaxbp.activations` (``identity``,
        ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu``, ``elu``, ``softplus``,
        ``gelu``).
    """

    name: str

    def __post_init__(self):
        get_activation(self.name)  # an unknown name is a ValueError listing the known

    def __str__(self) -> str:
        return f"Activation({self.name})"

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def init(self, key: Array, input_shape: Shape, dtype) -> dict:
        return {}

    def init_state(self, input_shape: Shape, dtype) -> dict:
        return {}

    def forward(self, params, x, *, state=None, key=None, train=False):
        a = get_activation(self.name).fn(x)
        return a, (x, a), state

    def backward(self, params, cache, dy):
        z, a = cache
        return {}, activation_backward(self.name, z, a, dy)


@dataclasses.dataclass(frozen=True)
class Flatten:
    """Reshapes ``(B, d_1, ..., d_k)`` to ``(B, d_1 * ... * d_k)``, row-major."""

    def __str__(self) -> str:
        return "Flatten()"

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def init(self, key: Array, input_shape: Shape, dtype) -> dict:
        return {}

    def init_state(self, input_shape: Shape, dtype) -> dict:
        return {}

    def forward(self, params, x, *, state=None, key=None, train=False):
        # The input is the cache: its shape is all the backward needs, and keeping
        # the array costs nothing (it is alive in the caller anyway).
        return x.reshape(x.shape[0], -1), x, state

    def backward(self, params, cache, dy):
        # dL/dx is dL/dy laid back out in the input's shape.
        return {}, dy.reshape(cache.shape)


@dataclasses.dataclass(frozen=True)
class Reshape:
    """Reshapes each example to ``shape``, e.g. flat MNIST ``(B, 784)`` to images
    ``(B, 28, 28, 1)`` before a :class:`~jaxbp.layers.Conv2D`.

    Args:
      shape: the per-example output shape; its size must equal the input's.
    """

    shape: tuple[int, ...]

    def __post_init__(self):
        shape = tuple(self.shape)
        if not shape or any(
            isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape
        ):
            raise ValueError(
                f"Reshape shape must be positive integers, got {self.shape!r}"
            )
        object.__setattr__(self, "shape", shape)

    def __str__(self) -> str:
        return f"Reshape({', '.join(map(str, self.shape))})"

    def output_shape(self, input_shape: Shape) -> Shape:
        if math.prod(input_shape) != math.prod(self.shape):
            raise LayerShapeError(
                f"cannot reshape {shape_str(input_shape)} "
                f"({math.prod(input_shape)} values per example) to "
                f"{shape_str(self.shape)} ({math.prod(self.shape)})"
            )
        return self.shape

    def init(self, key: Array, input_shape: Shape, dtype) -> dict:
        return {}

    def init_state(self, input_shape: Shape, dtype) -> dict:
        return {}

    def forward(self, params, x, *, state=None, key=None, train=False):
        return x.reshape(x.shape[0], *self.shape), x, state

    def backward(self, params, cache, dy):
        return {}, dy.reshape(cache.shape)
