"""Losses (training objectives), each with its gradient written by hand.

A :class:`Loss` is defined by a *per-example* loss ``l(out_i, y_i)``; the objective the
network minimises is its mean over the batch,

.. math::

   L = \\frac{1}{B} \\sum_{i=1}^{B} l(\\mathrm{out}_i, y_i),

so ``dL/dout_i = (1/B) dl/dout_i``. Each loss supplies ``dl/dout`` per example
(``grad_out``) and, for completeness of the ``custom_vjp`` rule, ``dl/dy``
(``grad_target``). Targets are always a float array shaped like the output; integer
class labels are turned into one-hot rows by :func:`prepare_targets` first.

``softmax_cross_entropy`` treats the output as logits and its ``grad_out`` is the fused
rule ``softmax(z) - y`` with respect to the logits ``z``; it therefore requires an
``identity`` output activation.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Loss(NamedTuple):
    """A per-example loss and its hand-derived gradients.

    Attributes:
      name: the name it is registered under.
      per_example: ``l(out, y) -> (B,)``, with ``out`` and ``y`` shaped ``(B, O)``.
      grad_out: ``dl/dout -> (B, O)``, the gradient of each example's own loss (not
        divided by the batch size).
      grad_target: ``dl/dy -> (B, O)``, per example.
      needs_logits: whether the output must be the raw logits (identity output
        activation), as for the fused softmax cross-entropy.
    """

    name: str
    per_example: Callable[[Array, Array], Array]
    grad_out: Callable[[Array, Array], Array]
    grad_target: Callable[[Array, Array], Array]
    needs_logits: bool = False

    def value(self, out: Array, y: Array) -> Array:
        """The batch objective: the mean of the per-example loss, a scalar."""
        return jnp.mean(self.per_example(out, y))


def _half_sse(out: Array, y: Array) -> Array:
    # l = 1/2 sum_j (out_j - y_j)^2   (Rumelhart, Hinton & Williams 1986, eq. 2)
    diff = out - y
    return 0.5 * jnp.sum(diff * diff, axis=-1)


def _half_sse_grad_out(out: Array, y: Array) -> Array:
    # dl/dout_j = out_j - y_j
    return out - y


def _half_sse_grad_target(out: Array, y: Array) -> Array:
    # dl/dy_j = -(out_j - y_j)
    return y - out


def _mse(out: Array, y: Array) -> Array:
    # l = 1/O sum_j (out_j - y_j)^2, so that mean_i l_i is the mean over all elements
    diff = out - y
    return jnp.mean(diff * diff, axis=-1)


def _mse_grad_out(out: Array, y: Array) -> Array:
    # dl/dout_j = 2 (out_j - y_j) / O
    return (2 / out.shape[-1]) * (out - y)


def _mse_grad_target(out: Array, y: Array) -> Array:
    # dl/dy_j = -2 (out_j - y_j) / O
    return (2 / out.shape[-1]) * (y - out)


def _softmax_cross_entropy(z: Array, y: Array) -> Array:
    # l = -sum_j y_j log softmax(z)_j
    return -jnp.sum(y * jax.nn.log_softmax(z, axis=-1), axis=-1)


def _softmax_cross_entropy_grad_out(z: Array, y: Array) -> Array:
    # dl/dz_k = softmax(z)_k sum_j y_j - y_k, which is softmax(z) - onehot(y) for a
    # one-hot (or any normalised) target: the fused softmax + cross-entropy rule.
    p = jax.nn.softmax(z, axis=-1)
    return p * jnp.sum(y, axis=-1, keepdims=True) - y


def _softmax_cross_entropy_grad_target(z: Array, y: Array) -> Array:
    # dl/dy_j = -log softmax(z)_j
    del y
    return -jax.nn.log_softmax(z, axis=-1)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("half_sse", _half_sse, _half_sse_grad_out, _half_sse_grad_target),
        Loss("mse", _mse, _mse_grad_out, _mse_grad_target),
        Loss(
            "softmax_cross_entropy",
            _softmax_cross_entropy,
            _softmax_cross_entropy_grad_out,
            _softmax_cross_entropy_grad_target,
            needs_logits=True,
        ),
    )
}


def get_loss(name: str) -> Loss:
    """Looks up a loss by name.

    Args:
      name: one of ``half_sse``, ``mse``, ``softmax_cross_entropy``.

    Returns:
      The :class:`Loss` with its per-example value and hand-derived gradients.

    Raises:
      ValueError: if ``name`` is not a known loss.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss = get_loss("half_sse")
      >>> float(loss.value(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])))
      2.5
    """
    try:
        return LOSSES[name]
    except KeyError:
        known = ", ".join(LOSSES)
        raise ValueError(f"unknown loss {name!r}; choose one of: {known}") from None


def prepare_targets(y: Array, num_outputs: int, dtype) -> Array:
    """Turns targets into a float ``(B, num_outputs)`` array.

    An integer label outside ``[0, num_outputs)`` becomes a row of NaN rather than
    ``jax.nn.one_hot``'s row of zeros (which would silently drop the example from the
    loss): the loss and every gradient computed from it are then NaN. Under
    ``jax.jit`` label values cannot be checked, so this is how a bad label shows.

    Args:
      y: integer class labels ``(B,)`` (made one-hot) or float targets
        ``(B, num_outputs)`` (cast to ``dtype``).
      num_outputs: the width of the network's output.
      dtype: the float dtype of the output.

    Returns:
      Targets shaped ``(B, num_outputs)`` with dtype ``dtype``.

    Examples:
      >>> import jax.numpy as jnp
      >>> prepare_targets(jnp.array([1, 3]), 3, jnp.float32).tolist()
      [[0.0, 1.0, 0.0], [nan, nan, nan]]
    """
    if y.ndim == 1:
        onehot = jax.nn.one_hot(y, num_outputs, dtype=dtype)
        valid = (y >= 0) & (y < num_outputs)
        return jnp.where(valid[:, None], onehot, jnp.asarray(jnp.nan, dtype))
    return y.astype(dtype)


# ------------------------------------------------------------------ second order
# The Hessian of each per-example loss with respect to the network output, written out
# by hand, for :mod:`jaxbp.curvature`:
#
#   half_sse:               H = I
#   mse:                    H = (2 / O) I
#   softmax_cross_entropy:  H = s (diag(p) - p p^T),  p = softmax(z), s = sum_j y_j
#
# (s = 1 for one-hot targets). Each H is positive semi-definite and has the symmetric
# factor S, H = S S^T, that the Gauss-Newton diagonal and the KFLR factors
# backpropagate, one column per output:
#
#   half_sse: S = I;   mse: S = sqrt(2 / O) I;
#   softmax_cross_entropy: S = sqrt(s) (diag(sqrt p) - p sqrt(p)^T)
#
# (S S^T = diag(p) - 2 p p^T + p (sum_j p_j) p^T = diag(p) - p p^T), and a Monte-Carlo
# factor whose columns c satisfy E[c c^T] = H: sqrt(2 / O) e and e ~ N(0, I) for the
# squared errors (the gradient of the loss at a target drawn from the Gaussian the
# loss is the log-likelihood of), sqrt(s) (p - onehot(k)) with k ~ Categorical(p) for
# the cross-entropy.


def _hessian_scale(name: str, out: Array, y: Array) -> Array:
    """The factor in front of each loss's Hessian: 1, 2 / O, or s = sum_j y_j."""
    if name == "half_sse":
        return jnp.ones((), out.dtype)
    if name == "mse":
        return jnp.asarray(2 / out.shape[-1], out.dtype)
    return jnp.sum(y, axis=-1, keepdims=True)  # s, (B, 1)


def hessian_vp(name: str, out: Array, y: Array, v: Array) -> Array:
    """``H_i v_i`` for each example: the per-example loss Hessian with respect to the
    output times ``v``.

    Args:
      name: a loss of :data:`LOSSES`.
      out: network outputs ``(B, O)`` (logits for ``softmax_cross_entropy``).
      y: float targets ``(B, O)``.
      v: a direction in output space, ``(B, O)``.

    Returns:
      ``(B, O)``: row ``i`` is ``d^2 l_i / dout_i^2 v_i`` (not divided by ``B``).
    """
    get_loss(name)
    scale = _hessian_scale(name, out, y)
    if name != "softmax_cross_entropy":
        return scale * v  # H v = v, or (2 / O) v
    p = jax.nn.softmax(out, axis=-1)
    # H v = s (diag(p) - p p^T) v = s (p * v - p (p . v)): the softmax couples outputs
    return scale * (p * v - p * jnp.sum(p * v, axis=-1, keepdims=True))


def hessian_factor(name: str, out: Array, y: Array) -> Array:
    """A symmetric factor ``S_i`` of each example's loss Hessian, ``H_i = S_i S_i^T``.

    Args:
      name: a loss of :data:`LOSSES`.
      out: network outputs ``(B, O)``.
      y: float targets ``(B, O)``.

    Returns:
      ``(B, O, O)``: ``S[i, :, k]`` is column ``k`` of example ``i``'s factor.
    """
    get_loss(name)
    scale = _hessian_scale(name, out, y)
    eye = jnp.eye(out.shape[-1], dtype=out.dtype)[None]
    if name != "softmax_cross_entropy":
        return jnp.sqrt(scale) * jnp.broadcast_to(eye, (out.shape[0], *eye.shape[1:]))
    p = jax.nn.softmax(out, axis=-1)
    root = jnp.sqrt(p)
    # S = sqrt(s) (diag(sqrt p) - p sqrt(p)^T)
    factor = root[:, :, None] * eye - p[:, :, None] * root[:, None, :]
    return jnp.sqrt(scale)[:, :, None] * factor


def sampled_hessian_factor(
    name: str, out: Array, y: Array, key: Array, samples: int = 1
) -> Array:
    """A Monte-Carlo factor ``C_i`` with ``E[C_i C_i^T] = H_i``, ``samples`` columns.

    Targets are drawn from the model's predictive distribution (a unit Gaussian
    around the output for the squared errors, the softmax's categorical for the
    cross-entropy), and each column is the loss gradient at such a target, so
    ``C C^T / samples`` averages ``samples`` draws of the Fisher's outer product.

    Args:
      name: a loss of :data:`LOSSES`.
      out: network outputs ``(B, O)``.
      y: float targets ``(B, O)`` (only their sum ``s`` enters, for the
        cross-entropy).
      key: a ``jax.random`` key.
      samples: columns per example, at least 1.

    Returns:
      ``(B, O, samples)``, scaled by ``1 / sqrt(samples)`` so that ``C C^T``
      estimates ``H`` without bias.
    """
    get_loss(name)
    b, o = out.shape
    scale = _hessian_scale(name, out, y)
    if name != "softmax_cross_entropy":
        noise = jax.random.normal(key, (b, o, samples), out.dtype)
        # c = sqrt(2/O) e (or e), e ~ N(0, I): E[c c^T] = H
        return jnp.sqrt(scale) * noise / jnp.sqrt(jnp.asarray(samples, out.dtype))
    p = jax.nn.softmax(out, axis=-1)
    logits = jnp.broadcast_to(
        jax.nn.log_softmax(out, axis=-1)[:, None, :], (b, samples, o)
    )
    k = jax.random.categorical(key, logits, axis=-1)  # (B, samples), k ~ Cat(p)
    onehot = jax.nn.one_hot(k, o, dtype=out.dtype).transpose(0, 2, 1)
    # c = sqrt(s) (p - onehot(k)): E[c c^T] = s (diag(p) - p p^T)
    columns = p[:, :, None] - onehot
    return (
        jnp.sqrt(scale)[:, :, None]
        * columns
        / jnp.sqrt(jnp.asarray(samples, out.dtype))
    )
