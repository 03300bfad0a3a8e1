"""The hand-derived backward pass: the generalised delta rule, in matrix form.

This module implements backpropagation as Rumelhart, Hinton & Williams (1986) derive it,
with no autodiff anywhere (no ``jax.grad``, ``jax.vjp``, ``jax.jvp``,
``jax.linearize`` or ``custom_vjp``). For a dense layer ``l``

.. math::

   z_l = a_{l-1} W_l + b_l, \\qquad a_l = f_l(z_l),

the error signal ``delta_l = dL/dz_l`` obeys

.. math::

   \\delta_L = \\frac{\\partial L}{\\partial a_L} \\odot f_L'(z_L), \\qquad
   \\delta_{l-1} = (\\delta_l W_l^\\top) \\odot f_{l-1}'(z_{l-1}),

and the parameter gradients are ``dL/dW_l = a_{l-1}^T delta_l`` and
``dL/db_l = sum_batch delta_l``.

The functions here work on a :class:`ForwardCache` (every ``a`` and ``z`` of one forward
pass) and know nothing of :class:`jaxbp.MLP`, which composes them. The dense and
activation steps are the layer functions of :mod:`jaxbp.layers` (:func:`dense`,
:func:`dense_param_grads`, :func:`dense_input_grad`, :func:`activation_backward`):
one delta rule for the MLP and for :class:`jaxbp.Sequential` networks.
"""

from typing import NamedTuple

import jax

from jaxbp.activations import Activation
from jaxbp.layers.dense import dense, dense_input_grad, dense_param_grads
from jaxbp.layers.elementwise import activation_backward
from jaxbp.losses import Loss

Array = jax.Array
Params = list[dict[str, Array]]


class ForwardCache(NamedTuple):
    """Everything the backward pass needs from one forward pass.

    Attributes:
      a: activations ``[a_0, ..., a_L]``: ``a_0`` is the input ``(B, n_0)``, ``a_L`` the
        network output ``(B, n_L)``.
      z: pre-activations ``[z_1, ..., z_L]``, ``z_l`` shaped ``(B, n_l)``.
    """

    a: list[Array]
    z: list[Array]


def forward_pass(
    params: Params, x: Array, hidden: Activation, output: Activation
) -> ForwardCache:
    """Runs the network forward and keeps every activation and pre-activation.

    Args:
      params: list of ``{"w": (n_{l-1}, n_l), "b": (n_l,)}``, one per layer.
      x: inputs ``(B, n_0)``.
      hidden: activation of every layer but the last.
      output: activation of the last layer.

    Returns:
      The :class:`ForwardCache`; ``cache.a[-1]`` is the output ``(B, n_L)``.
    """
    a, zs, acts = x, [], [x]
    last = len(params) - 1
    for l, layer in enumerate(params):
        z = dense(layer, a)  # z_l = a_{l-1} W_l + b_l
        a = (output if l == last else hidden).fn(z)  # a_l = f_l(z_l)
        zs.append(z)
        acts.append(a)
    return ForwardCache(a=acts, z=zs)


def output_delta(cache: ForwardCache, targets: Array, output: Activation, loss: Loss):
    """The error signal at the output, per example: ``dl_i/dz_L``.

    Args:
      cache: the forward cache.
      targets: float targets ``(B, n_L)``.
      output: the output activation.
      loss: the per-example loss.

    Returns:
      ``delta_L`` shaped ``(B, n_L)``: the gradient of each example's own loss (not yet
      divided by the batch size).
    """
    # delta_L = dl/da_L * f_L'(z_L); with the fused softmax cross-entropy (identity
    # output) grad_out is already dl/dz_L = softmax(z_L) - y.
    delta = loss.grad_out(cache.a[-1], targets)
    return activation_backward(output.name, cache.z[-1], cache.a[-1], delta)


def backward_deltas(
    params: Params, cache: ForwardCache, delta_out: Array, hidden: Activation
) -> list[Array]:
    """Carries the output error back through the transposed weights.

    Args:
      params: the network's parameters.
      cache: the forward cache of the same parameters.
      delta_out: ``dL/dz_L`` shaped ``(B, n_L)``.
      hidden: the hidden activation.

    Returns:
      ``[delta_1, ..., delta_L]``, ``delta_l = dL/dz_l`` shaped ``(B, n_l)``.
    """
    deltas = [delta_out]
    for l in range(len(params) - 1, 0, -1):
        # delta_{l-1} = (delta_l W_l^T) * f'(z_{l-1})
        back = dense_input_grad(params[l], deltas[0])
        deltas.insert(
            0, activation_backward(hidden.name, cache.z[l - 1], cache.a[l], back)
        )
    return deltas


def grads_from_deltas(cache: ForwardCache, deltas: list[Array]) -> Params:
    """Parameter gradients of the batch from the error signals.

    Args:
      cache: the forward cache.
      deltas: ``[delta_1, ..., delta_L]`` from :func:`backward_deltas`.

    Returns:
      A list of ``{"w": (n_{l-1}, n_l), "b": (n_l,)}`` shaped like ``params``.
    """
    return [
        # dL/dW_l = a_{l-1}^T delta_l ;  dL/db_l = sum_i delta_l[i]
        dense_param_grads(a_prev, delta)
        for a_prev, delta in zip(cache.a[:-1], deltas, strict=True)
    ]


def input_grad(params: Params, deltas: list[Array]) -> Array:
    """The input gradient ``dL/dx = delta_1 W_1^T``, shaped ``(B, n_0)``."""
    return dense_input_grad(params[0], deltas[0])
