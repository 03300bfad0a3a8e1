"""Per-example gradients of each layer, and their squared norms, from one batched pass.

A :class:`~jaxbp.Sequential` network's backward pass with ``batch_mean=False`` gives
every layer's output cotangent for every example, ``delta_i = dl_i/dy_i`` (row ``i``
is example ``i``'s own, since no layer but BatchNorm mixes examples). A layer's
per-example parameter gradient is a function of its cache and that cotangent alone,
and each layer type has its rule here:

* :class:`~jaxbp.layers.Dense`, ``z = x W + b``: ``dl_i/dW = x_i (x) delta_i``, whose
  squared Frobenius norm factorises, ``||x_i||^2 ||delta_i||^2`` (Goodfellow 2015,
  "Efficient per-example gradient computations", arXiv:1510.01799).
* :class:`~jaxbp.layers.Conv2D`: a dense layer applied at ``T`` output positions to the
  unfolded patches, so ``dl_i/dW = P_i^T D_i``, a sum over positions of outer
  products (``P_i`` is ``(T, kh kw C)``, ``D_i`` is ``(T, F)``). Its squared norm is
  either taken of the materialised ``(B, kh kw C, F)`` gradients or, without them,
  by the Gram identity ``||P_i^T D_i||_F^2 = sum((P_i P_i^T) * (D_i D_i^T))``
  ("ghost norm", Li, Tramer, Liang & Hashimoto 2022, arXiv:2110.05679); which is
  cheaper depends on the sizes (:func:`conv_weight_sq_norms`). The bias gradient is
  ``sum_t D_i[t]``.
* :class:`~jaxbp.layers.LayerNorm`: the gain and bias gradients, ``(B, C)`` per
  example, are small; they are formed and squared.
* :class:`~jaxbp.layers.Residual` is not a leaf: its block's cotangents are carried
  down from the Residual's own (:func:`expand_deltas`) and each layer of the block
  applies its rule.
* Layers without parameters that treat each example alone (Activation, Flatten,
  Reshape, Dropout, the poolings) contribute nothing.
* :class:`~jaxbp.layers.BatchNorm` is refused: in training mode each example's output
  depends on the whole batch, so a per-example gradient is not defined
  (:func:`check_layers`).

The sum of per-example gradients weighted by ``s_i`` needs no rule: a layer's
parameter gradient is linear in its output cotangent, so it is the layer's ordinary
backward given the cotangent with example ``i``'s rows scaled by ``s_i``
(:func:`weighted_grads`).

Why a table here and not a method on each layer: per-example gradients are one
concept (with DP-SGD's reasons for refusing a layer), kept in one module, as
BackPACK's extensions and Opacus's grad samplers keep theirs apart from the modules;
the layer protocol stays five methods; and a layer this module does not know (a new
layer, which may mix examples) is refused rather than assumed to be per-example.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool2D,
    Reshape,
    Residual,
    chain_backward,
)
from jaxbp.layers.windows import resolve_padding, window_views

Array = jax.Array

#: How :func:`conv_weight_sq_norms` may compute a convolution's squared norms.
CONV_NORM_METHODS = ("auto", "gram", "materialise")


class Rule(NamedTuple):
    """The per-example rule of one layer type.

    Attributes:
      grads: ``(layer, params, cache, dy) -> per-example grads``, shaped like
        ``params`` with a leading batch axis; ``dy`` is the per-example cotangent of
        the layer's output.
      sq_norms: ``(layer, params, cache, dy) -> squared norms``, shaped like
        ``params`` with ``(B,)`` leaves: ``||dl_i/dtheta||^2`` per parameter array.
    """

    grads: Callable
    sq_norms: Callable


# --- Dense -------------------------------------------------------------------------
def dense_grads(x: Array, delta: Array) -> dict:
    """``{"w": (B, n, m), "b": (B, m)}``: each example's ``x_i (x) delta_i`` and
    ``delta_i``."""
    # dl_i/dW = x_i (x) delta_i ;  dl_i/db = delta_i
    return {"w": jnp.einsum("bi,bo->bio", x, delta), "b": delta}


def dense_sq_norms(x: Array, delta: Array) -> dict:
    """``{"w": (B,), "b": (B,)}``, the squared norms of :func:`dense_grads`, not
    materialised."""
    return {
        # ||dl_i/dW||_F^2 = ||x_i (x) delta_i||_F^2 = ||x_i||^2 ||delta_i||^2
        "w": jnp.sum(x * x, axis=1) * jnp.sum(delta * delta, axis=1),
        # ||dl_i/db||^2 = ||delta_i||^2
        "b": jnp.sum(delta * delta, axis=1),
    }


# --- Conv2D's weight, from unfolded patches ----------------------------------------
def conv_norm_method(positions: int, patch_size: int, features: int) -> str:
    """``"gram"`` or ``"materialise"``: the cheaper way for these sizes.

    The Gram form makes two ``(T, T)`` matrices per example, the materialised one a
    ``(kh kw C, F)`` matrix; the smaller array wins, ``2 T^2 < kh kw C F`` (the rule
    of Bu, Mao & Xu 2022, "Scalable and efficient training of large convolutional
    neural networks with differential privacy", arXiv:2205.10683, their "mixed ghost
    clipping"). For LeNet on MNIST that picks materialising for the first
    convolution (``T = 576``) and the Gram form for the second (``T = 64``), which
    ``experiments/per_example_conv_bench.py`` measured to be the faster choice for
    each.
    """
    return "gram" if 2 * positions**2 < patch_size * features else "materialise"


def conv_weight_sq_norms(patches: Array, delta: Array, *, method: str = "auto"):
    """``||P_i^T D_i||_F^2`` for each example, ``(B,)``.

    Args:
      patches: the unfolded inputs ``(B, T, K)``: ``T`` output positions, ``K = kh kw
        C`` values per patch.
      delta: the per-example output cotangents ``(B, T, F)``.
      method: ``"gram"`` (``sum((P_i P_i^T) * (D_i D_i^T))``, no ``(B, K, F)``
        array), ``"materialise"`` (``P_i^T D_i`` formed, then squared) or
        ``"auto"`` (:func:`conv_norm_method`).

    Returns:
      ``(B,)``, the squared Frobenius norm of each example's weight gradient.
    """
    _, t, k = patches.shape
    if method == "auto":
        method = conv_norm_method(t, k, delta.shape[-1])
    if method == "gram":
        # ||P^T D||_F^2 = tr(D^T P P^T D) = sum_{t,s} (P P^T)_{ts} (D D^T)_{ts}
        gram_p = jnp.einsum("btk,bsk->bts", patches, patches)
        gram_d = jnp.einsum("btf,bsf->bts", delta, delta)
        return jnp.sum(gram_p * gram_d, axis=(1, 2))
    if method == "materialise":
        g = jnp.einsum("btk,btf->bkf", patches, delta)  # dl_i/dW = P_i^T D_i
        return jnp.sum(g * g, axis=(1, 2))
    raise ValueError(f"method must be one of {CONV_NORM_METHODS}, got {method!r}")


def conv_patches(layer: Conv2D, x: Array) -> Array:
    """The unfolded input ``P`` of a :class:`~jaxbp.layers.Conv2D`, ``(B, T, kh kw
    C)``, columns in the kernel's HWIO order (as its backward unfolds it)."""
    pads = resolve_padding(layer.padding, x.shape[1:3], layer.kernel_size, layer.stride)
    views = window_views(x, layer.kernel_size, layer.stride, pads)
    b, oh, ow, c = views[0].shape
    return jnp.stack(views, axis=3).reshape(b, oh * ow, len(views) * c)


def _conv_grads(layer, params, x, dy) -> dict:
    patches = conv_patches(layer, x)
    b, f = dy.shape[0], dy.shape[-1]
    delta = dy.reshape(b, -1, f)  # D_i: (T, F)
    # dl_i/dW = P_i^T D_i ;  dl_i/db = sum_t D_i[t]
    w = jnp.einsum("btk,btf->bkf", patches, delta)
    return {"w": w.reshape(b, *params["w"].shape), "b": jnp.sum(delta, axis=1)}


def conv2d_rule(norm_method: str = "auto") -> Rule:
    """The rule of :class:`~jaxbp.layers.Conv2D`, its weight norms taken by
    ``norm_method`` (:func:`conv_weight_sq_norms`; the table holds ``"auto"``)."""
    if norm_method not in CONV_NORM_METHODS:
        raise ValueError(
            f"norm_method must be one of {CONV_NORM_METHODS}, got {norm_method!r}"
        )

    def sq_norms(layer, params, x, dy):
        patches = conv_patches(layer, x)
        delta = dy.reshape(dy.shape[0], -1, dy.shape[-1])
        bias = jnp.sum(delta, axis=1)  # dl_i/db = sum_t D_i[t]
        return {
            "w": conv_weight_sq_norms(patches, delta, method=norm_method),
            "b": jnp.sum(bias * bias, axis=1),
        }

    return Rule(grads=_conv_grads, sq_norms=sq_norms)


# --- LayerNorm ---------------------------------------------------------------------
def _norm_affine_grads(layer, params, cache, dy) -> dict:
    # dl_i/dg = sum_{positions} dy_i xhat_i ;  dl_i/db = sum_{positions} dy_i
    axes = tuple(range(1, dy.ndim - 1))
    return {"g": jnp.sum(dy * cache.xhat, axis=axes), "b": jnp.sum(dy, axis=axes)}


def _sq_norms_of_grads(rule_grads: Callable) -> Callable:
    """A ``sq_norms`` rule that squares and sums materialised per-example grads."""

    def sq_norms(layer, params, cache, dy):
        grads = rule_grads(layer, params, cache, dy)
        return jax.tree.map(lambda g: jnp.sum(g.reshape(g.shape[0], -1) ** 2, 1), grads)

    return sq_norms


# --- the table ---------------------------------------------------------------------
def _no_params(layer, params, cache, dy) -> dict:
    return {}


#: A layer without parameters that treats each example alone.
NO_PARAMS = Rule(grads=_no_params, sq_norms=_no_params)

_RULES: dict[type, Rule] = {
    Conv2D: conv2d_rule(),
    Dense: Rule(
        grads=lambda layer, params, x, dy: dense_grads(x, dy),
        sq_norms=lambda layer, params, x, dy: dense_sq_norms(x, dy),
    ),
    LayerNorm: Rule(
        grads=_norm_affine_grads, sq_norms=_sq_norms_of_grads(_norm_affine_grads)
    ),
    Activation: NO_PARAMS,
    Flatten: NO_PARAMS,
    Reshape: NO_PARAMS,
    Dropout: NO_PARAMS,
    MaxPool2D: NO_PARAMS,
    AvgPool2D: NO_PARAMS,
}

#: Layers whose per-example gradients are not defined, and why.
_REFUSED: dict[type, str] = {
    BatchNorm: (
        "in training mode BatchNorm normalises each feature with the mean and "
        "variance of the whole batch, so every example's output, and loss, depends "
        "on every other example: the gradient of one example's loss is not its own, "
        "clipping it bounds nothing, and DP-SGD with BatchNorm is not private. Use "
        "LayerNorm, which normalises each example with its own statistics (Opacus "
        "replaces BatchNorm by GroupNorm for the same reason)"
    ),
}


def register_rule(layer_type: type, rule: Rule) -> None:
    """Teaches :mod:`jaxbp.per_example` the per-example gradients of a layer type.

    Register a layer only if its output for an example depends on that example's
    input alone; give :data:`NO_PARAMS` for one without parameters.

    Args:
      layer_type: the layer's class.
      rule: its :class:`Rule`.
    """
    _RULES[layer_type] = rule


def _lookup(layer) -> Rule | str | None:
    """The layer's rule, the reason it is refused, or None if unknown."""
    for cls in type(layer).__mro__:
        if cls in _REFUSED:
            return _REFUSED[cls]
        if cls in _RULES:
            return _RULES[cls]
    return None


def check_layers(layers, where: Callable[[int], str]) -> None:
    """Raises ``ValueError`` unless every layer (in Residual blocks too) has a rule.

    Args:
      layers: the layer specs.
      where: the 1-based index of a layer to how a message names it
        (``Sequential.describe_layer``).
    """
    for i, layer in enumerate(layers, start=1):
        if isinstance(layer, Residual):
            check_layers(layer.block, _in_block(where(i), layer.block))
            continue
        rule = _lookup(layer)
        if isinstance(rule, str):
            raise ValueError(
                f"per-example gradients are not defined for {where(i)}: {rule}"
            )
        if rule is None:
            raise ValueError(
                f"per-example gradients of {where(i)} are unknown: jaxbp has no "
                f"per-example rule for {type(layer).__name__}; if each example's "
                "output depends on its own input alone, register one with "
                "jaxbp.per_example_layers.register_rule"
            )


def _in_block(owner: str, block) -> Callable[[int], str]:
    """Names layer ``j`` of a Residual's block: ``layer 2 of 4, Residual(...), block
    layer 1 of 3, BatchNorm()``."""
    return lambda j: f"{owner}, block layer {j} of {len(block)}, {block[j - 1]}"


# --- walking a chain ---------------------------------------------------------------
def leaf_layers(layers):
    """Every layer of a chain in order, a Residual's block's layers in its place."""
    for layer in layers:
        if isinstance(layer, Residual):
            yield from leaf_layers(layer.block)
        else:
            yield layer


def expand_deltas(layers, params: list, caches: list, deltas: list) -> list:
    """Every layer's output cotangent, a Residual's replaced by its block's.

    A Residual's entry becomes the list of its block's output cotangents (carried down
    from the Residual's own by :func:`~jaxbp.layers.chain_backward`), recursively, so
    the result is shaped like ``params``' layer lists.
    """
    expanded = []
    for layer, p, cache, delta in zip(layers, params, caches, deltas, strict=True):
        if isinstance(layer, Residual):
            _, _, inner = chain_backward(layer.block, p, cache, delta)
            delta = expand_deltas(layer.block, p, cache, inner)
        expanded.append(delta)
    return expanded


def map_layers(fn: Callable, layers, params: list, caches: list, deltas: list) -> list:
    """``fn(layer, params, cache, dy)`` for every leaf layer, shaped like ``params``.

    ``deltas`` come from :func:`expand_deltas`; Residual blocks are entered.
    """
    return [
        map_layers(fn, layer.block, p, cache, delta)
        if isinstance(layer, Residual)
        else fn(layer, p, cache, delta)
        for layer, p, cache, delta in zip(layers, params, caches, deltas, strict=True)
    ]


def per_example_grads(layers, params, caches, deltas) -> list:
    """Each example's gradient, materialised: ``params``' structure, batch axis first.

    Args:
      layers: checked layers (:func:`check_layers`).
      params: their parameters.
      caches: their forward caches.
      deltas: :func:`expand_deltas` of the per-example output cotangents.
    """
    return map_layers(
        lambda layer, p, c, d: _lookup(layer).grads(layer, p, c, d),
        layers,
        params,
        caches,
        deltas,
    )


def sq_norms(layers, params, caches, deltas) -> list:
    """``||dl_i/dtheta||^2`` for every parameter array, ``(B,)`` leaves (arguments as
    for :func:`per_example_grads`)."""
    return map_layers(
        lambda layer, p, c, d: _lookup(layer).sq_norms(layer, p, c, d),
        layers,
        params,
        caches,
        deltas,
    )


def weighted_grads(layers, params, caches, deltas, weights: Array) -> list:
    """``sum_i s_i dl_i/dtheta``, shaped like ``params``, without per-example arrays.

    A layer's parameter gradient is linear in its output cotangent, so the weighted
    sum is the layer's own backward given ``s_i delta_i`` (the input cotangent it also
    returns is unused, and compiled away).

    Args:
      layers, params, caches, deltas: as for :func:`per_example_grads`.
      weights: ``s``, ``(B,)``.
    """

    def weighted(layer, p, cache, delta):
        if not jax.tree.leaves(p):
            return p
        s = weights.reshape(weights.shape + (1,) * (delta.ndim - 1))
        return layer.backward(p, cache, s * delta)[0]  # sum_i s_i dl_i/dtheta

    return map_layers(weighted, layers, params, caches, deltas)
