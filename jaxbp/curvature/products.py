"""Hessian- and Gauss-Newton-vector products of a network's loss, by hand.

For the batch objective ``L(theta) = (1/B) sum_i l(f(x_i; theta), y_i)`` and a
parameter direction ``v``:

.. math::

   H v = \\frac{\\partial^2 L}{\\partial \\theta^2} v, \\qquad
   G v = \\frac{1}{B} \\sum_i J_i^\\top H_{l,i} J_i v,

with ``J_i`` the Jacobian of example ``i``'s network output with respect to the
parameters and ``H_{l,i}`` the Hessian of its loss with respect to that output
(:func:`jaxbp.losses.hessian_vp`). ``H v`` is Pearlmutter's (1994) R-operator: a
forward R-pass and a backward R-pass beside the gradient's
(:mod:`jaxbp.curvature.rop`). ``G v`` is Schraudolph's (2002) product: the forward
R-pass gives ``J v`` at the output, the loss Hessian multiplies it, and the ordinary
delta rule carries ``H_l J v`` back as a cotangent, giving ``J^T H_l J v``. The two
differ by the terms of the backward R-pass that do not involve ``R{delta}``: each
activation's second derivative, and the couplings of a layer's parameters with those
below it (:mod:`jaxbp.curvature.rop`); for a network of piecewise-linear layers only
the couplings remain, so the diagonal blocks of ``H`` and ``G`` agree. The network's
output is its last layer's (after an output activation, which ``J`` therefore
includes), and ``H_l`` is the loss's Hessian with respect to it.

No ``jax.grad``, ``jax.vjp``, ``jax.jvp`` or ``jax.linearize`` is used; both are pure
functions and jit with the network spec static.
"""

import jax
import jax.numpy as jnp

from jaxbp.curvature.network import check_supported
from jaxbp.curvature.rop import chain_r_backward, chain_r_forward
from jaxbp.layers.base import chain_backward, chain_forward
from jaxbp.losses import hessian_vp

Array = jax.Array


def check_direction(params, v, what: str) -> None:
    """Raises ``ValueError`` unless ``v`` has the structure and shapes of ``params``."""
    want, got = jax.tree.structure(params), jax.tree.structure(v)
    if want != got:
        raise ValueError(
            f"{what}: v must have the structure of params, {want}; got {got}"
        )
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, p), u in zip(paths, jax.tree.leaves(v), strict=True):
        if jnp.shape(p) != jnp.shape(u):
            raise ValueError(
                f"{what}: v{jax.tree_util.keystr(path)} has shape "
                f"{jnp.shape(u)}, params has {jnp.shape(p)}"
            )


def forward_r(net, params, x, y, v, what: str):
    """The checked batch, the chain, its forward pass and forward R-pass.

    Returns:
      ``(chain, cp, cv, targets, out, caches, rout, rcaches)``: the chain of
      layers, its parameters and direction, the float targets, the output ``(B, K)``
      and caches, ``R{out} = J v`` and the forward R-pass's caches.
    """
    chain = check_supported(net, what)
    x, targets = net.check_batch(params, x, y)
    check_direction(params, v, what)
    cp, cv = chain.to_chain(params), chain.to_chain(v)
    out, caches, _ = chain_forward(chain.layers, cp, x, train=True)
    rout, rcaches = chain_r_forward(chain.layers, cp, cv, caches, None)
    return chain, cp, cv, targets, out, caches, rout, rcaches


def hvp(net, params, x: Array, y: Array, v):
    """The Hessian-vector product of the batch loss, ``H v``, by the R-operator.

    A forward pass, a forward R-pass (``R{z}``, ``R{a}``), and the backward pass with
    its R-pass (``R{delta}``, ``R{dW}``) beside it (Pearlmutter 1994): about twice the
    matrix products of a gradient, no autodiff.

    Args:
      net: an :class:`~jaxbp.MLP` or a :class:`~jaxbp.Sequential` network of Dense,
        Conv2D, Activation, Flatten, Reshape, MaxPool2D, AvgPool2D and Residual.
      params: its parameters.
      x: inputs ``(B, ...)``.
      y: integer labels ``(B,)`` or float targets ``(B, K)``.
      v: a direction, shaped like ``params``.

    Returns:
      ``H v``, shaped like ``params``: ``jax.jvp(jax.grad(net.loss), ...)``'s value.

    Raises:
      ValueError: naming the layer, for LayerNorm, BatchNorm, Dropout or any layer
        without a second-order rule; on a ``v`` not shaped like ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import MLP
      >>> net = MLP((3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> hv = hvp(net, params, x, y, params)
      >>> ref = jax.jvp(lambda p: jax.grad(net.loss)(p, x, y), (params,), (params,))[1]
      >>> bool(jnp.allclose(hv[0]["w"], ref[0]["w"], atol=1e-6))
      True
    """
    chain, cp, cv, targets, out, caches, rout, rcaches = forward_r(
        net, params, x, y, v, "hvp"
    )
    b = out.shape[0]
    dy = net.loss_fn.grad_out(out, targets) / b  # delta_out = dL/dout
    # R{delta_out} = H_l R{out} / B: the loss's Hessian times J v
    rdy = hessian_vp(net.objective, out, targets, rout) / b
    rgrads, _ = chain_r_backward(chain.layers, cp, cv, caches, rcaches, dy, rdy)
    return chain.from_chain(rgrads)


def ggn_vp(net, params, x: Array, y: Array, v):
    """The generalised Gauss-Newton-vector product ``G v = J^T H_l J v / B``.

    The forward R-pass gives ``J v`` at the output, the loss's Hessian multiplies it,
    and the delta rule carries ``H_l J v / B`` back as the output cotangent
    (Schraudolph 2002): the gradient's backward pass with a different cotangent.

    Args:
      net, params, x, y, v: as for :func:`hvp`.

    Returns:
      ``G v``, shaped like ``params``. ``G`` is positive semi-definite (every loss
      here is convex in the output).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import MLP
      >>> net = MLP((3, 4, 2), activation="relu")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> last = [jax.tree.map(jnp.zeros_like, params[0]), params[1]]
      >>> gv = ggn_vp(net, params, x, y, last)
      >>> hv = hvp(net, params, x, y, last)  # a ReLU net's diagonal blocks agree
      >>> bool(jnp.allclose(gv[1]["w"], hv[1]["w"], atol=1e-6))
      True
    """
    chain, cp, _, targets, out, caches, rout, _ = forward_r(
        net, params, x, y, v, "ggn_vp"
    )
    # the output cotangent H_l J v / B, carried back by the delta rule: J^T H_l J v / B
    u = hessian_vp(net.objective, out, targets, rout) / out.shape[0]
    grads, _, _ = chain_backward(chain.layers, cp, caches, u)
    return chain.from_chain(grads)
