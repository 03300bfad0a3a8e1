"""A network as the chain of layers its curvature is computed on, and what is refused.

An :class:`~jaxbp.MLP` is the chain ``Dense, Activation(hidden), ..., Dense,
Activation(output)``: its parameter list ``[p_1, ..., p_L]`` is the chain's
``[p_1, {}, ..., p_L, {}]``. A :class:`~jaxbp.Sequential` network is its own chain.
:func:`as_chain` gives the chain and the two maps between the network's parameter
pytree and the chain's, so that every quantity of :mod:`jaxbp.curvature` is written
once, on layers.

Layers whose curvature is not written yet are refused here, at the boundary
(:func:`check_supported`), with a message that names the layer and its place.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.layers import (
    Activation,
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    Reshape,
    Residual,
)
from jaxbp.layers.base import chain_backward
from jaxbp.mlp import MLP
from jaxbp.per_example_layers import expand_deltas, map_layers

Array = jax.Array

#: The layer types every quantity of :mod:`jaxbp.curvature` supports.
SUPPORTED = (
    Dense,
    Conv2D,
    Activation,
    Flatten,
    Reshape,
    MaxPool2D,
    AvgPool2D,
    Residual,
)


class Chain(NamedTuple):
    """A network seen as a chain of layers.

    Attributes:
      layers: the layer specs.
      to_chain: the network's parameter pytree (or one shaped like it) to the
        chain's list, one entry per layer.
      from_chain: the inverse, for results shaped like the chain's parameters.
    """

    layers: tuple
    to_chain: Callable
    from_chain: Callable


def as_chain(net) -> Chain:
    """The chain of layers of an ``MLP`` or a ``Sequential`` network."""
    if isinstance(net, MLP):
        layers = []
        for l, width in enumerate(net.sizes[1:]):
            last = l == net.depth - 1
            act = net.output_activation if last else net.activation
            layers += [Dense(width), Activation(act)]
        return Chain(
            tuple(layers),
            lambda params: [e for p in params for e in (p, {})],
            lambda chain: list(chain[::2]),
        )
    return Chain(tuple(net.layers), list, list)


def check_supported(net, what: str, allowed=SUPPORTED) -> Chain:
    """:func:`as_chain`, after checking every layer (Residual blocks too) is allowed.

    Args:
      net: an ``MLP`` or a ``Sequential`` network.
      what: the quantity, for the message (``"hvp"``).
      allowed: the layer types it supports.

    Raises:
      ValueError: naming the first layer that is not supported, its index and the
        layers that are.
    """
    chain = as_chain(net)
    _check_layers(chain.layers, what, allowed, lambda i: net_layer(net, i))
    return chain


def net_layer(net, index: int) -> str:
    """``layer 3 of 8, BatchNorm()`` for the 1-based ``index`` of a chain."""
    if isinstance(net, MLP):
        layers = as_chain(net).layers
        return f"layer {index} of {len(layers)}, {layers[index - 1]}"
    return net.describe_layer(index)


def _check_layers(layers, what, allowed, where) -> None:
    for i, layer in enumerate(layers, start=1):
        if not isinstance(layer, allowed):
            names = ", ".join(t.__name__ for t in allowed)
            raise ValueError(
                f"{what} does not support {where(i)}: its second-order rule is not "
                f"written yet; {what} takes networks of {names}"
            )
        if isinstance(layer, Residual):
            block = layer.block
            _check_layers(
                block,
                what,
                allowed,
                lambda j, i=i, block=block: (
                    f"{where(i)}, block layer {j} of {len(block)}, {block[j - 1]}"
                ),
            )


def sum_over_columns(chain: Chain, cp, caches, factor: Array, per_layer: Callable):
    """``per_layer(layer, params, cache, deltas)`` of every layer, where ``deltas``
    stacks ``J^T c_k`` at the layer's output for every column ``c_k`` of ``factor``
    (its last axis) on a new leading axis; ``per_layer`` sums over it.

    Each column is an output cotangent carried down by the delta rule
    (``chain_backward``, per example: ``expand_deltas``); all columns go through one
    backward pass with ``K`` times the batch's rows (``vmap`` over the last axis).
    ``per_layer`` sees all ``K`` at once, so that a sum over columns and examples can
    be one matrix product (``G = sum_k g_k^T g_k`` is ``g^T g`` of the ``(K B, m)``
    stack) rather than ``K`` small ones.
    """

    def column(c_k):
        _, _, deltas = chain_backward(chain.layers, cp, caches, c_k)
        return expand_deltas(chain.layers, cp, caches, deltas)

    deltas = jax.vmap(column, in_axes=-1)(factor)
    return map_layers(per_layer, chain.layers, cp, caches, deltas)


def sum_leading(t: Array) -> Array:
    """``t`` summed over its first axis, by halving: ``t[:h] + t[h:2h]``, repeated.

    The same sum as ``jnp.sum(t, axis=0)``, in another order. Where that axis is short
    and the rest wide (``K = 10`` columns of ``(128, 512)`` deltas, ``B = 128``
    per-example gradients of a ``5x5x20x50`` kernel), XLA's CPU reduction ran 25-30x
    slower than these elementwise additions (7.5 against 0.26 ms and 15.9 against
    0.66 ms, jax 0.10.2 on a 2-core AMD EPYC).
    """
    while t.shape[0] > 1:
        half = t.shape[0] // 2
        head = t[:half] + t[half : 2 * half]
        t = jnp.concatenate([head, t[2 * half :]]) if t.shape[0] % 2 else head
    return t[0]
