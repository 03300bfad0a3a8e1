"""Activation functions, each paired with its hand-derived derivative.

Every activation is an :class:`Activation`: the function ``f(z)`` and its derivative
``f'(z)``, written out by hand. The derivative receives both the pre-activation ``z``
and the activation ``a = f(z)`` that the forward pass already computed, so rules such
as ``sigmoid'(z) = a (1 - a)`` (the logistic rule of Rumelhart, Hinton & Williams 1986)
reuse the cached value instead of recomputing it.

None of the derivatives here use autodiff; ``tests/test_activations.py`` checks each one
against ``jax.grad`` of its function.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

Array = jax.Array

#: Negative slope of ``leaky_relu`` (the common default of PyTorch and JAX).
LEAKY_RELU_SLOPE = 0.01


class Activation(NamedTuple):
    """An elementwise activation and its hand-derived derivative.

    Attributes:
      name: the name it is registered under.
      fn: ``f(z) -> a``, elementwise.
      deriv: ``f'(z)`` as a function of ``(z, a)`` where ``a = f(z)``.
    """

    name: str
    fn: Callable[[Array], Array]
    deriv: Callable[[Array, Array], Array]


def _identity(z: Array) -> Array:
    return z


def _identity_deriv(z: Array, a: Array) -> Array:
    # f(z) = z  =>  f'(z) = 1
    del a
    return jnp.ones_like(z)


def _sigmoid(z: Array) -> Array:
    return jax.nn.sigmoid(z)


def _sigmoid_deriv(z: Array, a: Array) -> Array:
    # f(z) = 1 / (1 + e^-z)  =>  f'(z) = f(z) (1 - f(z))
    del z
    return a * (1 - a)


def _tanh(z: Array) -> Array:
    return jnp.tanh(z)


def _tanh_deriv(z: Array, a: Array) -> Array:
    # f(z) = tanh z  =>  f'(z) = 1 - tanh^2 z
    del z
    return 1 - a * a


def _relu(z: Array) -> Array:
    # jax.nn.relu, not jnp.maximum(z, 0): autodiff of maximum splits ties and gives
    # 1/2 at z = 0, which happens whenever a whole layer below is dead.
    return jax.nn.relu(z)


def _relu_deriv(z: Array, a: Array) -> Array:
    # f(z) = max(z, 0)  =>  f'(z) = [z > 0]  (0 at z = 0, as jax.grad takes it)
    del a
    return (z > 0).astype(z.dtype)


def _leaky_relu(z: Array) -> Array:
    return jnp.where(z > 0, z, LEAKY_RELU_SLOPE * z)


def _leaky_relu_deriv(z: Array, a: Array) -> Array:
    # f(z) = z if z > 0 else s z  =>  f'(z) = 1 if z > 0 else s
    del a
    return jnp.where(z > 0, 1, LEAKY_RELU_SLOPE).astype(z.dtype)


def _elu(z: Array) -> Array:
    # expm1 of a clamped z so that the unused branch never overflows for large z. The
    # clamp is a where, not jnp.minimum(z, 0): autodiff of minimum splits the tie and
    # would give elu'(0) = 1/2 instead of 1.
    return jnp.where(z > 0, z, jnp.expm1(jnp.where(z > 0, 0, z)))


def _elu_deriv(z: Array, a: Array) -> Array:
    # f(z) = z if z > 0 else e^z - 1  =>  f'(z) = 1 if z > 0 else e^z = f(z) + 1
    return jnp.where(z > 0, 1, a + 1).astype(z.dtype)


def _softplus(z: Array) -> Array:
    return jnp.logaddexp(z, 0)


def _softplus_deriv(z: Array, a: Array) -> Array:
    # f(z) = log(1 + e^z)  =>  f'(z) = e^z / (1 + e^z) = sigmoid(z)
    del a
    return jax.nn.sigmoid(z)


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _gelu(z: Array) -> Array:
    # Exact GELU (Hendrycks & Gimpel 2016): z * Phi(z), Phi the standard normal CDF.
    return z * 0.5 * (1 + erf(z * _SQRT_HALF))


def _gelu_deriv(z: Array, a: Array) -> Array:
    # f(z) = z Phi(z)  =>  f'(z) = Phi(z) + z phi(z),  phi(z) = e^{-z^2/2} / sqrt(2 pi)
    del a
    cdf = 0.5 * (1 + erf(z * _SQRT_HALF))
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return cdf + z * pdf


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation("identity", _identity, _identity_deriv),
        Activation("sigmoid", _sigmoid, _sigmoid_deriv),
        Activation("tanh", _tanh, _tanh_deriv),
        Activation("relu", _relu, _relu_deriv),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_deriv),
        Activation("elu", _elu, _elu_deriv),
        Activation("softplus", _softplus, _softplus_deriv),
        Activation("gelu", _gelu, _gelu_deriv),
    )
}


def get_activation(name: str) -> Activation:
    """Looks up an activation by name.

    Args:
      name: one of ``identity``, ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu``,
        ``elu``, ``softplus``, ``gelu``.

    Returns:
      The :class:`Activation` with its function and hand-derived derivative.

    Raises:
      ValueError: if ``name`` is not a known activation.

    Examples:
      >>> import jax.numpy as jnp
      >>> act = get_activation("sigmoid")
      >>> a = act.fn(jnp.zeros(2))
      >>> act.deriv(jnp.zeros(2), a).tolist()
      [0.25, 0.25]
    """
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(ACTIVATIONS)
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {known}"
        ) from None


# --------------------------------------------------------------- second derivatives
# f''(z), written out by hand for the curvature of :mod:`jaxbp.curvature` (the
# R-operator's backward pass and the Hessian diagonal), each as a function of
# ``(z, a)`` with ``a = f(z)``, as ``deriv`` is. At a kink (relu, leaky_relu at 0)
# f'' is 0, the value jax.jvp(jax.grad) takes; elu's is e^0 = 1 at 0, from its
# negative branch, as jax's where picks it.


def _zero_second(z: Array, a: Array) -> Array:
    # f piecewise linear (identity, relu, leaky_relu)  =>  f''(z) = 0
    del a
    return jnp.zeros_like(z)


def _sigmoid_second(z: Array, a: Array) -> Array:
    # f' = a (1 - a)  =>  f'' = f' (1 - 2a) = a (1 - a) (1 - 2a)
    del z
    return a * (1 - a) * (1 - 2 * a)


def _tanh_second(z: Array, a: Array) -> Array:
    # f' = 1 - a^2  =>  f'' = -2 a f' = -2 a (1 - a^2)
    del z
    return -2 * a * (1 - a * a)


def _elu_second(z: Array, a: Array) -> Array:
    # f' = 1 if z > 0 else e^z  =>  f'' = 0 if z > 0 else e^z = a + 1
    return jnp.where(z > 0, 0, a + 1).astype(z.dtype)


def _softplus_second(z: Array, a: Array) -> Array:
    # f' = sigmoid(z)  =>  f'' = sigmoid(z) (1 - sigmoid(z)) = sigmoid(z) sigmoid(-z),
    # the second form without 1 - sigmoid(z)'s cancellation for large z
    del a
    return jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)


def _gelu_second(z: Array, a: Array) -> Array:
    # f' = Phi(z) + z phi(z), phi' = -z phi  =>  f'' = 2 phi(z) - z^2 phi(z)
    del a
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return (2 - z * z) * pdf


#: The activations with ``f'' = 0`` everywhere (at their kink too): no second-order
#: term of their own in a Hessian.
PIECEWISE_LINEAR = frozenset({"identity", "relu", "leaky_relu"})

#: ``f''(z, a)`` of every activation, by name.
SECOND_DERIVATIVES: dict[str, Callable[[Array, Array], Array]] = {
    "identity": _zero_second,
    "sigmoid": _sigmoid_second,
    "tanh": _tanh_second,
    "relu": _zero_second,
    "leaky_relu": _zero_second,
    "elu": _elu_second,
    "softplus": _softplus_second,
    "gelu": _gelu_second,
}


def second_derivative(name: str, z: Array, a: Array) -> Array:
    """``f''(z)`` of the activation ``name``, written by hand, given ``a = f(z)``.

    Args:
      name: an activation of :data:`ACTIVATIONS`.
      z: pre-activations, any shape.
      a: ``f(z)``, the same shape.

    Returns:
      ``f''(z)``, shaped like ``z``; 0 for the piecewise-linear activations
      (``identity``, ``relu``, ``leaky_relu``), also at their kink.

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.zeros(1)
      >>> second_derivative("tanh", z, jnp.tanh(z)).tolist()
      [-0.0]
    """
    get_activation(name)  # an unknown name is a ValueError listing the known
    return SECOND_DERIVATIVES[name](z, a)
