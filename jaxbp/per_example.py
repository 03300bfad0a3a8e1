"""Per-example gradients, their norms without materialising them, and DP-SGD clipping.

The batch objective is the mean of per-example losses, ``L = (1/B) sum_i l_i``, so the
batch gradient is the mean of the per-example gradients ``g_i = dl_i/dtheta``. For a
dense layer ``z_l = a_{l-1} W_l + b_l`` the hand-derived backward pass already holds
every example's error signal ``delta_{l,i} = dl_i/dz_{l,i}`` (before the ``1/B`` of the
mean), and example ``i``'s gradient is an outer product:

.. math::

   \\frac{\\partial l_i}{\\partial W_l} = a_{l-1,i} \\otimes \\delta_{l,i}, \\qquad
   \\frac{\\partial l_i}{\\partial b_l} = \\delta_{l,i}.

Three things follow (Goodfellow 2015, "Efficient per-example gradient computations",
arXiv:1510.01799):

* the per-example gradients themselves, ``(B, fan_in, fan_out)`` per layer, are one
  batched outer product of arrays the backward pass already has
  (:func:`per_example_grads`);
* their norms need no ``batch x parameters`` array, since the Frobenius norm of an
  outer product factorises, ``||a_i (x) delta_i||^2 = ||a_i||^2 ||delta_i||^2``
  (:func:`per_example_sq_norms`, :func:`per_example_grad_norms`);
* any per-example weighting ``sum_i s_i g_i`` is again one ordinary contraction,
  ``sum_i s_i a_i (x) delta_i = a^T (s * delta)``. Every layer's ``delta_{l,i}`` is
  linear in the output error ``delta_{L,i}`` of the same example, so scaling example
  ``i``'s rows of every layer's delta by ``s_i`` scales that example's whole gradient.
  This gives DP-SGD's clipped mean gradient (Abadi et al. 2016, "Deep Learning with
  Differential Privacy", arXiv:1607.00133) at about the cost of one ordinary backward
  pass (:func:`clipped_grad`, :func:`make_dp_value_and_grad`).

A :class:`~jaxbp.Sequential` network gets the same three from one batched backward
pass too (:meth:`~jaxbp.Sequential.deltas` with ``batch_mean=False`` gives every
layer's per-example output cotangent) and each layer's rule in
:mod:`jaxbp.per_example_layers`: a convolution's norms from its unfolded patches,
LayerNorm's from its small per-example gradients, and the weighted sum from each
layer's own backward given the scaled cotangents. BatchNorm, which makes every
example's loss depend on the whole batch, is refused (:func:`check_per_example`).

The noise follows the convention of
:func:`optax.contrib.differentially_private_aggregate`: the clipped per-example
gradients are *summed*, Gaussian noise of standard deviation ``noise_multiplier *
l2_norm_clip`` is added to every coordinate of the sum, and the result is divided by the
batch size ``B``. Without noise the two agree to rounding. The noise itself is drawn
by :func:`gaussian_noise`, a fused Threefry and Box-Muller sampler, rather than
``jax.random.normal`` leaf by leaf as optax does: the same distribution, at a fraction
of the cost on a CPU, where drawing one normal per parameter per step otherwise costs
about as much as the step itself.
"""

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxbp import _noise, backward, per_example_layers
from jaxbp._noise import gaussian_noise as gaussian_noise
from jaxbp.layers import Dropout
from jaxbp.mlp import MLP, Params
from jaxbp.sequential import Sequential

Array = jax.Array
Net = MLP | Sequential

#: The ways :func:`per_example_grads` can compute per-example gradients.
METHODS = ("manual", "autodiff")


def check_per_example(net: Net) -> None:
    """Raises ``ValueError`` if jaxbp cannot give ``net`` per-example gradients.

    An :class:`~jaxbp.MLP` always can. A :class:`~jaxbp.Sequential` can when every
    layer, in Residual blocks too, has a rule in :mod:`jaxbp.per_example_layers`;
    BatchNorm is refused, because in training mode every example's output depends on
    the whole batch (DP-SGD with it is not private). The message names the layer
    (``layer 2 of 4, BatchNorm()``), says why and what to use instead.

    Args:
      net: the network spec.
    """
    if isinstance(net, Sequential):
        per_example_layers.check_layers(net.layers, net.describe_layer)


def _check_net(net: Net, dropout_key) -> None:
    """:func:`check_per_example`, and a key when a Dropout layer draws masks."""
    check_per_example(net)
    if dropout_key is None and _draws_masks(net):
        raise ValueError(
            f"{net} has Dropout, which draws a random mask for the batch in "
            "training: pass dropout_key= (a jax.random key, a fresh one each step)"
        )


def _draws_masks(net: Net) -> bool:
    """Whether a Sequential has a Dropout layer that drops anything."""
    return isinstance(net, Sequential) and any(
        isinstance(layer, Dropout) and layer.rate > 0
        for layer in per_example_layers.leaf_layers(net.layers)
    )


def _per_example_deltas(net: MLP, params: Params, x: Array, y: Array):
    """Checked targets, the forward cache and the unscaled per-example deltas."""
    x, targets = net.check_batch(params, x, y)
    # delta_{L,i} = dl_i/dz_{L,i}: the gradient of each example's own loss (no 1/B)
    cache, deltas = net.deltas(params, x, targets, batch_mean=False)
    return targets, cache, deltas


def _sequential_deltas(net: Sequential, params: Params, x: Array, y: Array, key):
    """Checked targets, the output, the caches and every leaf layer's per-example
    output cotangent (:func:`~jaxbp.per_example_layers.expand_deltas`)."""
    x, targets = net.check_batch(params, x, y)
    # delta_i = dl_i/dy: each example's own loss (no 1/B), every layer's output
    (out, caches, _), deltas = net.deltas(params, x, targets, batch_mean=False, key=key)
    deltas = per_example_layers.expand_deltas(net.layers, params, caches, deltas)
    return targets, out, caches, deltas


def _vmap_grad(net: Net, params: Params, x: Array, y: Array, dropout_key) -> Params:
    """``jax.vmap(jax.grad(l_i))``: each example's gradient by autodiff."""
    if _draws_masks(net):
        # Dropout draws one mask for the whole batch, which a batch of one would not
        # reproduce: example i's loss is read off the batch's forward pass (exact, at
        # the cost of one backward pass of the whole batch per example).
        def batch_example_loss(p, i):
            return net.per_example_loss(p, x, y, key=dropout_key)[i]

        index = jnp.arange(x.shape[0])
        return jax.vmap(jax.grad(batch_example_loss), in_axes=(None, 0))(params, index)

    def example_loss(p, x_i, y_i):
        return net.loss(p, x_i[None], y_i[None])

    return jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)


def per_example_grads(
    net: Net,
    params: Params,
    x: Array,
    y: Array,
    *,
    method: str = "manual",
    dropout_key: Array | None = None,
) -> Params:
    """The gradient of each example's own loss, materialised.

    Args:
      net: the network spec, an :class:`~jaxbp.MLP` or a :class:`~jaxbp.Sequential`
        (without BatchNorm, see :func:`check_per_example`).
      params: the parameters.
      x: inputs ``(B, sizes[0])`` (``(B, *input_shape)`` for a Sequential).
      y: integer labels ``(B,)`` or float targets ``(B, K)``.
      method: ``"manual"`` (the hand-derived per-example cotangents and each layer's
        rule, :mod:`jaxbp.per_example_layers`; no autodiff) or ``"autodiff"``
        (``jax.vmap(jax.grad(...))`` over the examples).
      dropout_key: a ``jax.random`` key for a Sequential's Dropout masks (drawn for
        the whole batch, as :meth:`~jaxbp.Sequential.loss` draws them with
        ``key=``); needed only when the network has Dropout.

    Returns:
      A pytree shaped like ``params`` with a leading batch axis (for an MLP, one
      ``{"w": (B, fan_in, fan_out), "b": (B, fan_out)}`` per layer), where entry
      ``i`` is ``dl_i/dtheta``; its mean over the batch axis is ``net.manual_grad``.

    Raises:
      ValueError: for an unknown ``method``, a network without per-example
        gradients (:func:`check_per_example`) or Dropout without ``dropout_key``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = MLP(sizes=(3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> grads = per_example_grads(net, params, x, y)
      >>> grads[0]["w"].shape, grads[1]["b"].shape
      ((5, 3, 4), (5, 2))
    """
    if isinstance(net, Sequential):
        _check_net(net, dropout_key)
        if method == "manual":
            _, _, caches, deltas = _sequential_deltas(net, params, x, y, dropout_key)
            return per_example_layers.per_example_grads(
                net.layers, params, caches, deltas
            )
        if method == "autodiff":
            return _vmap_grad(net, params, x, y, dropout_key)
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "manual":
        _, cache, deltas = _per_example_deltas(net, params, x, y)
        return [
            # dl_i/dW_l = a_{l-1,i} (x) delta_{l,i} ;  dl_i/db_l = delta_{l,i}
            per_example_layers.dense_grads(a_prev, delta)
            for a_prev, delta in zip(cache.a[:-1], deltas, strict=True)
        ]
    if method == "autodiff":
        net.check_batch(params, x, y)
        return _vmap_grad(net, params, x, y, dropout_key)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _sq_norms(cache: backward.ForwardCache, deltas: list[Array]) -> Params:
    """Per-layer ``{"w": (B,), "b": (B,)}`` squared gradient norms from a cache."""
    return [
        # ||dl_i/dW_l||_F^2 = ||a_{l-1,i}||^2 ||delta_{l,i}||^2 ; ||dl_i/db_l||^2
        per_example_layers.dense_sq_norms(a_prev, delta)
        for a_prev, delta in zip(cache.a[:-1], deltas, strict=True)
    ]


def _total_norms(sq_norms: Params) -> Array:
    """``||g_i|| = sqrt(sum over leaves of ||g_i[leaf]||^2)``, ``(B,)``."""
    return jnp.sqrt(sum(jax.tree.leaves(sq_norms)))


def per_example_sq_norms(
    net: Net, params: Params, x: Array, y: Array, *, dropout_key: Array | None = None
) -> Params:
    """Squared L2 norm of each example's gradient, layer by layer, not materialised.

    For a dense layer ``||a_i (x) delta_i||_F^2 = ||a_i||^2 ||delta_i||^2`` (Goodfellow
    2015), so the cost is one forward and one backward pass plus ``O(B sum_l n_l)``;
    no ``(B, fan_in, fan_out)`` array is formed. A Sequential's other layers use their
    rules (:mod:`jaxbp.per_example_layers`): a convolution's from its unfolded
    patches and output cotangents, by whichever of the Gram form and the
    materialised gradient is cheaper for its sizes.

    Args:
      net: the network spec (see :func:`per_example_grads`).
      params: the parameters.
      x: inputs ``(B, sizes[0])`` (``(B, *input_shape)`` for a Sequential).
      y: labels ``(B,)`` or targets ``(B, K)``.
      dropout_key: the key of a Sequential's Dropout masks, if it has Dropout.

    Returns:
      A pytree shaped like ``params`` whose leaves are ``(B,)``: for an MLP, leaf
      ``[l]["w"][i]`` is ``||dl_i/dW_l||_F^2`` and ``[l]["b"][i]`` is
      ``||dl_i/db_l||^2``.
    """
    if isinstance(net, Sequential):
        _check_net(net, dropout_key)
        _, _, caches, deltas = _sequential_deltas(net, params, x, y, dropout_key)
        return per_example_layers.sq_norms(net.layers, params, caches, deltas)
    _, cache, deltas = _per_example_deltas(net, params, x, y)
    return _sq_norms(cache, deltas)


def per_example_grad_norms(
    net: Net, params: Params, x: Array, y: Array, *, dropout_key: Array | None = None
) -> Array:
    """The global L2 norm of each example's gradient over all layers, not materialised.

    Args:
      net: the network spec (see :func:`per_example_grads`).
      params: the parameters.
      x: inputs ``(B, sizes[0])`` (``(B, *input_shape)`` for a Sequential).
      y: labels ``(B,)`` or targets ``(B, K)``.
      dropout_key: the key of a Sequential's Dropout masks, if it has Dropout.

    Returns:
      ``(B,)``: ``||g_i||``, the norm of example ``i``'s slice of
      :func:`per_example_grads` over all leaves (``optax.tree.norm`` of it); for an
      MLP ``sqrt(sum_l ||a_{l-1,i}||^2 ||delta_{l,i}||^2 + ||delta_{l,i}||^2)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = MLP(sizes=(3, 4, 2))
      >>> params = net.init(jax.random.key(0))
      >>> per_example_grad_norms(net, params, jnp.ones((5, 3)), jnp.zeros(5, int)).shape
      (5,)
    """
    return _total_norms(
        per_example_sq_norms(net, params, x, y, dropout_key=dropout_key)
    )


def clip_factors(norms: Array, l2_norm_clip) -> Array:
    """DP-SGD clip factors ``s_i = min(1, C / ||g_i||)``.

    Args:
      norms: per-example gradient norms ``(B,)``.
      l2_norm_clip: the clipping norm ``C`` (``inf`` gives all ones).

    Returns:
      ``(B,)`` factors in ``(0, 1]``, in the dtype of ``norms``; a zero norm gets 1,
      as in ``optax.per_example_global_norm_clip``.
    """
    # s_i = C / ||g_i|| where ||g_i|| > C, else 1
    safe = jnp.where(norms > l2_norm_clip, norms, 1)
    return jnp.where(norms > l2_norm_clip, l2_norm_clip / safe, 1).astype(norms.dtype)


def check_dp_args(l2_norm_clip, noise_multiplier) -> None:
    """Checks DP-SGD's clip and noise where they enter: the public functions here
    and :class:`jaxbp.DPConfig`.

    A traced value (inside ``jit``) is not checked: its value is not known.

    Args:
      l2_norm_clip: the clipping norm ``C``; must be positive (``inf`` is).
      noise_multiplier: ``sigma``; must be zero or more.

    Raises:
      ValueError: on a non-positive (or NaN) clip or a negative (or NaN) noise
        multiplier, naming it and its value.

    Examples:
      >>> check_dp_args(1.0, 0.0)
      >>> check_dp_args(1.0, -0.5)
      Traceback (most recent call last):
      ...
      ValueError: noise_multiplier must be non-negative, got -0.5
    """
    if isinstance(l2_norm_clip, numbers.Real) and not l2_norm_clip > 0:
        raise ValueError(f"l2_norm_clip must be positive, got {l2_norm_clip}")
    if isinstance(noise_multiplier, numbers.Real) and not noise_multiplier >= 0:
        raise ValueError(
            f"noise_multiplier must be non-negative, got {noise_multiplier}"
        )


def _no_noise(noise_multiplier) -> bool:
    """Whether the noise is statically zero (a Python ``0`` or ``0.0``)."""
    return isinstance(noise_multiplier, int | float) and noise_multiplier == 0


def clipped_grad(
    net: Net,
    params: Params,
    x: Array,
    y: Array,
    *,
    l2_norm_clip,
    noise_multiplier=0.0,
    key: Array | None = None,
    method: str = "manual",
    dropout_key: Array | None = None,
) -> tuple[Array, Params]:
    """The DP-SGD gradient: clip each example's gradient, sum, add noise, average.

    .. math::

       \\tilde g = \\frac{1}{B} \\Big( \\sum_i \\min\\big(1, \\tfrac{C}{\\|g_i\\|}\\big)
       g_i + \\mathcal{N}(0, \\sigma^2 C^2 I) \\Big)

    (Abadi et al. 2016, Algorithm 1, with the noise convention of
    :func:`optax.contrib.differentially_private_aggregate`). With ``method="manual"``
    per-example gradients are never materialised: the norms come from
    :func:`per_example_sq_norms`' factorised form, then every layer's per-example
    deltas are scaled by ``s_i / B`` and contracted once,
    ``dW_l = a_{l-1}^T (s / B * delta_l)`` (for a Sequential, each layer's own
    backward given the scaled cotangents); no autodiff is used. ``method="autodiff"``
    materialises ``jax.vmap(jax.grad(...))`` and clips that, as optax would (a
    reference, far slower).

    Args:
      net: the network spec (see :func:`per_example_grads`).
      params: the parameters.
      x: inputs ``(B, sizes[0])`` (``(B, *input_shape)`` for a Sequential).
      y: labels ``(B,)`` or targets ``(B, K)``.
      l2_norm_clip: the clipping norm ``C > 0`` of each example's global gradient
        (``inf`` disables clipping).
      noise_multiplier: ``sigma >= 0``; the noise added to the *sum* of clipped
        gradients has standard deviation ``sigma * C`` per coordinate, so after the
        mean it is ``sigma * C / B``.
      key: a ``jax.random`` key, needed unless ``noise_multiplier`` is ``0``; the
        noise is :func:`add_dp_noise`'s draw from it.
      method: ``"manual"`` (factorised, not materialised) or ``"autodiff"``.
      dropout_key: the key of a Sequential's Dropout masks, if it has Dropout (kept
        apart from ``key``, the noise's).

    Returns:
      ``(loss, grads)``: the ordinary (unclipped) mean batch loss, a scalar, and the
      noisy clipped mean gradient, shaped like ``params``. With ``C = inf`` and no
      noise, ``grads`` is ``net.manual_grad(params, x, y)``.

    Raises:
      ValueError: on a non-positive ``l2_norm_clip``, a negative ``noise_multiplier``,
        noise without a ``key``, an unknown ``method``, a network without
        per-example gradients (:func:`check_per_example`) or Dropout without
        ``dropout_key``.
    """
    check_dp_args(l2_norm_clip, noise_multiplier)
    if key is None and not _no_noise(noise_multiplier):
        raise ValueError("clipped_grad needs a key when noise_multiplier is not 0")
    _check_net(net, dropout_key)
    batch = x.shape[0]
    if method == "manual" and isinstance(net, Sequential):
        targets, out, caches, deltas = _sequential_deltas(
            net, params, x, y, dropout_key
        )
        value = net.loss_fn.value(out, targets)
        sq_norms = per_example_layers.sq_norms(net.layers, params, caches, deltas)
        coef = clip_factors(_total_norms(sq_norms), l2_norm_clip) / batch
        # (1/B) sum_i s_i g_i: each layer's backward of (s_i / B) delta_i
        grads = per_example_layers.weighted_grads(
            net.layers, params, caches, deltas, coef
        )
    elif method == "manual":
        targets, cache, deltas = _per_example_deltas(net, params, x, y)
        value = net.loss_fn.value(cache.a[-1], targets)
        # ||g_i||^2 = sum_l (||a_{l-1,i}||^2 + 1) ||delta_{l,i}||^2
        norms = _total_norms(_sq_norms(cache, deltas))
        # (1/B) sum_i s_i a_i (x) delta_i = a^T ((s / B) delta): one contraction
        coef = (clip_factors(norms, l2_norm_clip) / batch)[:, None]
        grads = backward.grads_from_deltas(cache, [coef * delta for delta in deltas])
    elif method == "autodiff":
        if isinstance(net, Sequential):
            value = net.loss(params, x, y, key=dropout_key)
        else:
            value = net.loss(params, x, y)
        per_ex = per_example_grads(
            net, params, x, y, method="autodiff", dropout_key=dropout_key
        )
        sq_norms = jax.tree.map(lambda g: jnp.sum(g.reshape(batch, -1) ** 2, 1), per_ex)
        coef = clip_factors(_total_norms(sq_norms), l2_norm_clip) / batch
        # (1/B) sum_i s_i g_i
        grads = jax.tree.map(lambda g: jnp.tensordot(coef, g, axes=1), per_ex)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if _no_noise(noise_multiplier):
        return value, grads
    return value, add_dp_noise(
        grads,
        key,
        l2_norm_clip=l2_norm_clip,
        noise_multiplier=noise_multiplier,
        batch_size=batch,
    )


def add_dp_noise(
    grads: Params, key: Array, *, l2_norm_clip, noise_multiplier, batch_size: int
) -> Params:
    """Adds DP-SGD's Gaussian noise to a mean of clipped gradients.

    ``(sum_i clip(g_i) + N(0, (sigma C)^2 I)) / B`` is the clipped mean plus noise of
    standard deviation ``sigma C / B`` per entry. The noise of all leaves is one draw
    of :func:`gaussian_noise` from ``key``, as long as all the parameters together
    (``jax.tree.leaves`` order, each leaf row-major), cut into the leaves. Kept apart
    from the clipping so that a data-parallel step can average the per-device
    clipped means first and add the noise once, for the global ``B``.

    Args:
      grads: the clipped mean gradient, a pytree.
      key: a ``jax.random`` key; use a fresh one every step.
      l2_norm_clip: ``C``.
      noise_multiplier: ``sigma``.
      batch_size: ``B``, the number of examples in the mean.

    Returns:
      ``grads`` plus the noise, same structure and dtypes.
    """
    leaves, treedef = jax.tree.flatten(grads)
    noise_std = noise_multiplier * l2_norm_clip / batch_size
    noise = _noise.gaussian_noise_like(key, leaves)
    noisy = [g + noise_std * z for g, z in zip(leaves, noise, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


#: The stream ``dp_noise_key`` folds into a key before the step ("DPSG" in ASCII).
_NOISE_STREAM = 0x44505347


def dp_noise_key(key: Array, step) -> Array:
    """The noise key of one training step, independent of the key's other uses.

    ``jax.random.fold_in(key, i)`` equals ``jax.random.split(key, n)[i]`` (threefry
    with ``jax_threefry_partitionable``, the default), so folding the step straight
    into a key that is also split (for the epoch's shuffle, say) would reuse those
    keys' randomness at steps 0 and 1. This folds in a fixed large stream id first.

    Args:
      key: a ``jax.random`` key, e.g. ``TrainState.key``.
      step: the step number, a Python or traced integer (``TrainState.step``).

    Returns:
      A new key: ``fold_in(fold_in(key, 0x44505347), step)``.
    """
    return _noise.fold_in(_noise.fold_in(key, _NOISE_STREAM), step)


def make_dp_value_and_grad(
    net: Net, *, l2_norm_clip, noise_multiplier=0.0, method: str = "manual"
) -> Callable[..., tuple[Array, Params]]:
    """A DP-SGD ``(params, x, y, key) -> (loss, grads)`` for a training step.

    The returned function is :func:`clipped_grad` with the clip and noise fixed; it is
    pure and jittable. Feed it a fresh key each step, e.g.
    ``dp_noise_key(state.key, state.step)``; with ``noise_multiplier=0`` the key is
    unused and may be ``None``. Give the result to any optax optimizer in place of the
    plain gradient (do not chain ``differentially_private_aggregate`` as well).

    Args:
      net: the network spec, an :class:`~jaxbp.MLP` or a :class:`~jaxbp.Sequential`
        (:func:`check_per_example`).
      l2_norm_clip: the per-example clipping norm ``C > 0``.
      noise_multiplier: ``sigma >= 0``, noise std relative to ``C`` (before ``1/B``).
      method: ``"manual"`` (the factorised hand-derived path) or ``"autodiff"``
        (``vmap(grad)``, materialised).

    Returns:
      ``dp_value_and_grad(params, x, y, key=None, *, dropout_key=None) -> (loss,
      grads)``: the unclipped batch loss and the noisy clipped mean gradient shaped
      like ``params``; ``dropout_key`` draws a Sequential's Dropout masks (a fresh
      one each step, apart from the noise ``key``).

    Raises:
      ValueError: on a non-positive ``l2_norm_clip``, a negative
        ``noise_multiplier``, an unknown ``method`` or a network without per-example
        gradients, such as one with BatchNorm (at once, not at the first call).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = MLP(sizes=(3, 4, 2))
      >>> params = net.init(jax.random.key(0))
      >>> step_grad = jax.jit(make_dp_value_and_grad(
      ...     net, l2_norm_clip=1.0, noise_multiplier=1.1))
      >>> loss, grads = step_grad(params, jnp.ones((5, 3)), jnp.zeros(5, int),
      ...                         jax.random.key(1))
      >>> grads[0]["w"].shape
      (3, 4)
    """
    check_dp_args(l2_norm_clip, noise_multiplier)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_per_example(net)

    def dp_value_and_grad(params, x, y, key=None, *, dropout_key=None):
        return clipped_grad(
            net,
            params,
            x,
            y,
            l2_norm_clip=l2_norm_clip,
            noise_multiplier=noise_multiplier,
            key=key,
            method=method,
            dropout_key=dropout_key,
        )

    return dp_value_and_grad
