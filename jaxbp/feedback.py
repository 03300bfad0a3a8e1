"""Learning rules whose backward pass does not use ``W^T``, measured against the truth.

Backpropagation carries the error of a dense layer ``l`` back to its input through the
transposed forward weights (:mod:`jaxbp.backward`):

.. math::

   \\delta_{l-1} = (\\delta_l W_l^\\top) \\odot f'(z_{l-1}), \\qquad
   \\Delta W_l = a_{l-1}^\\top \\delta_l .

The rules here keep the forward pass, the output error ``delta_L`` and the local
update ``a_{l-1}^T delta_l``, and change only the matrix of the backward step:

* ``feedback-alignment`` (Lillicrap, Cownden, Tweed & Akerman, *Nature
  Communications* 7, 13276, 2016): a fixed random matrix ``B_l`` in place of ``W_l``,
  ``delta_{l-1} = (delta_l B_l^T) * f'(z_{l-1})``.
* ``direct-feedback-alignment`` (Nøkland, NeurIPS 2016): every hidden layer receives
  the output error directly through its own fixed random matrix ``D_l``,
  ``delta_{l-1} = (delta_L D_l^T) * f'(z_{l-1})``.
* ``sign-symmetry`` (Liao, Leibo & Poggio, AAAI 2016): the signs of the forward
  weights, ``delta_{l-1} = (delta_l sign(W_l)^T) * f'(z_{l-1})``; nothing is stored.

**The feedback pytree.** ``feedback`` is a list with one entry per entry of
``params``: the matrix that the backward step across that layer's *input* uses in
place of ``W_l``, or ``None`` where there is none (every layer that is not a
:class:`~jaxbp.layers.Dense`, and a Dense layer with no parameters below it, whose
input error nobody needs: the first layer of an MLP). A feedback-alignment matrix
``B_l`` has the shape of ``W_l``, ``(n_{l-1}, n_l)``, so ``feedback = [None, W_2,
..., W_L]`` *is* backpropagation (the issue's ``B_l = W_l^T`` in the orientation in
which the product is ``delta_l B_l^T``). A direct matrix ``D_l`` has the shape
``(n_{l-1}, n_L)``: it carries the output error to the input of layer ``l``; for the
last layer it is an FA matrix, and for a linear network ``D_l = W_l W_{l+1} ... W_L``
is backpropagation. The matrices never change during training.

**Drawing them** (:func:`init_feedback`): both papers draw their feedback matrices
from uniform distributions; here every matrix is drawn as the forward weight of its
shape would be by Glorot (Xavier) uniform, ``U(-r, r)`` with ``r = sqrt(6 /
(rows + cols))``, for the sigmoid and tanh networks of both papers. The reason: the
error signals of a rule then start at the size of backpropagation's, so one learning
rate serves every rule and backprop in a comparison. A user can pass any matrices
instead.

**Which layers.** The rules replace the backward matrix of every
:class:`~jaxbp.layers.Dense` layer of an :class:`~jaxbp.MLP` or a
:class:`~jaxbp.Sequential`; every other layer (convolution, normalisation, pooling,
Dense layers inside a :class:`~jaxbp.layers.Residual` block) keeps its exact
hand-derived backward. Direct feedback alignment sends the error past the layers
between, so it takes a Sequential only when every layer with parameters is a
top-level Dense layer (activations, Dropout, Flatten and Reshape between them keep
their exact backward); :func:`check_supported` says so otherwise.

**Measured against the true gradient.** :func:`alignment` takes ``jax.grad`` of the
same loss on the same batch and returns, per Dense layer, the angle between the
rule's weight update and the true gradient, the angle between the rule's error
signal ``delta_l`` and the true ``dL/dz_l``, the ratio of their norms, and the angle
between the feedback matrix and the forward weights. The rules themselves use no
autodiff.
"""

import math

import jax
import jax.numpy as jnp

from jaxbp import backward
from jaxbp.layers import Dense, Residual
from jaxbp.layers.base import chain_backward, chain_forward, layer_key
from jaxbp.layers.dense import dense, dense_input_grad, dense_param_grads
from jaxbp.layers.elementwise import activation_backward
from jaxbp.mlp import MLP
from jaxbp.sequential import Sequential

Array = jax.Array
Net = MLP | Sequential
Feedback = list

#: The learning rules, by the name ``jaxbp train --grad`` takes.
RULES = ("feedback-alignment", "direct-feedback-alignment", "sign-symmetry")

#: The rules whose feedback matrices are drawn once and stored (sign symmetry
#: derives its own from the weights at every step).
STORED_RULES = ("feedback-alignment", "direct-feedback-alignment")

#: The keys of :func:`alignment`'s result, each an array with one value per Dense
#: layer (:func:`dense_layers`).
ALIGNMENT_METRICS = ("update_angle", "delta_angle", "norm_ratio", "feedback_angle")


# --------------------------------------------------------------------- structure
def check_rule(rule: str) -> None:
    """Raises ``ValueError`` unless ``rule`` is one of :data:`RULES`."""
    if rule not in RULES:
        raise ValueError(
            f"unknown learning rule {rule!r}: expected one of {', '.join(RULES)}"
        )


def dense_layers(net: Net) -> list[int]:
    """The 0-based indices into ``params`` of the layers the rules apply to: every
    layer of an MLP, the top-level Dense layers of a Sequential."""
    if isinstance(net, MLP):
        return list(range(net.depth))
    return [i for i, layer in enumerate(net.layers) if isinstance(layer, Dense)]


def _param_shapes(net: Net) -> list:
    return jax.eval_shape(net.init, jax.random.key(0))


def check_supported(net: Net, rule: str) -> None:
    """Raises ``ValueError`` if ``rule`` cannot train ``net``, naming the layer.

    Every rule needs at least one Dense layer; direct feedback alignment needs every
    layer with parameters to be a top-level Dense layer.
    """
    check_rule(rule)
    if not dense_layers(net):
        raise ValueError(
            f"{rule} replaces the backward matrix of Dense layers; {net} has none"
        )
    if rule != "direct-feedback-alignment" or isinstance(net, MLP):
        return
    shapes = _param_shapes(net)
    for i, (layer, p) in enumerate(zip(net.layers, shapes, strict=True), start=1):
        if isinstance(layer, Residual) or (
            not isinstance(layer, Dense) and jax.tree.leaves(p)
        ):
            raise ValueError(
                f"direct-feedback-alignment sends the output error straight to each "
                f"Dense layer, past the layers between, so it cannot train "
                f"{net.describe_layer(i)}; use feedback-alignment or sign-symmetry, "
                "which keep the exact backward of layers other than Dense"
            )


def feedback_shapes(net: Net, rule: str) -> list[tuple[int, int] | None]:
    """The shape of each entry of ``feedback`` (``None``: no matrix there).

    A Dense layer has a feedback matrix when some layer below it has parameters:
    ``W_l``'s shape ``(n_{l-1}, n_l)`` for feedback alignment, ``(n_{l-1}, n_L)``
    for direct feedback alignment. Sign symmetry stores none (all ``None``).
    """
    check_supported(net, rule)
    shapes = _param_shapes(net)
    dense_idx = dense_layers(net)
    num_outputs = shapes[dense_idx[-1]]["w"].shape[1]
    out: list = [None] * len(shapes)
    if rule not in STORED_RULES:
        return out
    for i in dense_idx:
        if not jax.tree.leaves(shapes[:i]):
            continue  # nothing below needs the error at this layer's input
        fan_in, fan_out = shapes[i]["w"].shape
        out[i] = (fan_in, fan_out if rule == "feedback-alignment" else num_outputs)
    return out


def init_feedback(net: Net, key: Array, rule: str, *, dtype=jnp.float32):
    """Draws the fixed feedback matrices of a rule.

    Each matrix of shape ``(rows, cols)`` is uniform on ``[-r, r]`` with ``r =
    sqrt(6 / (rows + cols))`` (Glorot uniform, the scale of a forward weight of that
    shape; see the module docstring for why).

    Args:
      net: the network spec.
      key: a ``jax.random`` key; each matrix folds in its layer index.
      rule: one of :data:`RULES`.
      dtype: the parameters' float dtype.

    Returns:
      The feedback list (one entry per layer, :func:`feedback_shapes`), or ``None``
      for ``sign-symmetry``, which stores nothing.

    Examples:
      >>> import jax
      >>> net = MLP((4, 3, 2))
      >>> fb = init_feedback(net, jax.random.key(0), "feedback-alignment")
      >>> [None if b is None else b.shape for b in fb]
      [None, (3, 2)]
    """
    shapes = feedback_shapes(net, rule)
    if rule not in STORED_RULES:
        return None
    out = []
    for i, shape in enumerate(shapes):
        if shape is None:
            out.append(None)
            continue
        limit = math.sqrt(6.0 / sum(shape))
        k = jax.random.fold_in(key, i)
        out.append(jax.random.uniform(k, shape, dtype, -limit, limit))
    return out


def check_feedback(net: Net, params: list, feedback, rule: str) -> None:
    """Checks ``feedback`` against the rule and the network, naming the entry.

    Raises:
      ValueError: if the rule is unknown or cannot train the network, if a stored
        rule is given no list of the right length, if an entry is missing, extra,
        of the wrong shape or of another dtype than the parameters, or if
        ``sign-symmetry`` is given matrices.
    """
    shapes = feedback_shapes(net, rule)
    if rule not in STORED_RULES:
        if feedback is not None:
            raise ValueError(
                "sign-symmetry derives its feedback from the weights, sign(W); pass "
                "feedback=None"
            )
        return
    if not isinstance(feedback, list | tuple) or len(feedback) != len(shapes):
        got = (
            f"a list of {len(feedback)}"
            if isinstance(feedback, list | tuple)
            else type(feedback).__name__
        )
        raise ValueError(
            f"{rule} needs feedback as a list with one entry per layer "
            f"({len(shapes)}), got {got}; draw it with init_feedback(net, key, rule)"
        )
    dtype = jnp.result_type(jax.tree.leaves(params)[0])
    for i, (b, shape) in enumerate(zip(feedback, shapes, strict=True)):
        if shape is None and b is not None:
            raise ValueError(
                f"feedback[{i}] must be None (layer {i + 1} has no backward matrix "
                f"to replace under {rule}), got an array of shape {jnp.shape(b)}"
            )
        if shape is None:
            continue
        if b is None:
            raise ValueError(f"feedback[{i}] is None; {rule} needs a {shape} matrix")
        if tuple(jnp.shape(b)) != shape:
            raise ValueError(
                f"feedback[{i}] has shape {tuple(jnp.shape(b))}, expected {shape} "
                f"for {rule} (the rows are layer {i + 1}'s inputs)"
            )
        if jnp.result_type(b) != dtype:
            raise ValueError(
                f"feedback[{i}] has dtype {jnp.result_type(b)}, expected the "
                f"parameters' {dtype}"
            )


def backward_matrices(net: Net, params: list, feedback, rule: str) -> list:
    """The matrix each layer's backward step uses in place of ``W_l``: the stored
    ``feedback`` for FA and DFA, ``sign(W_l)`` for sign symmetry (``None`` where the
    backward is exact or not needed)."""
    if rule in STORED_RULES:
        return list(feedback)
    out = [None] * len(params)
    for i in dense_layers(net):
        if jax.tree.leaves(params[:i]):  # a layer below needs the error
            out[i] = jnp.sign(params[i]["w"])  # B_l = sign(W_l)
    return out


# --------------------------------------------------------------------- the rules
def feedback_deltas(
    net: Net,
    params: list,
    feedback,
    x: Array,
    targets: Array,
    rule: str,
    *,
    state=None,
    key=None,
):
    """The forward pass, then the rule's backward pass: no autodiff.

    Args:
      net: the network spec.
      params: its parameters.
      feedback: the rule's matrices (:func:`init_feedback`; ``None`` for sign
        symmetry), already checked.
      x: checked inputs ``(B, ...)`` (``net.check_batch``).
      targets: float targets ``(B, K)``.
      rule: one of :data:`RULES`.
      state: a Sequential's running statistics, or ``None``.
      key: a ``jax.random`` key for a Sequential's Dropout.

    Returns:
      ``(loss, updates, deltas, new_state)``: the batch loss, the rule's update
      direction shaped like ``params`` (the gradient's place in an optimizer),
      ``deltas[i]`` the rule's error signal ``delta = dL/dz`` at the output of each
      Dense layer ``i`` (``None`` elsewhere), and the new running statistics
      (``None`` for an MLP).
    """
    matrices = backward_matrices(net, params, feedback, rule)
    direct = rule == "direct-feedback-alignment"
    if isinstance(net, MLP):
        cache = backward.forward_pass(params, x, net.hidden, net.output)
        # L = (1/B) sum_i l_i  =>  delta_L = (1/B) dl_i/dz_L
        delta_out = backward.output_delta(cache, targets, net.output, net.loss_fn)
        delta_out = delta_out / x.shape[0]
        if direct:
            deltas = _direct_mlp_deltas(net, cache, matrices, delta_out)
        else:
            # delta_{l-1} = (delta_l B_l^T) * f'(z_{l-1}): backprop's own loop, with
            # B_l where it reads W_l.
            back = [None if m is None else {"w": m} for m in matrices]
            deltas = backward.backward_deltas(back, cache, delta_out, net.hidden)
        value = net.loss_fn.value(cache.a[-1], targets)
        return value, backward.grads_from_deltas(cache, deltas), deltas, None

    out, caches, new_state = chain_forward(
        net.layers, params, x, states=state, key=key, train=True
    )
    # delta_n = (1/B) dl/dy_n at the network's output
    delta = net.loss_fn.grad_out(out, targets) / x.shape[0]
    if direct:
        grads, deltas = _direct_chain(net, params, caches, matrices, delta)
    else:
        # Each Dense layer's backward reads "w" for dL/dx = delta W^T only: give it
        # B_l there; every other layer keeps its parameters and exact backward.
        back = [
            p if m is None else {**p, "w": m}
            for p, m in zip(params, matrices, strict=True)
        ]
        grads, _, outs = chain_backward(net.layers, back, caches, delta)
        deltas = [outs[i] if i in dense_layers(net) else None for i in range(len(outs))]
    return net.loss_fn.value(out, targets), grads, deltas, new_state


def _direct_mlp_deltas(net: MLP, cache, matrices, delta_out) -> list[Array]:
    """DFA's error signals of an MLP: each hidden layer from the output error."""
    deltas = [delta_out]
    for l in range(len(matrices) - 1, 0, -1):
        # delta_{l-1} = (delta_L D_l^T) * f'(z_{l-1})
        back = dense_input_grad({"w": matrices[l]}, delta_out)
        deltas.insert(
            0, activation_backward(net.hidden.name, cache.z[l - 1], cache.a[l], back)
        )
    return deltas


def _direct_chain(net: Sequential, params, caches, matrices, delta):
    """DFA's updates and error signals of a Sequential of Dense and parameter-free
    layers (:func:`check_supported`)."""
    n = len(net.layers)
    grads, deltas = [{} for _ in range(n)], [None] * n
    idx = dense_layers(net)
    k = idx[-1]
    # The exact backward through whatever follows the last Dense layer: e = dL/dz_L.
    grads[k + 1 :], e, _ = chain_backward(
        net.layers[k + 1 :], params[k + 1 :], caches[k + 1 :], delta
    )
    deltas[k], grads[k] = e, dense_param_grads(caches[k], e)
    for i, j in zip(reversed(idx[:-1]), reversed(idx[1:]), strict=True):
        # The error at the input of Dense layer j comes straight from the output:
        # e D_j^T; the parameter-free layers between i and j carry it to z_i.
        dy = dense_input_grad({"w": matrices[j]}, e)
        grads[i + 1 : j], dy, _ = chain_backward(
            net.layers[i + 1 : j], params[i + 1 : j], caches[i + 1 : j], dy
        )
        # dW_i = a_{i-1}^T delta_i ;  db_i = sum_batch delta_i
        deltas[i], grads[i] = dy, dense_param_grads(caches[i], dy)
    return grads, deltas


def value_and_feedback_grad_with_state(
    net: Net,
    params: list,
    feedback,
    x: Array,
    y: Array,
    rule: str,
    *,
    state=None,
    key=None,
):
    """``((loss, new_state), updates)`` of a rule: the form a training step takes.

    As :func:`value_and_feedback_grad`, also returning a Sequential's updated
    running statistics (``None`` for an MLP).
    """
    x, targets = net.check_batch(params, x, y)
    check_feedback(net, params, feedback, rule)
    value, updates, _, new_state = feedback_deltas(
        net, params, feedback, x, targets, rule, state=state, key=key
    )
    return (value, new_state), updates


def value_and_feedback_grad(
    net: Net, params: list, feedback, x: Array, y: Array, rule: str, *, key=None
):
    """The loss and a rule's update: the delta rule with another backward matrix.

    The counterpart of :meth:`jaxbp.MLP.value_and_manual_grad` (which is the rule
    with ``feedback = [None, W_2, ..., W_L]``); no autodiff.

    Args:
      net: an :class:`~jaxbp.MLP` or :class:`~jaxbp.Sequential`.
      params: its parameters.
      feedback: the rule's fixed matrices (:func:`init_feedback`, or your own of
        the shapes :func:`feedback_shapes` gives); ``None`` for ``sign-symmetry``.
      x: inputs ``(B, ...)``.
      y: integer labels ``(B,)`` or float targets ``(B, K)``.
      rule: one of :data:`RULES`.
      key: a ``jax.random`` key for a Sequential's Dropout.

    Returns:
      ``(loss, updates)``: the batch loss and the rule's update direction, shaped
      like ``params``, to hand to an optimizer where a gradient would go.

    Raises:
      ValueError: on an unknown rule, a network the rule cannot train, or feedback
        of the wrong structure or shape (naming the entry).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = MLP((4, 3, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 4)), jnp.array([0, 1, 1, 0, 1])
      >>> # B_l = W_l: feedback alignment with the true weights is backprop.
      >>> fb = [None, params[1]["w"]]
      >>> _, upd = value_and_feedback_grad(net, params, fb, x, y, "feedback-alignment")
      >>> _, grads = net.value_and_manual_grad(params, x, y)
      >>> bool(jnp.allclose(upd[0]["w"], grads[0]["w"]))
      True
    """
    (value, _), updates = value_and_feedback_grad_with_state(
        net, params, feedback, x, y, rule, key=key
    )
    return value, updates


# --------------------------------------------------------------------- alignment
def angle(a: Array, b: Array) -> Array:
    """The angle between two arrays as vectors, in degrees; ``nan`` if one is zero.

    ``2 atan2(|u - v|, |u + v|)`` of the unit vectors ``u, v`` (Kahan's form, exact
    near 0° and 180° where ``arccos`` of the cosine loses half the digits).

    Examples:
      >>> import jax.numpy as jnp
      >>> round(float(angle(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))), 4)
      45.0
    """
    a, b = jnp.ravel(a), jnp.ravel(b)
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    u, v = a / na, b / nb
    theta = 2.0 * jnp.arctan2(jnp.linalg.norm(u - v), jnp.linalg.norm(u + v))
    return jnp.where((na > 0) & (nb > 0), jnp.degrees(theta), jnp.nan)


def true_grads_and_deltas(net: Net, params: list, x, targets, *, state=None, key=None):
    """``jax.grad``'s weight gradient and error signals ``dL/dz`` of the Dense layers.

    The error signals are the gradient with respect to a zero added to each Dense
    layer's output (``z_l + eps_l``, ``eps_l = 0``), so both come from one
    ``jax.grad`` of the loss, independently of the hand-derived backward.

    Returns:
      ``(grads, deltas)``: ``grads`` shaped like ``params``; ``deltas[i]`` shaped
      like Dense layer ``i``'s output (``None`` elsewhere).
    """
    idx = dense_layers(net)

    def loss(params, eps):
        if isinstance(net, MLP):
            a = x
            for l, layer in enumerate(params):
                z = dense(layer, a) + eps[l]
                a = (net.output if l == net.depth - 1 else net.hidden).fn(z)
            return net.loss_fn.value(a, targets)
        h = x
        states = [None] * len(net.layers) if state is None else state
        for i, (layer, p, s) in enumerate(zip(net.layers, params, states, strict=True)):
            h, _, _ = layer.forward(p, h, state=s, key=layer_key(key, i), train=True)
            if eps[i] is not None:
                h = h + eps[i]
        return net.loss_fn.value(h, targets)

    # eps_l = 0, shaped like z_l = (B, n_l)
    eps = [
        jnp.zeros((x.shape[0], p["w"].shape[1]), x.dtype) if i in idx else None
        for i, p in enumerate(params)
    ]
    grads, deltas = jax.grad(loss, argnums=(0, 1))(params, eps)
    return grads, deltas


def _effective_backward(net: Net, params, matrices, rule: str, i: int) -> Array:
    """What ``matrices[i]`` stands in for: ``W_i``, or for DFA ``W_i W_j ... W_L``
    (the product of the Dense weights from layer ``i`` up, backprop's matrix in a
    linear network)."""
    if rule != "direct-feedback-alignment":
        return params[i]["w"]
    product = params[i]["w"]
    for j in dense_layers(net):
        if j > i:
            product = product @ params[j]["w"]
    return product


def alignment(
    net: Net, params: list, feedback, x: Array, y: Array, rule: str, *, key=None
) -> dict[str, Array]:
    """A rule measured against the true gradient on one batch, per Dense layer.

    Args:
      net: the network spec.
      params: its parameters.
      feedback: the rule's matrices (``None`` for sign symmetry).
      x: inputs ``(B, ...)``.
      y: labels ``(B,)`` or targets ``(B, K)``.
      rule: one of :data:`RULES`.
      key: a ``jax.random`` key for a Sequential's Dropout (the rule and
        ``jax.grad`` draw the same masks).

    Returns:
      A dict of :data:`ALIGNMENT_METRICS`, each a float array with one value per
      Dense layer (:func:`dense_layers`, input side first):

      * ``update_angle``: degrees between the rule's ``dW_l`` and ``jax.grad``'s;
      * ``delta_angle``: degrees between the rule's error signal ``delta_l`` and the
        true ``dL/dz_l`` over the batch ``(B, n_l)``;
      * ``norm_ratio``: ``|dW_l (rule)| / |dW_l (true)|``;
      * ``feedback_angle``: degrees between the feedback matrix ``B_l`` and ``W_l``
        as vectors (for DFA, ``D_l`` and ``W_l ... W_L``); ``nan`` for a layer
        without one.

      The output layer's update is exact under every rule (0°). Jittable.
    """
    x, targets = net.check_batch(params, x, y)
    check_feedback(net, params, feedback, rule)
    _, updates, deltas, _ = feedback_deltas(
        net, params, feedback, x, targets, rule, key=key
    )
    true_grads, true_deltas = true_grads_and_deltas(net, params, x, targets, key=key)
    matrices = backward_matrices(net, params, feedback, rule)
    rows = {name: [] for name in ALIGNMENT_METRICS}
    nan = jnp.asarray(jnp.nan, jnp.result_type(updates[0]["w"]))
    for i in dense_layers(net):
        rows["update_angle"].append(angle(updates[i]["w"], true_grads[i]["w"]))
        rows["delta_angle"].append(angle(deltas[i], true_deltas[i]))
        ratio = jnp.linalg.norm(updates[i]["w"]) / jnp.linalg.norm(true_grads[i]["w"])
        rows["norm_ratio"].append(ratio)
        if matrices[i] is None:
            rows["feedback_angle"].append(nan)
        else:
            target = _effective_backward(net, params, matrices, rule, i)
            rows["feedback_angle"].append(angle(matrices[i], target))
    return {name: jnp.stack(values) for name, values in rows.items()}
