"""A damped K-FAC preconditioner as an optax transformation, from the factors by hand.

K-FAC (Martens & Grosse 2015) approximates each Dense or Conv2D layer's block of the
Gauss-Newton matrix by ``A (x) G`` (:func:`jaxbp.curvature.kfac_factors`) and
preconditions that layer's gradient, stacked as ``Theta = [dL/dW; dL/db]`` (rows the
inputs with the bias below, columns the outputs), by the inverse of the damped
product,

.. math::

   (A \\otimes G)^{-1} \\mathrm{vec}(\\Theta) = \\mathrm{vec}(A^{-1} \\Theta G^{-1}),
   \\qquad A \\leftarrow A + \\sqrt{\\lambda}\\, I, \\quad
   G \\leftarrow G + \\sqrt{\\lambda}\\, I,

the factored Tikhonov damping of Martens & Grosse (section 6.3, with ``pi = 1``).
The inverses are recomputed every ``update_every`` steps (from the batch of that step)
and reused in between; parameters of other layers pass through unchanged.

The transformation needs the batch: it is an ``optax.GradientTransformationExtraArgs``
whose ``update(grads, state, params, *, x, y, key=None)`` takes the inputs and targets
(and a key for the Monte-Carlo factors). Chain it with ``optax.scale(-lr)``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbp.curvature.kfac import kfac_factors
from jaxbp.curvature.network import check_supported
from jaxbp.layers import Residual
from jaxbp.sequential import Sequential

Array = jax.Array


class ScaleByKFACState(NamedTuple):
    """The state of :func:`scale_by_kfac`.

    Attributes:
      count: steps taken.
      inverses: per chain layer ``{"A": (A + sqrt(lambda) I)^-1, "G": ...}`` for
        Dense and Conv2D, ``{}`` for the others (nested lists for Residual blocks).
    """

    count: Array
    inverses: list


def _damped_inverses(factors, damping: float) -> list:
    def invert(f):
        if not f:
            return {}
        root = jnp.sqrt(jnp.asarray(damping, f["A"].dtype))
        # (A + sqrt(lambda) I)^-1 and (G + sqrt(lambda) I)^-1, both symmetric PD
        return {
            k: jnp.linalg.inv(f[k] + root * jnp.eye(f[k].shape[0], dtype=f[k].dtype))
            for k in ("A", "G")
        }

    return jax.tree.map(invert, factors, is_leaf=lambda t: isinstance(t, dict))


def _precondition(inverse, grads):
    """``A^-1 [dW; db] G^-1`` reshaped back, for one Dense or Conv2D layer."""
    if not inverse:
        return grads
    w, b = grads["w"], grads["b"]
    theta = jnp.concatenate([w.reshape(-1, w.shape[-1]), b[None, :]], axis=0)
    theta = inverse["A"] @ theta @ inverse["G"]  # vec^-1((A (x) G)^-1 vec(Theta))
    return {"w": theta[:-1].reshape(w.shape), "b": theta[-1]}


def scale_by_kfac(
    net, *, damping: float = 1e-3, update_every: int = 10, monte_carlo: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Preconditions gradients by the damped inverse Kronecker factors of each layer.

    Args:
      net: an :class:`~jaxbp.MLP` or :class:`~jaxbp.Sequential` network (the layers
        :func:`jaxbp.hvp` takes).
      damping: ``lambda > 0``; ``sqrt(lambda)`` is added to each factor's diagonal.
      update_every: recompute the factors and their inverses every this many steps.
      monte_carlo: the Monte-Carlo KFAC factor ``G`` (``key`` must then be passed to
        ``update``) instead of KFLR's exact one.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update(grads, state,
      params, *, x, y, key=None)`` takes the step's batch.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxbp import MLP
      >>> net = MLP((3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> opt = optax.chain(scale_by_kfac(net, damping=1e-2), optax.scale(-0.1))
      >>> state = opt.init(params)
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> grads = net.manual_grad(params, x, y)
      >>> updates, state = opt.update(grads, state, params, x=x, y=y)
      >>> updates[0]["w"].shape
      (3, 4)
    """
    if not (isinstance(damping, int | float) and damping > 0):
        raise ValueError(f"damping must be a positive number, got {damping!r}")
    if (
        isinstance(update_every, bool)
        or not isinstance(update_every, int)
        or (update_every < 1)
    ):
        raise ValueError(
            f"update_every must be a positive integer, got {update_every!r}"
        )
    chain = check_supported(net, "scale_by_kfac")

    def init(params):
        # identities shaped like the factors, read off a one-example batch's
        dtype = jax.tree.leaves(params)[0].dtype
        in_shape = net.input_shape if isinstance(net, Sequential) else net.sizes[:1]
        x0, y0 = jnp.zeros((1, *in_shape), dtype), jnp.zeros((1,), jnp.int32)
        shapes = jax.eval_shape(
            lambda p: chain.to_chain(kfac_factors(net, p, x0, y0)), params
        )
        inverses = jax.tree.map(lambda t: jnp.eye(t.shape[0], dtype=t.dtype), shapes)
        return ScaleByKFACState(jnp.zeros((), jnp.int32), inverses)

    def update(grads, state, params=None, *, x, y, key=None, **extra):
        del extra
        if monte_carlo and key is None:
            raise ValueError("scale_by_kfac(monte_carlo=True) needs update(..., key=)")

        def refresh(_):
            factors = chain.to_chain(
                kfac_factors(net, params, x, y, key if monte_carlo else None)
            )
            return _damped_inverses(factors, damping)

        inverses = jax.lax.cond(
            state.count % update_every == 0, refresh, lambda _: state.inverses, None
        )
        cg = chain.to_chain(grads)
        pre = _map_layers(chain.layers, inverses, cg)
        return chain.from_chain(pre), ScaleByKFACState(state.count + 1, inverses)

    return optax.GradientTransformationExtraArgs(init, update)


def _map_layers(layers, inverses, grads) -> list:
    return [
        _map_layers(layer.block, inv, g)
        if isinstance(layer, Residual)
        else _precondition(inv, g)
        for layer, inv, g in zip(layers, inverses, grads, strict=True)
    ]
