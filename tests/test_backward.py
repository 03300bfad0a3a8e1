"""The hand-derived backward pass: no autodiff anywhere, and the delta rule piecewise.

The first half proves that :meth:`jaxbp.MLP.manual_grad` never reaches JAX's automatic
differentiation: every public and internal autodiff entry point is replaced by one that
raises, and the manual gradients, eager and freshly traced under ``jax.jit``, still
equal autodiff gradients computed beforehand. The second half checks the pieces of
:mod:`jaxbp.backward` (forward cache, output delta, backpropagated deltas, parameter
and input gradients) one by one against ``jax.grad``.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_harness import AutodiffCalled, forbid_autodiff

import jaxbp
from jaxbp import backward

SIZES = {1: (6, 4), 2: (6, 5, 4), 3: (6, 5, 5, 4), 4: (6, 5, 5, 5, 4)}
BATCH = 7


def _params(net, dtype, seed=0):
    """Random parameters (NumPy-drawn, so no ``jax.random`` compiles) with biases."""
    rng = np.random.default_rng(seed)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=n), dtype),
        }
        for m, n in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    ]


def _batch(net, dtype, targets, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(BATCH, net.sizes[0])), dtype)
    labels = rng.integers(0, net.sizes[-1], size=BATCH)
    if targets == "labels":
        return x, jnp.asarray(labels, jnp.int32)
    return x, jnp.asarray(rng.uniform(0.05, 0.95, size=(BATCH, net.sizes[-1])), dtype)


_NETS = [
    jaxbp.MLP(SIZES[1], activation="sigmoid"),
    jaxbp.MLP(SIZES[2], activation="relu", objective="softmax_cross_entropy"),
    jaxbp.MLP(
        SIZES[3], activation="gelu", output_activation="sigmoid", objective="mse"
    ),
    jaxbp.MLP(
        SIZES[4], activation="elu", output_activation="tanh", objective="half_sse"
    ),
    jaxbp.MLP(SIZES[2], activation="softplus", objective="half_sse"),
    jaxbp.MLP(
        SIZES[2], activation="leaky_relu", output_activation="softplus", objective="mse"
    ),
]


def _net_id(net):
    return str(net)


@pytest.mark.parametrize("net", _NETS, ids=_net_id)
def test_manual_grad_uses_no_autodiff(net, monkeypatch):
    targets = "labels" if net.objective == "softmax_cross_entropy" else "float"
    params = _params(net, "float32")
    x, y = _batch(net, "float32", targets)
    original_grad = jax.grad
    expected_value, expected = jax.value_and_grad(net.loss)(params, x, y)

    patched = forbid_autodiff(monkeypatch)
    assert "jax._src.interpreters.ad.backward_pass" in patched
    assert "jax._src.interpreters.ad.JVPTrace" in patched

    # The patch really cuts autodiff off, even through a reference taken beforehand.
    with pytest.raises(AutodiffCalled):
        jax.grad(net.loss)(params, x, y)
    with pytest.raises(AutodiffCalled):
        original_grad(net.loss)(params, x, y)
    with pytest.raises(AutodiffCalled):
        jax.jit(lambda p: original_grad(net.loss)(p, x, y))(params)

    # Eager, then traced afresh under jit (a new function, so nothing is cached).
    value, manual = net.value_and_manual_grad(params, x, y)
    chex.assert_trees_all_close(manual, expected, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(value, expected_value, rtol=1e-6)
    jitted = jax.jit(lambda p, xx, yy: net.manual_grad(p, xx, yy))(params, x, y)
    chex.assert_trees_all_close(jitted, expected, rtol=1e-4, atol=1e-6)


def test_manual_grad_uses_no_autodiff_float64(monkeypatch):
    net = _NETS[3]
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float64", "float")
        expected = jax.grad(net.loss)(params, x, y)
        forbid_autodiff(monkeypatch)
        manual = net.manual_grad(params, x, y)
        jitted = jax.jit(lambda p, xx, yy: net.manual_grad(p, xx, yy))(params, x, y)
        chex.assert_trees_all_close(manual, expected, rtol=1e-10, atol=1e-14)
        chex.assert_trees_all_close(jitted, expected, rtol=1e-10, atol=1e-14)


def test_backward_functions_use_no_autodiff(monkeypatch):
    net = _NETS[2]
    params = _params(net, "float32")
    x, y = _batch(net, "float32", "float")
    expected_dx = jax.grad(net.loss, argnums=1)(params, x, y)
    forbid_autodiff(monkeypatch)
    cache = backward.forward_pass(params, x, net.hidden, net.output)
    delta_out = backward.output_delta(cache, y, net.output, net.loss_fn) / BATCH
    deltas = backward.backward_deltas(params, cache, delta_out, net.hidden)
    backward.grads_from_deltas(cache, deltas)
    dx = backward.input_grad(params, deltas)
    chex.assert_trees_all_close(dx, expected_dx, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("net", _NETS, ids=_net_id)
def test_manual_grad_jaxpr_has_no_derivative_rules(net):
    # The traced program of manual_grad holds plain primitives only: no custom_vjp
    # call (the custom_vjp of loss_with_manual_vjp is not on this path).
    params = _params(net, "float32")
    x, y = _batch(net, "float32", "labels")
    jaxpr = jax.make_jaxpr(net.manual_grad)(params, x, y)
    assert "custom_vjp" not in str(jaxpr)


# --- the delta rule, piece by piece ---------------------------------------------
def _continue_forward(net, params, l, z, targets):
    """The batch loss as a function of ``z_{l+1}`` (0-based layer ``l``)."""
    last = net.depth - 1
    a = (net.output if l == last else net.hidden).fn(z)
    for k in range(l + 1, net.depth):
        z = a @ params[k]["w"] + params[k]["b"][None, :]
        a = (net.output if k == last else net.hidden).fn(z)
    return net.loss_fn.value(a, targets)


@pytest.mark.parametrize("depth", sorted(SIZES))
def test_forward_pass_cache(depth):
    net = jaxbp.MLP(
        SIZES[depth], activation="tanh", output_activation="sigmoid", objective="mse"
    )
    params = _params(net, "float32")
    x, _ = _batch(net, "float32", "labels")
    cache = backward.forward_pass(params, x, net.hidden, net.output)
    assert len(cache.a) == depth + 1 and len(cache.z) == depth
    assert cache.a[0] is x
    for l in range(depth):
        assert cache.z[l].shape == cache.a[l + 1].shape == (BATCH, net.sizes[l + 1])
        z = np.asarray(cache.a[l]) @ np.asarray(params[l]["w"]) + np.asarray(
            params[l]["b"]
        )
        np.testing.assert_allclose(cache.z[l], z, rtol=1e-5, atol=1e-6)
        act = net.output if l == depth - 1 else net.hidden
        np.testing.assert_array_equal(cache.a[l + 1], act.fn(cache.z[l]))


_OUTPUT_CASES = [
    ("identity", "softmax_cross_entropy"),
    ("identity", "half_sse"),
    ("identity", "mse"),
    ("sigmoid", "half_sse"),
    ("sigmoid", "mse"),
    ("tanh", "mse"),
    ("softplus", "half_sse"),
    ("gelu", "mse"),
    ("elu", "half_sse"),
]


@pytest.mark.parametrize(("output", "objective"), _OUTPUT_CASES)
def test_output_delta(output, objective):
    net = jaxbp.MLP(
        SIZES[2], activation="tanh", output_activation=output, objective=objective
    )
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float64", "float")
        cache = backward.forward_pass(params, x, net.hidden, net.output)
        delta = backward.output_delta(cache, y, net.output, net.loss_fn)
        # delta_L[i] = d l_i / d z_L[i]: the gradient of the *sum* of per-example losses
        auto = jax.grad(
            lambda z: jnp.sum(net.loss_fn.per_example(net.output.fn(z), y))
        )(cache.z[-1])
        np.testing.assert_allclose(delta, auto, rtol=1e-10, atol=1e-14)


def test_output_delta_fused_softmax_cross_entropy():
    net = jaxbp.MLP(SIZES[2], activation="tanh")
    params = _params(net, "float32")
    x, labels = _batch(net, "float32", "labels")
    onehot = jax.nn.one_hot(labels, 4, dtype=jnp.float32)
    cache = backward.forward_pass(params, x, net.hidden, net.output)
    delta = backward.output_delta(cache, onehot, net.output, net.loss_fn)
    expected = jax.nn.softmax(cache.z[-1], axis=-1) - onehot
    np.testing.assert_allclose(delta, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "gelu"])
@pytest.mark.parametrize("depth", sorted(SIZES))
def test_backward_deltas_are_dL_dz(depth, activation):
    net = jaxbp.MLP(
        SIZES[depth], activation=activation, output_activation="tanh", objective="mse"
    )
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float64", "float")
        cache = backward.forward_pass(params, x, net.hidden, net.output)
        delta_out = backward.output_delta(cache, y, net.output, net.loss_fn) / BATCH
        deltas = backward.backward_deltas(params, cache, delta_out, net.hidden)
        assert len(deltas) == depth
        for l in range(depth):
            auto = jax.grad(lambda z, l=l: _continue_forward(net, params, l, z, y))(
                cache.z[l]
            )
            assert deltas[l].shape == cache.z[l].shape
            np.testing.assert_allclose(deltas[l], auto, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("depth", sorted(SIZES))
def test_grads_from_deltas(depth):
    net = jaxbp.MLP(SIZES[depth], activation="softplus", objective="half_sse")
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float64", "float")
        cache = backward.forward_pass(params, x, net.hidden, net.output)
        delta_out = backward.output_delta(cache, y, net.output, net.loss_fn) / BATCH
        deltas = backward.backward_deltas(params, cache, delta_out, net.hidden)
        grads = backward.grads_from_deltas(cache, deltas)
        chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
        for l in range(depth):
            a_prev, delta = np.asarray(cache.a[l]), np.asarray(deltas[l])
            # dL/dW = a_prev^T delta, summed over the batch example by example
            outer = sum(np.outer(a_prev[i], delta[i]) for i in range(BATCH))
            np.testing.assert_allclose(grads[l]["w"], outer, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(grads[l]["b"], delta.sum(axis=0), rtol=1e-12)
        chex.assert_trees_all_close(
            grads, jax.grad(net.loss)(params, x, y), rtol=1e-10, atol=1e-14
        )


@pytest.mark.parametrize("objective", ["softmax_cross_entropy", "mse"])
@pytest.mark.parametrize("depth", [1, 3])
def test_input_grad(depth, objective):
    net = jaxbp.MLP(SIZES[depth], activation="sigmoid", objective=objective)
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float64", "labels")
        targets = jax.nn.one_hot(y, 4, dtype=jnp.float64)
        cache = backward.forward_pass(params, x, net.hidden, net.output)
        delta_out = (
            backward.output_delta(cache, targets, net.output, net.loss_fn) / BATCH
        )
        deltas = backward.backward_deltas(params, cache, delta_out, net.hidden)
        dx = backward.input_grad(params, deltas)
        assert dx.shape == x.shape
        auto = jax.grad(net.loss, argnums=1)(params, x, y)
        np.testing.assert_allclose(dx, auto, rtol=1e-10, atol=1e-14)
