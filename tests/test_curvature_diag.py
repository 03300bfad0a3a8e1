"""Curvature diagonals by hand (jaxbp.curvature.diag) against jax.hessian and the
Gauss-Newton matrix built column by column with jax.jvp and jax.vjp."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_harness import conv_net, ref_ggn_vp, rel_error, setup
from jax.flatten_util import ravel_pytree
from layer_harness import forbid_autodiff

from jaxbp import MLP, Sequential
from jaxbp.activations import ACTIVATIONS
from jaxbp.curvature import diag, diag_ggn, diag_ggn_mc, diag_hessian, network
from jaxbp.layers import BatchNorm, Dense

LOSSES = ("softmax_cross_entropy", "half_sse", "mse")
OUTPUT = {"softmax_cross_entropy": "identity", "half_sse": "sigmoid", "mse": "tanh"}
CASES = [
    (act, LOSSES[i % 3], ((4, 3), (4, 5, 3), (4, 5, 6, 3))[i % 3])
    for i, act in enumerate(ACTIVATIONS)
]
jit_diag_ggn = jax.jit(diag_ggn, static_argnums=0)
jit_diag_hessian = jax.jit(diag_hessian, static_argnums=0)


def mlp(activation, objective, sizes=(4, 5, 3)):
    return MLP(sizes, activation, OUTPUT[objective], objective)


def ref_diag_ggn(net, params, x, y):
    """diag(G) from G built column by column: G e_j by jax.jvp, hessian, jax.vjp."""
    flat, unravel = ravel_pytree(params)
    column = lambda e: ravel_pytree(ref_ggn_vp(net, params, x, y, unravel(e)))[0]  # noqa: E731
    ggn = jax.jit(jax.vmap(column))(jnp.eye(flat.size, dtype=flat.dtype))
    if ggn.dtype == jnp.float64:  # G is symmetric
        np.testing.assert_allclose(ggn, ggn.T, rtol=1e-9, atol=1e-12)
    return unravel(jnp.diag(ggn))


def ref_diag_hessian(net, params, x, y):
    flat, unravel = ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda f: net.loss(unravel(f), x, y)))(flat)
    return unravel(jnp.diag(hessian))


@pytest.mark.parametrize("activation,objective,sizes", CASES)
def test_mlp_diag_ggn_equals_the_ggn_built_column_by_column(
    activation, objective, sizes
):
    with jax.enable_x64(True):
        net = mlp(activation, objective, sizes)
        params, x, y, _ = setup(net, jnp.float64)
        want = ref_diag_ggn(net, params, x, y)
        assert rel_error(jit_diag_ggn(net, params, x, y), want) <= 1e-10


def test_conv_diag_ggn_equals_the_ggn_built_column_by_column():
    with jax.enable_x64(True):
        net = conv_net("softmax_cross_entropy")
        params, x, y, _ = setup(net, jnp.float64)
        want = ref_diag_ggn(net, params, x, y)
        assert rel_error(jit_diag_ggn(net, params, x, y), want) <= 1e-10


@pytest.mark.parametrize("activation,objective,sizes", CASES)
def test_mlp_diag_hessian_equals_jax_hessian(activation, objective, sizes):
    with jax.enable_x64(True):
        net = mlp(activation, objective, sizes)
        params, x, y, _ = setup(net, jnp.float64)
        want = ref_diag_hessian(net, params, x, y)
        assert rel_error(jit_diag_hessian(net, params, x, y), want) <= 1e-10


@pytest.mark.parametrize("objective", ["softmax_cross_entropy", "half_sse"])
def test_relu_network_hessian_diagonal_equals_ggn_diagonal(objective):
    # piecewise linear in each weight: no second derivative anywhere on the diagonal
    with jax.enable_x64(True):
        net = MLP((4, 6, 5, 3), "relu", "identity", objective)
        params, x, y, _ = setup(net, jnp.float64)
        h = jit_diag_hessian(net, params, x, y)
        assert rel_error(h, jit_diag_ggn(net, params, x, y)) <= 1e-12
        assert rel_error(h, ref_diag_hessian(net, params, x, y)) <= 1e-10
        # and a smooth network's differ
        smooth = MLP((4, 6, 5, 3), "tanh", "identity", objective)
        h, g = (f(smooth, params, x, y) for f in (jit_diag_hessian, jit_diag_ggn))
        assert rel_error(h, g) > 1e-3


def _mc_draws(net, params, x, y, n, samples=1):
    keys = jax.random.split(jax.random.key(7), n)
    draw = lambda k: diag_ggn_mc(net, params, x, y, k, samples)  # noqa: E731
    return jax.jit(jax.vmap(draw))(keys)


def _within_sampling_error(draws, exact, z=5.0):
    """Whether every entry's mean over the draws is within ``z`` standard errors of
    ``exact``; also the worst ratio of error to that bound."""
    n = jax.tree.leaves(draws)[0].shape[0]
    flat = jnp.concatenate([t.reshape(n, -1) for t in jax.tree.leaves(draws)], axis=1)
    e = ravel_pytree(exact)[0]
    mean, std = flat.mean(0), flat.std(0, ddof=1)
    bound = z * std / np.sqrt(n) + 1e-12 * jnp.max(jnp.abs(e))
    ratio = float(jnp.max(jnp.abs(mean - e) / bound))
    return ratio <= 1, ratio


@pytest.mark.parametrize("objective", ["softmax_cross_entropy", "mse"])
def test_diag_ggn_mc_is_unbiased(objective):
    with jax.enable_x64(True):
        net = mlp("tanh", objective, (3, 4, 3))
        params, x, y, _ = setup(net, jnp.float64)
        exact = jit_diag_ggn(net, params, x, y)
        ok, ratio = _within_sampling_error(_mc_draws(net, params, x, y, 2000), exact)
        assert ok, ratio
        # two samples per draw: the same expectation
        ok, ratio = _within_sampling_error(
            _mc_draws(net, params, x, y, 500, samples=2), exact
        )
        assert ok, ratio


def test_the_unbiasedness_bound_rejects_the_empirical_fisher(monkeypatch):
    # Backpropagating the gradient at the *true* label (the empirical Fisher) instead
    # of a label drawn from the model is the classic biased estimator.
    with jax.enable_x64(True):
        net = mlp("tanh", "softmax_cross_entropy", (3, 4, 3))
        params, x, y, _ = setup(net, jnp.float64)
        exact = jit_diag_ggn(net, params, x, y)

        def at_true_labels(name, out, targets, key, samples):
            g = jax.nn.softmax(out, axis=-1) - targets
            sign = jax.random.rademacher(key, (out.shape[0], 1, 1), out.dtype)
            return sign * g[:, :, None]  # random sign: a variance to bound with

        monkeypatch.setattr(diag, "sampled_hessian_factor", at_true_labels)
        ok, ratio = _within_sampling_error(_mc_draws(net, params, x, y, 2000), exact)
        assert not ok and ratio > 5


def test_diagonals_use_no_autodiff_and_jit(monkeypatch):
    with jax.enable_x64(True):
        net = mlp("gelu", "softmax_cross_entropy")
        params, x, y, _ = setup(net, jnp.float64)
        refs = ref_diag_ggn(net, params, x, y), ref_diag_hessian(net, params, x, y)
        forbid_autodiff(monkeypatch)
        assert rel_error(jit_diag_ggn(net, params, x, y), refs[0]) <= 1e-10
        assert rel_error(jit_diag_hessian(net, params, x, y), refs[1]) <= 1e-10
        mc = jax.jit(diag_ggn_mc, static_argnums=(0, 5))
        assert jax.tree.structure(mc(net, params, x, y, jax.random.key(0), 2)) == (
            jax.tree.structure(params)
        )


def test_float32():
    net = mlp("softplus", "softmax_cross_entropy")
    params, x, y, _ = setup(net, jnp.float32)
    d = jit_diag_ggn(net, params, x, y)
    assert jax.tree.leaves(d)[0].dtype == jnp.float32
    assert rel_error(d, ref_diag_ggn(net, params, x, y)) <= 1e-4
    assert (
        rel_error(
            jit_diag_hessian(net, params, x, y), ref_diag_hessian(net, params, x, y)
        )
        <= 1e-4
    )


def test_refusals_name_the_layer():
    net = conv_net()
    params, x, y, _ = setup(net, jnp.float32)
    with pytest.raises(ValueError, match=r"diag_hessian does not support layer 1 of"):
        diag_hessian(net, params, x, y)
    net = Sequential((Dense(4), BatchNorm(), Dense(3)), input_shape=(3,))
    params = net.init(jax.random.key(0))
    with pytest.raises(ValueError, match="diag_ggn does not support layer 2 of 3"):
        diag_ggn(net, params, jnp.ones((2, 3)), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        diag_ggn_mc(net, params, jnp.ones((2, 3)), jnp.array([0, 1]), None, 0)


def test_doctests():
    assert doctest.testmod(diag).failed == 0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 128])
def test_sum_leading_is_the_sum_over_the_first_axis(n):
    # the halving order of diag_ggn's column and example sums; odd lengths carry
    # their last slice along, and one slice is returned as it is
    with jax.enable_x64(True):
        t = jax.random.normal(jax.random.key(n), (n, 3, 4), jnp.float64)
        got = network.sum_leading(t)
        assert got.shape == (3, 4)
        np.testing.assert_allclose(got, jnp.sum(t, axis=0), rtol=1e-13, atol=1e-13)
