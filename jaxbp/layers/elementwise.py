"""Layers without parameters that reshape or act elementwise: Activation, Flatten.

``Activation(name)`` applies one of :mod:`jaxbp.activations` and carries the cotangent
back through its hand-derived derivative, ``dL/dz = dL/da * f'(z)``; ``Flatten``
reshapes ``(B, ...)`` to ``(B, n)`` and its backward reshapes the cotangent back.
"""

import dataclasses
import math

import jax

from jaxbp.activations import get_activation
from jaxbp.layers.base import Shape

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
