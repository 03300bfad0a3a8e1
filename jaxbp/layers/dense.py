"""The dense (fully connected) layer and its delta rule.

For inputs ``x`` of shape ``(B, n)``, weights ``W`` of shape ``(n, m)`` and a bias
``b`` of shape ``(m,)``:

.. math::

   z = x W + b, \\qquad
   \\frac{\\partial L}{\\partial W} = x^\\top \\delta, \\qquad
   \\frac{\\partial L}{\\partial b} = \\sum_i \\delta_i, \\qquad
   \\frac{\\partial L}{\\partial x} = \\delta W^\\top,

with ``delta = dL/dz`` (Rumelhart, Hinton & Williams 1986, eqs. 13-14 in matrix form).
The three functions :func:`dense`, :func:`dense_param_grads` and
:func:`dense_input_grad` are the dense part of every manual backward pass in jaxbp:
:mod:`jaxbp.backward` (the MLP) and :class:`Dense` both call them.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxbp.layers.base import LayerParams, LayerShapeError, Shape, shape_str

Array = jax.Array

#: Weight initialisations by name: ``he`` is He (Kaiming) normal, ``std =
#: sqrt(2 / fan_in)``, for the ReLU family; ``glorot`` is Glorot (Xavier) uniform,
#: ``limit = sqrt(6 / (fan_in + fan_out))``, for sigmoid, tanh and linear layers.
INITS = ("he", "glorot")


def init_weight(key: Array, shape: Shape, fan_in: int, fan_out: int, init: str, dtype):
    """A weight array drawn by the named initialisation (see :data:`INITS`)."""
    if init == "he":
        return math.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, dtype)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def dense(params: LayerParams, x: Array) -> Array:
    """``z = x W + b`` for ``x`` of shape ``(B, n)``; returns ``(B, m)``."""
    # The bias row is broadcast explicitly, so this also runs with
    # jax_numpy_rank_promotion="raise".
    return x @ params["w"] + params["b"][None, :]


def dense_param_grads(x: Array, delta: Array) -> LayerParams:
    """``{"w": x^T delta, "b": sum_i delta_i}`` from inputs and ``delta = dL/dz``."""
    # dL/dW = x^T delta ;  dL/db = sum_i delta_i
    return {"w": x.T @ delta, "b": jnp.sum(delta, axis=0)}


def dense_input_grad(params: LayerParams, delta: Array) -> Array:
    """``dL/dx = delta W^T``, shaped like the input ``(B, n)``."""
    return delta @ params["w"].T


def check_features(name: str, value) -> int:
    """A positive integer size, or a ``ValueError`` naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Dense:
    """A fully connected layer ``z = x W + b`` on ``(B, n)`` inputs.

    Args:
      features: the output width ``m``.
      weight_init: the weight initialisation, ``"he"`` or ``"glorot"`` (:data:`INITS`);
        biases start at zero.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> layer = Dense(3)
      >>> layer.output_shape((4,))
      (3,)
      >>> params = layer.init(jax.random.key(0), (4,), jnp.float32)
      >>> y, cache, _ = layer.forward(params, jnp.ones((2, 4)))
      >>> grads, dx = layer.backward(params, cache, jnp.ones_like(y))
      >>> grads["w"].shape, dx.shape
      ((4, 3), (2, 4))
    """

    features: int
    weight_init: str = "he"

    def __post_init__(self):
        check_features("Dense features", self.features)
        if self.weight_init not in INITS:
            raise ValueError(
                f"Dense weight_init must be one of {INITS}, got {self.weight_init!r}"
            )

    def __str__(self) -> str:
        return f"Dense({self.features})"

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            hint = "; add Flatten() before it" if len(input_shape) > 1 else ""
            raise LayerShapeError(
                f"expects (B, n) inputs, got {shape_str(input_shape)}{hint}"
            )
        return (self.features,)

    def init(self, key: Array, input_shape: Shape, dtype) -> LayerParams:
        (fan_in,) = input_shape
        w = init_weight(
            key, (fan_in, self.features), fan_in, self.features, self.weight_init, dtype
        )
        return {"w": w, "b": jnp.zeros((self.features,), dtype)}

    def init_state(self, input_shape: Shape, dtype) -> dict:
        return {}

    def forward(self, params, x, *, state=None, key=None, train=False):
        return dense(params, x), x, state

    def backward(self, params, cache, dy):
        x = cache
        return dense_param_grads(x, dy), dense_input_grad(params, dy)
