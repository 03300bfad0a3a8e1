"""The diagonals of the Gauss-Newton matrix and of the Hessian, by hand.

**The Gauss-Newton diagonal** (exact). With ``H_{l,i} = S_i S_i^T`` each example's loss
Hessian in the output (:func:`jaxbp.losses.hessian_factor`, ``K`` columns), the GGN is

.. math::

   G = \\frac{1}{B} \\sum_i J_i^\\top S_i S_i^\\top J_i
     = \\frac{1}{B} \\sum_i \\sum_k (J_i^\\top s_{ik}) (J_i^\\top s_{ik})^\\top,

so its diagonal is the sum over examples and columns of squared *per-example*
gradients: each column ``s_k`` of the factor is backpropagated as the output cotangent
by the ordinary delta rule (all ``K`` at once, as ``K`` times the batch), and each
layer squares its per-example parameter gradient (:mod:`jaxbp.per_example_layers`).
For a dense layer ``(x_i (x) delta_ik)^2 = x_i^2 (x) delta_ik^2`` is never
materialised, and the sum over columns comes first: ``(x^2)^T sum_k delta_k^2``, one
product per layer. This is BackPACK's DiagGGN (Dangel, Kunstner
& Hennig 2020): ``K`` backward passes, one per class.

**Monte Carlo.** Replacing ``S_i`` by ``C_i``, whose columns are loss gradients at
targets drawn from the model's predictive distribution
(:func:`jaxbp.losses.sampled_hessian_factor`, ``E[C C^T] = H_l``) gives an unbiased
estimate at the cost of ``samples`` backward passes.

**The Hessian diagonal** of an MLP (Dense and Activation layers). The Hessian of the
batch loss with respect to a layer's output, ``M = d^2 L / dy^2``, is block-diagonal
over examples, and is carried down exactly (Martens, Sutskever & Swersky 2012;
Dangel et al. 2020, "Modular block-diagonal curvature approximations"):

.. math::

   M_z = f'(z) M_a f'(z) + \\mathrm{diag}\\big(f''(z) \\odot \\tfrac{\\partial L}
   {\\partial a}\\big), \\qquad M_x = W M_z W^\\top,

the residual term ``f'' * dL/da`` (absent from the GGN) included; and since
``z_i = x_i W + b``, the diagonal of the Hessian in ``W`` is
``sum_i x_i^2 (x) diag(M_{z,i})``. Each example's ``M`` is kept as signed columns,
``M = sum_c sign_c f_c f_c^T``: the loss factor's ``K`` columns, multiplied by ``f'``
and ``W`` on the way down, and for each smooth activation ``n`` more,
``sqrt|r_j| e_j`` with the sign of ``r = f'' * dL/da`` (BackPACK's DiagHessian). A
network of piecewise-linear activations keeps ``K`` columns and costs what
:func:`diag_ggn` does; each smooth layer adds its width.
"""

import jax
import jax.numpy as jnp

from jaxbp.activations import PIECEWISE_LINEAR, second_derivative
from jaxbp.curvature.network import check_supported, sum_leading, sum_over_columns
from jaxbp.layers import Activation, Dense
from jaxbp.layers.base import chain_forward
from jaxbp.layers.elementwise import activation_backward
from jaxbp.losses import hessian_factor, sampled_hessian_factor
from jaxbp.per_example_layers import map_layers, per_example_grads

Array = jax.Array


def _column_squares(layer, params, cache, deltas):
    """The columns' squares, summed over the columns (``deltas``' first axis): per
    example ``sum_k delta_k^2`` for a Dense layer (its input's ``x^2`` is applied
    once, in :func:`_finish`), else ``sum_{i,k} (dl_ik/dtheta)^2`` from the
    materialised per-example gradients, one column at a time."""
    if not jax.tree.leaves(params):
        return params
    if isinstance(layer, Dense):
        return {"delta2": sum_leading(deltas * deltas)}  # sum_k delta_k^2

    def squares(total, delta):
        grads = per_example_grads((layer,), [params], [cache], [delta])[0]
        return jax.tree.map(lambda t, g: t + sum_leading(g * g), total, grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.scan(squares, zeros, deltas)[0]


def _finish(layer, params, cache, summed):
    """A Dense layer's diagonal from ``sum_k delta_k^2``; the others' as summed."""
    if not isinstance(layer, Dense):
        return summed
    x, d2 = cache, summed["delta2"]  # d2 = sum_k delta_ik^2, (B, m)
    # sum_{i,k} (x_i (x) delta_ik)^2 = (x^2)^T sum_k delta_k^2 ; bias: sum_{i,k} delta^2
    return {"w": (x * x).T @ d2, "b": jnp.sum(d2, axis=0)}


def _diag_from_factor(chain, cp, caches, factor: Array, batch: int):
    """``(1/B) sum_{i,k} (J_i^T c_ik)^2`` for the columns ``c_k`` of ``factor``."""
    summed = sum_over_columns(chain, cp, caches, factor, _column_squares)
    total = map_layers(_finish, chain.layers, cp, caches, summed)
    return chain.from_chain(jax.tree.map(lambda t: t / batch, total))


def _forward(net, params, x, y, what):
    chain = check_supported(net, what)
    x, targets = net.check_batch(params, x, y)
    cp = chain.to_chain(params)
    out, caches, _ = chain_forward(chain.layers, cp, x, train=True)
    return chain, cp, targets, out, caches


def diag_ggn(net, params, x: Array, y: Array):
    """The exact diagonal of the generalised Gauss-Newton matrix of the batch loss.

    One backward pass per column of the loss Hessian's symmetric factor (``K``, the
    number of outputs), squaring each layer's per-example gradients.

    Args:
      net: an :class:`~jaxbp.MLP` or :class:`~jaxbp.Sequential` network (the layers
        :func:`jaxbp.hvp` takes).
      params: its parameters.
      x: inputs ``(B, ...)``.
      y: integer labels ``(B,)`` or float targets ``(B, K)``.

    Returns:
      ``diag(G)``, shaped like ``params``, non-negative.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import MLP
      >>> net = MLP((3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> d = diag_ggn(net, params, jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1]))
      >>> d[0]["w"].shape, bool(jnp.all(d[0]["w"] >= 0))
      ((3, 4), True)
    """
    chain, cp, targets, out, caches = _forward(net, params, x, y, "diag_ggn")
    factor = hessian_factor(net.objective, out, targets)  # H_l = S S^T, (B, K, K)
    return _diag_from_factor(chain, cp, caches, factor, out.shape[0])


def diag_ggn_mc(net, params, x: Array, y: Array, key: Array, samples: int = 1):
    """A Monte-Carlo estimate of the GGN's diagonal, unbiased, ``samples`` passes.

    Targets are drawn from the model's predictive distribution and the loss gradient
    at each is backpropagated (:func:`jaxbp.losses.sampled_hessian_factor`); for the
    cross-entropy this is the diagonal of the Fisher, estimated as BackPACK's
    DiagGGN-MC does.

    Args:
      net, params, x, y: as for :func:`diag_ggn`.
      key: a ``jax.random`` key.
      samples: draws per example, at least 1.

    Returns:
      An estimate of ``diag(G)`` shaped like ``params``, whose expectation over
      ``key`` is :func:`diag_ggn`'s.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    chain, cp, targets, out, caches = _forward(net, params, x, y, "diag_ggn_mc")
    factor = sampled_hessian_factor(net.objective, out, targets, key, samples)
    return _diag_from_factor(chain, cp, caches, factor, out.shape[0])


def diag_hessian(net, params, x: Array, y: Array):
    """The exact diagonal of the Hessian of the batch loss, for MLPs.

    Carries each example's Hessian with respect to a layer's output down the network
    (module docstring), including each activation's residual term
    ``f''(z) * dL/da``.

    Args:
      net: an :class:`~jaxbp.MLP`, or a :class:`~jaxbp.Sequential` network of Dense
        and Activation layers only.
      params, x, y: as for :func:`diag_ggn`.

    Returns:
      ``diag(H)``, shaped like ``params``.

    Raises:
      ValueError: naming the first layer that is not Dense or Activation.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import MLP
      >>> net = MLP((3, 4, 2), activation="relu")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> h, g = diag_hessian(net, params, x, y), diag_ggn(net, params, x, y)
      >>> bool(jnp.allclose(h[0]["w"], g[0]["w"], atol=1e-7))  # ReLU: no f'' terms
      True
    """
    chain = check_supported(net, "diag_hessian", allowed=(Dense, Activation))
    x, targets = net.check_batch(params, x, y)
    cp = chain.to_chain(params)
    out, caches, _ = chain_forward(chain.layers, cp, x, train=True)
    b = out.shape[0]
    # M = sum_c sign_c f_c f_c^T per example: the columns f (B, n, c) and their
    # signs (B, c), starting from the loss's factor, M_out = S S^T / B
    cols = hessian_factor(net.objective, out, targets) / jnp.sqrt(
        jnp.asarray(b, out.dtype)
    )
    signs = jnp.ones((b, cols.shape[-1]), out.dtype)
    grad = net.loss_fn.grad_out(out, targets) / b  # dL/dout
    diags = [None] * len(chain.layers)
    for i in range(len(chain.layers) - 1, -1, -1):
        layer, p, cache = chain.layers[i], cp[i], caches[i]
        if isinstance(layer, Activation):
            z, a = cache
            d1 = activation_backward(layer.name, z, a, jnp.ones_like(z))  # f'(z)
            cols = d1[:, :, None] * cols  # f'(z) M_a f'(z): each column times f'
            if layer.name not in PIECEWISE_LINEAR:
                # + diag(r), r = f''(z) dL/da: the columns sqrt|r_j| e_j, sign(r_j)
                r = second_derivative(layer.name, z, a) * grad
                eye = jnp.eye(r.shape[1], dtype=r.dtype)[None]
                cols = jnp.concatenate(
                    [cols, jnp.sqrt(jnp.abs(r))[:, :, None] * eye], -1
                )
                signs = jnp.concatenate([signs, jnp.sign(r)], axis=1)
            grad = d1 * grad  # dL/dz = f'(z) dL/da
            diags[i] = {}
        else:
            x_in = cache
            # diag(M_z) = sum_c sign_c f_c^2, (B, m)
            m_diag = jnp.einsum("bmc,bc->bm", cols * cols, signs)
            # d^2 L / dW_jm^2 = sum_i x_ij^2 M_z[i, m, m] ;  d^2 L / db_m^2 = sum_i M
            diags[i] = {"w": (x_in * x_in).T @ m_diag, "b": jnp.sum(m_diag, axis=0)}
            if i:
                w = p["w"]
                cols = jnp.einsum("jm,bmc->bjc", w, cols)  # M_x = W M_z W^T
                grad = grad @ w.T  # dL/dx = dL/dz W^T
    return chain.from_chain(diags)
