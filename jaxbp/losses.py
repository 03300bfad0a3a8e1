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
