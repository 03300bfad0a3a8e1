"""Normalisation layers, LayerNorm and BatchNorm, with their backward derived by hand.

Both standardise each value over a group of ``N`` values and then scale and shift it
per feature (the last axis) with a gain ``g`` and a bias ``b``:

.. math::

   \\mu = \\frac{1}{N} \\sum x, \\qquad
   \\sigma^2 = \\frac{1}{N} \\sum (x - \\mu)^2, \\qquad
   \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
   y = g \\hat x + b.

The variance is the biased one (divided by ``N``, not ``N - 1``), as PyTorch and flax
normalise. The layers differ only in the group:

* :class:`LayerNorm` (Ba, Kiros & Hinton 2016, "Layer Normalization",
  arXiv:1607.06450): the last axis of each example, for ``(B, n)`` and for
  ``(B, H, W, C)`` alike (each pixel over its ``C`` channels), as flax's
  ``LayerNorm`` does by default and as PyTorch's ``LayerNorm(C)`` does on a
  channels-last input.
* :class:`BatchNorm` (Ioffe & Szegedy 2015, "Batch Normalization", arXiv:1502.03167):
  every axis but the last, so each feature over the batch and, for ``(B, H, W, C)``
  inputs, over the spatial positions too (their section 3.2): ``N = B H W``.

With ``delta_hat = g dL/dy`` and sums and means over the group, the backward pass is

.. math::

   \\frac{\\partial L}{\\partial g} = \\sum \\frac{\\partial L}{\\partial y} \\hat x,
   \\qquad
   \\frac{\\partial L}{\\partial b} = \\sum \\frac{\\partial L}{\\partial y},
   \\qquad
   \\frac{\\partial L}{\\partial x} = \\frac{1}{\\sqrt{\\sigma^2 + \\epsilon}}
   \\left(\\hat\\delta - \\operatorname{mean}\\hat\\delta
   - \\hat x \\operatorname{mean}(\\hat\\delta \\hat x)\\right)

(the two subtracted terms are the paths through ``mu`` and ``sigma^2``; ``eps`` changes
nothing in the form). For BatchNorm ``g`` is constant over the group, the two sums are
``dL/db`` and ``dL/dg`` themselves, and the rule is the one expression of Karpathy's
"Building makemore Part 4: Becoming a Backprop Ninja" (2022), there with Bessel's
correction ``N / (N - 1)`` on the last term, here without it:

.. math::

   \\frac{\\partial L}{\\partial x} = \\frac{g}{N \\sigma}
   \\left(N \\frac{\\partial L}{\\partial y} - \\frac{\\partial L}{\\partial b}
   - \\hat x \\frac{\\partial L}{\\partial g}\\right), \\qquad
   \\sigma = \\sqrt{\\sigma^2 + \\epsilon}.

:func:`batchnorm_backward_stepwise` derives the same gradient one node of the graph at a
time, as Ioffe & Szegedy's section 3 writes the chain rule; the two agree to rounding.

In evaluation mode BatchNorm uses its running averages, constants of the batch, so it is
an affine map per feature and its backward has no batch terms:
``dL/dx = g dL/dy / sqrt(var + eps)``.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.layers.base import LayerParams, LayerShapeError, LayerState, Shape, shape_str

Array = jax.Array


class NormCache(NamedTuple):
    """What the backward of a normalisation by batch or example statistics needs.

    Attributes:
      xhat: the standardised input, shaped like the input.
      inv_std: ``1 / sqrt(var + eps)``, with the normalised axes kept as size 1.
    """

    xhat: Array
    inv_std: Array


class RunningStatsCache(NamedTuple):
    """What BatchNorm's evaluation-mode backward needs.

    The fields of :class:`NormCache`, with ``inv_std`` from the running variance: a
    constant, not a function of ``x``.
    """

    xhat: Array
    inv_std: Array


def check_eps(name: str, value) -> float:
    """A positive finite ``eps``, or a ``ValueError`` naming the layer."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} eps must be a positive number, got {value!r}")
    return value


def check_features_last(input_shape: Shape) -> int:
    """The size of the feature (last) axis, or a :class:`LayerShapeError`."""
    if len(input_shape) == 0:
        raise LayerShapeError(
            f"expects inputs with a feature axis, (B, n) or (B, H, W, C), "
            f"got {shape_str(input_shape)}"
        )
    return input_shape[-1]


def per_feature(v: Array, ndim: int) -> Array:
    """A ``(C,)`` vector reshaped to ``(1, ..., 1, C)``, rank ``ndim``.

    The broadcast is explicit, so the layers also run with
    ``jax_numpy_rank_promotion="raise"``.
    """
    return v.reshape((1,) * (ndim - 1) + v.shape)


def sum_but_last(v: Array) -> Array:
    """The sum over every axis but the last: ``(..., C)`` to ``(C,)``."""
    return jnp.sum(v, axis=tuple(range(v.ndim - 1)))


def standardize(x: Array, axes: tuple[int, ...], eps: float):
    """``(xhat, mu, var, inv_std)``: ``x`` standardised over ``axes``.

    ``mu``, ``var`` and ``inv_std`` keep the reduced axes as size 1; the variance is
    the biased one, computed in two passes (no ``E[x^2] - mu^2`` cancellation).
    """
    mu = jnp.mean(x, axis=axes, keepdims=True)  # mu = (1/N) sum x
    xc = x - mu
    var = jnp.mean(xc * xc, axis=axes, keepdims=True)  # var = (1/N) sum (x - mu)^2
    inv_std = lax.rsqrt(var + eps)  # 1 / sigma = (var + eps)^(-1/2)
    return xc * inv_std, mu, var, inv_std  # xhat = (x - mu) / sigma


def affine(params: LayerParams, xhat: Array) -> Array:
    """``y = g xhat + b`` with ``g`` and ``b`` per feature (the last axis)."""
    g, b = (per_feature(params[k], xhat.ndim) for k in ("g", "b"))
    return g * xhat + b


def affine_param_grads(xhat: Array, dy: Array) -> LayerParams:
    """``{"g": sum dy xhat, "b": sum dy}``, summed over every axis but the last."""
    # dL/dg = sum dy * xhat ;  dL/db = sum dy
    return {"g": sum_but_last(dy * xhat), "b": sum_but_last(dy)}


def _unit_params(input_shape: Shape, dtype) -> LayerParams:
    # g = 1, b = 0: the layer starts as the bare standardisation.
    c = input_shape[-1]
    return {"g": jnp.ones((c,), dtype), "b": jnp.zeros((c,), dtype)}


def _fields_str(layer, defaults: dict) -> str:
    # Only the fields that differ from their defaults: BatchNorm(), LayerNorm(eps=0.1).
    fields = [
        f"{name}={getattr(layer, name)!r}"
        for name, default in defaults.items()
        if getattr(layer, name) != default
    ]
    return f"{type(layer).__name__}({', '.join(fields)})"


@dataclasses.dataclass(frozen=True)
class LayerNorm:
    """Layer normalisation over the last axis of each example, with gain and bias.

    ``y = g (x - mu) / sqrt(var + eps) + b``, ``mu`` and the biased ``var`` taken over
    the last axis of each example: over the ``n`` features of a ``(B, n)`` input, over
    the ``C`` channels of each pixel of a ``(B, H, W, C)`` input. That is the axis
    flax's ``LayerNorm`` normalises by default and PyTorch's ``LayerNorm(C)`` on
    channels-last data; to normalise each example over all of ``(H, W, C)``, as
    PyTorch's ``LayerNorm([C, H, W])`` does, put ``Flatten()`` before it (the gain is
    then per element, as PyTorch's is, and the output flat). ``g`` (ones) and ``b``
    (zeros) have shape ``(C,)``.
    Statistics are per example, so batch 1 and training or evaluation mode make no
    difference; the layer has no state.

    Args:
      eps: added to the variance before the square root.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> layer = LayerNorm()
      >>> params = layer.init(jax.random.key(0), (3,), jnp.float32)
      >>> y, cache, _ = layer.forward(params, jnp.array([[1.0, 2.0, 3.0]]))
      >>> grads, dx = layer.backward(params, cache, jnp.ones_like(y))
      >>> grads["b"].tolist(), dx.shape
      ([1.0, 1.0, 1.0], (1, 3))
    """

    eps: float = 1e-5

    def __post_init__(self):
        check_eps("LayerNorm", self.eps)

    def __str__(self) -> str:
        return _fields_str(self, {"eps": 1e-5})

    def output_shape(self, input_shape: Shape) -> Shape:
        c = check_features_last(input_shape)
        if c == 1:
            raise LayerShapeError(
                f"normalises over the last axis, which has size 1 in "
                f"{shape_str(input_shape)}: the variance of one value is 0, so the "
                f"output is identically the bias b and no gradient reaches the input"
            )
        return tuple(input_shape)

    def init(self, key: Array, input_shape: Shape, dtype) -> LayerParams:
        return _unit_params(input_shape, dtype)

    def init_state(self, input_shape: Shape, dtype) -> LayerState:
        return {}

    def forward(self, params, x, *, state=None, key=None, train=False):
        xhat, _, _, inv_std = standardize(x, (-1,), self.eps)
        return affine(params, xhat), NormCache(xhat, inv_std), state

    def backward(self, params, cache, dy):
        xhat, inv_std = cache
        dxhat = per_feature(params["g"], dy.ndim) * dy  # dL/dxhat = g * dy
        # dL/dx = (1/sigma) (dxhat - mean dxhat - xhat mean(dxhat xhat)), per example
        dx = inv_std * (
            dxhat
            - jnp.mean(dxhat, axis=-1, keepdims=True)
            - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True)
        )
        return affine_param_grads(xhat, dy), dx


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation of each feature (the last axis) over every other axis.

    In training mode (``train=True``) each feature is standardised with the mean and
    biased variance of its ``N`` values in the batch (``N = B`` for ``(B, n)``,
    ``N = B H W`` for ``(B, H, W, C)``), as PyTorch and flax train, and the running
    averages in ``state`` move towards them (flax's convention for ``momentum``)::

        mean <- momentum * mean + (1 - momentum) * batch_mean
        var  <- momentum * var  + (1 - momentum) * batch_var

    ``batch_var`` is the same biased variance the layer normalised with, as in flax;
    PyTorch stores the unbiased one, ``N / (N - 1)`` times larger. We keep flax's: the
    state is then exactly flax's ``batch_stats`` for the same batches, and the running
    variance estimates the variance the training forward actually divides by.

    In evaluation mode (``train=False``) the running averages replace the batch
    statistics, so the output of each example depends on it alone.

    ``g`` (ones), ``b`` (zeros), and the state ``{"mean": zeros, "var": ones}`` have
    shape ``(C,)``. The backward is the fused rule of the module docstring;
    :func:`batchnorm_backward_stepwise` is the same gradient node by node.

    Training needs ``N >= 2``: a dense BatchNorm at batch 1 (or ``(1, 1, 1, C)``) is an
    error, raised when the forward is traced, because the variance of one value is 0,
    so the output is identically ``b`` and the gradient of everything below vanishes.
    A ``(1, H, W, C)`` batch with ``H W >= 2`` is legal (each channel is normalised
    over the image's positions), as in PyTorch.

    Args:
      momentum: the weight of the old running average, in ``[0, 1]``.
      eps: added to the variance before the square root.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> layer = BatchNorm()
      >>> params = layer.init(jax.random.key(0), (2,), jnp.float32)
      >>> state = layer.init_state((2,), jnp.float32)
      >>> x = jnp.array([[0.0, 1.0], [2.0, 5.0]])
      >>> y, cache, state = layer.forward(params, x, state=state, train=True)
      >>> [round(v, 6) for v in state["mean"].tolist()]  # 0.9 * 0 + 0.1 * batch mean
      [0.1, 0.3]
      >>> grads, dx = layer.backward(params, cache, jnp.ones_like(y))
      >>> dx.tolist()  # a constant cotangent moves no standardised value
      [[0.0, 0.0], [0.0, 0.0]]
    """

    momentum: float = 0.9
    eps: float = 1e-5

    def __post_init__(self):
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m <= 1:
            raise ValueError(f"BatchNorm momentum must be in [0, 1], got {m!r}")
        check_eps("BatchNorm", self.eps)

    def __str__(self) -> str:
        return _fields_str(self, {"momentum": 0.9, "eps": 1e-5})

    def output_shape(self, input_shape: Shape) -> Shape:
        check_features_last(input_shape)
        return tuple(input_shape)

    def init(self, key: Array, input_shape: Shape, dtype) -> LayerParams:
        return _unit_params(input_shape, dtype)

    def init_state(self, input_shape: Shape, dtype) -> LayerState:
        c = input_shape[-1]
        return {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}

    def forward(self, params, x, *, state=None, key=None, train=False):
        """``(y, cache, new_state)``; see the class docstring for the two modes.

        Args:
          params: ``{"g": (C,), "b": (C,)}``.
          x: ``(B, ..., C)``.
          state: ``{"mean": (C,), "var": (C,)}``, the running averages; required in
            evaluation mode. In training mode it may be ``None``: the batch statistics
            need no state, and ``new_state`` is then ``{}`` (nothing to update).
          key: unused.
          train: batch statistics (and updated running averages) or running ones.

        Raises:
          ValueError: in evaluation mode without ``state``.
          LayerShapeError: in training mode when each feature has one value (``N = 1``).
        """
        if not train:
            if state is None:
                raise ValueError(
                    f"{self} in evaluation mode (train=False) normalises with the "
                    f"running averages: pass state={{'mean': ..., 'var': ...}} (from "
                    f"init_state or a training forward), or train=True for batch "
                    f"statistics"
                )
            inv_std = lax.rsqrt(state["var"] + self.eps)  # 1 / sqrt(var_run + eps)
            inv_std = per_feature(inv_std, x.ndim)
            xhat = (x - per_feature(state["mean"], x.ndim)) * inv_std
            return affine(params, xhat), RunningStatsCache(xhat, inv_std), state
        n = x.size // x.shape[-1]
        if n == 1:
            raise LayerShapeError(
                f"{self} in training mode normalises each feature over the batch and "
                f"spatial axes, which hold one value each in an input of shape "
                f"{tuple(x.shape)}: the variance of one value is 0, so the output is "
                f"identically the bias b and the gradient below it vanishes; train "
                f"with a batch of at least 2, or use LayerNorm"
            )
        axes = tuple(range(x.ndim - 1))
        xhat, mu, var, inv_std = standardize(x, axes, self.eps)
        new_state = {}
        if state is not None:
            m = self.momentum
            new_state = {
                # mean <- momentum * mean + (1 - momentum) * batch_mean
                "mean": m * state["mean"] + (1 - m) * mu.reshape(-1),
                # var <- momentum * var + (1 - momentum) * batch_var (biased, as flax)
                "var": m * state["var"] + (1 - m) * var.reshape(-1),
            }
        return affine(params, xhat), NormCache(xhat, inv_std), new_state

    def backward(self, params, cache, dy):
        grads = affine_param_grads(cache.xhat, dy)
        g = per_feature(params["g"], dy.ndim)
        if isinstance(cache, RunningStatsCache):
            # Running statistics are constants: dL/dx = g dy / sqrt(var_run + eps)
            return grads, g * cache.inv_std * dy
        xhat, inv_std = cache
        n = dy.size // dy.shape[-1]
        db = per_feature(grads["b"], dy.ndim)
        dg = per_feature(grads["g"], dy.ndim)
        # dL/dx = g / (N sigma) (N dy - sum dy - xhat sum(dy xhat))
        #       = g / (N sigma) (N dy - dL/db - xhat dL/dg)
        return grads, (g * inv_std / n) * (n * dy - db - xhat * dg)


def batchnorm_backward_stepwise(
    params: LayerParams, x: Array, dy: Array, *, eps: float = 1e-5
) -> tuple[LayerParams, Array]:
    """BatchNorm's training-mode backward, one node of the graph at a time.

    The forward is rebuilt from ``x`` as a chain of elementary nodes, and the
    cotangent is carried back through each in reverse (Ioffe & Szegedy 2015,
    section 3): ``mu = mean x``, ``xc = x - mu``, ``var = mean xc^2``,
    ``inv_std = (var + eps)^(-1/2)``, ``xhat = xc inv_std``, ``y = g xhat + b``; ``xc``
    feeds both ``var`` and ``xhat``, and ``x`` both ``mu`` and ``xc``, so their
    cotangents are sums of two paths. It equals :meth:`BatchNorm.backward`'s fused
    expression to rounding; it is here to teach that derivation and to test it.

    Args:
      params: ``{"g": (C,), "b": (C,)}``.
      x: the input ``(B, ..., C)`` of the training forward.
      dy: the cotangent of the output, shaped like ``x``.
      eps: the layer's ``eps``.

    Returns:
      ``(grads, dx)``: ``{"g": (C,), "b": (C,)}`` and ``dL/dx`` shaped like ``x``.
    """
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]

    def group_sum(v):
        return jnp.sum(v, axis=axes, keepdims=True)

    # Forward, node by node.
    mu = group_sum(x) / n  # mu = (1/N) sum x
    xc = x - mu  # xc = x - mu
    var = group_sum(xc * xc) / n  # var = (1/N) sum xc^2
    inv_std = lax.rsqrt(var + eps)  # inv_std = (var + eps)^(-1/2)
    xhat = xc * inv_std  # xhat = xc * inv_std
    # (y = g * xhat + b)

    # Backward, in reverse.
    grads = affine_param_grads(xhat, dy)  # dL/dg = sum dy xhat ; dL/db = sum dy
    dxhat = per_feature(params["g"], x.ndim) * dy  # dL/dxhat = g dy
    d_inv_std = group_sum(dxhat * xc)  # dL/dinv_std = sum dxhat xc
    dxc = dxhat * inv_std  # path xhat: dL/dxc = dxhat inv_std
    dvar = -0.5 * inv_std**3 * d_inv_std  # dL/dvar = -1/2 (var + eps)^(-3/2) d_inv_std
    dxc = dxc + (2.0 / n) * xc * dvar  # path var: dL/dxc += (2/N) xc dvar
    dmu = -group_sum(dxc)  # dL/dmu = -sum dxc
    dx = dxc + dmu / n  # dL/dx = dxc + (1/N) dmu
    return grads, dx
