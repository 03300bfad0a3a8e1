"""Kronecker factors of the Gauss-Newton matrix per layer (KFLR, KFAC, KFC), by hand.

For a dense layer ``z = x W + b`` write ``a_i = [x_i, 1]`` (the input with a 1 for
the bias) and ``theta = [W; b]``, an ``(n + 1, m)`` matrix. With ``g_ik`` the
cotangent at ``z_i`` of the ``k``-th column of example ``i``'s loss-Hessian factor
(``H_{l,i} = sum_k s_ik s_ik^T``, carried down by the delta rule), the layer's block
of the GGN is ``(1/B) sum_i sum_k (a_i a_i^T) (x) (g_ik g_ik^T)`` (row-major
``vec(theta)``), and K-FAC (Martens & Grosse 2015) approximates it by the product of
the expectations:

.. math::

   G_\\theta \\approx A \\otimes G, \\qquad
   A = \\frac{1}{B} \\sum_i a_i a_i^\\top, \\qquad
   G = \\frac{1}{B} \\sum_i \\sum_k g_{ik} g_{ik}^\\top.

With the exact factor of the loss Hessian (:func:`jaxbp.losses.hessian_factor`) ``G``
is KFLR's (Botev, Ritter & Barber 2017); with columns drawn from the model's
predictive distribution (:func:`jaxbp.losses.sampled_hessian_factor`) it is the
Monte-Carlo KFAC's, whose expectation is KFLR's. For one example (``B = 1``) the
product is exact: ``A (x) G`` is then the GGN block itself.

A convolution is a dense layer applied at ``T`` output positions to the unfolded
patches ``a_it = [P_it, 1]``; KFC (Grosse & Martens 2016) takes

.. math::

   A = \\frac{1}{B} \\sum_i \\sum_t a_{it} a_{it}^\\top, \\qquad
   G = \\frac{1}{B} \\sum_i \\sum_k \\frac{1}{T} \\sum_t g_{itk} g_{itk}^\\top,

with the kernel flattened to ``(kh kw C, F)`` in HWIO order, and ``theta`` its rows
with the bias below.
"""

import jax
import jax.numpy as jnp

from jaxbp.curvature.network import check_supported, sum_over_columns
from jaxbp.layers import Conv2D, Dense, Residual
from jaxbp.layers.base import chain_forward
from jaxbp.losses import hessian_factor, sampled_hessian_factor
from jaxbp.per_example_layers import conv_patches

Array = jax.Array


def _with_ones(a: Array) -> Array:
    """``[a, 1]`` along the last axis: the input of ``[W; b]``."""
    return jnp.concatenate([a, jnp.ones((*a.shape[:-1], 1), a.dtype)], axis=-1)


def _input_factor(layer, cache) -> dict:
    """``sum_i a_i a_i^T`` (over positions too, for a convolution), unscaled."""
    if isinstance(layer, Dense):
        a = _with_ones(cache)
        return {"A": a.T @ a}  # sum_i a_i a_i^T
    if isinstance(layer, Conv2D):
        patches = conv_patches(layer, cache)  # (B, T, kh kw C)
        a = _with_ones(patches.reshape(-1, patches.shape[-1]))
        return {"A": a.T @ a}  # sum_{i,t} a_it a_it^T
    return {}


def _output_factor(layer, params, cache, deltas) -> dict:
    """``sum_i sum_k g_ik g_ik^T`` (averaged over positions), unscaled; ``deltas``
    stacks the columns ``k`` on its first axis."""
    del params, cache
    if isinstance(layer, Dense):
        g = deltas.reshape(-1, deltas.shape[-1])  # (K B, m)
        return {"G": g.T @ g}  # sum_{i,k} g_ik g_ik^T, one product
    if isinstance(layer, Conv2D):
        positions = deltas.shape[2] * deltas.shape[3]  # (K, B, H, W, F)
        g = deltas.reshape(-1, deltas.shape[-1])
        return {"G": g.T @ g / positions}  # sum_{i,k} (1/T) sum_t g_itk g_itk^T
    return {}


def _inputs(layers, caches) -> list:
    """:func:`_input_factor` of every layer, Residual blocks entered."""
    return [
        _inputs(layer.block, cache)
        if isinstance(layer, Residual)
        else _input_factor(layer, cache)
        for layer, cache in zip(layers, caches, strict=True)
    ]


def kfac_factors(net, params, x: Array, y: Array, key=None, *, samples: int = 1):
    """The Kronecker factors ``A`` and ``G`` of every Dense and Conv2D layer.

    Args:
      net: an :class:`~jaxbp.MLP` or :class:`~jaxbp.Sequential` network (the layers
        :func:`jaxbp.hvp` takes).
      params: its parameters.
      x: inputs ``(B, ...)``.
      y: integer labels ``(B,)`` or float targets ``(B, K)``.
      key: ``None`` for KFLR (``G`` from the exact factor of the loss Hessian, ``K``
        backward passes), or a ``jax.random`` key for the Monte-Carlo KFAC
        (``samples`` backward passes).
      samples: draws per example for the Monte-Carlo ``G``.

    Returns:
      A list shaped like the network's parameter list: for a Dense layer of ``n``
      inputs and ``m`` outputs ``{"A": (n + 1, n + 1), "G": (m, m)}``, for a Conv2D
      ``{"A": (kh kw C + 1, kh kw C + 1), "G": (F, F)}``, ``{}`` for the others
      (nested lists for Residual blocks). ``jnp.kron(A, G)`` approximates the GGN
      block of the row-major ``[W; b]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import MLP
      >>> net = MLP((3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> factors = kfac_factors(net, params, jnp.ones((5, 3)), jnp.zeros(5, int))
      >>> factors[0]["A"].shape, factors[0]["G"].shape
      ((4, 4), (4, 4))
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    chain = check_supported(net, "kfac_factors")
    x, targets = net.check_batch(params, x, y)
    cp = chain.to_chain(params)
    out, caches, _ = chain_forward(chain.layers, cp, x, train=True)
    b = out.shape[0]
    if key is None:
        factor = hessian_factor(net.objective, out, targets)  # KFLR: exact columns
    else:
        factor = sampled_hessian_factor(net.objective, out, targets, key, samples)
    # every column (K, or the samples) at once: one backward pass
    g_sums = sum_over_columns(chain, cp, caches, factor, _output_factor)
    a_sums = _inputs(chain.layers, caches)
    # A = (1/B) sum_i a_i a_i^T ;  G = (1/B) sum_i sum_k g_ik g_ik^T
    merged = jax.tree.map(
        lambda a, g: {**a, **g},
        a_sums,
        g_sums,
        is_leaf=lambda t: isinstance(t, dict),
    )
    return chain.from_chain(jax.tree.map(lambda t: t / b, merged))
