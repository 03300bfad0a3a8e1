"""Kronecker factors by hand (jaxbp.curvature.kfac): exact GGN blocks for one example,
KFC's definition for a convolution, and an unbiased Monte-Carlo G."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_harness import random_like, ref_ggn_vp
from jax.flatten_util import ravel_pytree
from layer_harness import forbid_autodiff

from jaxbp import MLP, Sequential
from jaxbp.curvature import kfac, kfac_factors
from jaxbp.layers import Activation, Conv2D, Dense, Flatten
from jaxbp.losses import hessian_factor

jit_kfac = jax.jit(kfac_factors, static_argnums=0)


def ggn_matrix(net, params, x, y):
    flat, unravel = ravel_pytree(params)
    column = lambda e: ravel_pytree(ref_ggn_vp(net, params, x, y, unravel(e)))[0]  # noqa: E731
    return jax.jit(jax.vmap(column))(jnp.eye(flat.size, dtype=flat.dtype))


def block_of(ggn, params, index):
    """The GGN block of layer ``index``'s row-major ``[W; b]`` (in ravel_pytree's
    order ``b`` comes before ``w``)."""
    sizes = [t.size for t in jax.tree.leaves(params)]
    starts = np.cumsum([0, *sizes])
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [jax.tree_util.keystr(p) for p, _ in paths]
    w, b = names.index(f"[{index}]['w']"), names.index(f"[{index}]['b']")
    rows = np.concatenate(
        [np.arange(starts[w], starts[w + 1]), np.arange(starts[b], starts[b + 1])]
    )
    return ggn[np.ix_(rows, rows)]


@pytest.mark.parametrize(
    "activation,objective",
    [("identity", "half_sse"), ("tanh", "softmax_cross_entropy"), ("gelu", "mse")],
)
def test_kflr_is_the_exact_ggn_block_for_one_example(activation, objective):
    # The deep linear network with squared loss of the issue, and smooth ones: with
    # B = 1 the GGN block is (a a^T) (x) (sum_k g_k g_k^T), exactly A (x) G.
    with jax.enable_x64(True):
        net = MLP((3, 4, 3, 2), activation, "identity", objective)
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (1, 3), jnp.float64)
        y = jnp.array([1]) if objective == "softmax_cross_entropy" else x[:, :2]
        ggn = ggn_matrix(net, params, x, y)
        factors = jit_kfac(net, params, x, y)
        for l in range(net.depth):
            a, g = factors[l]["A"], factors[l]["G"]
            np.testing.assert_allclose(
                jnp.kron(a, g), block_of(ggn, params, l), rtol=1e-10, atol=1e-14
            )


def _conv_net(hw):
    return Sequential(
        (Conv2D(3, 3), Activation("tanh"), Flatten(), Dense(3)),
        input_shape=(hw, hw, 2),
    )


def test_kfc_with_one_position_is_the_exact_ggn_block():
    # A 3x3 kernel on a 3x3 image has one output position: a dense layer on the patch
    with jax.enable_x64(True):
        net = _conv_net(3)
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (1, 3, 3, 2), jnp.float64)
        y = jnp.array([2])
        ggn = ggn_matrix(net, params, x, y)
        factors = jit_kfac(net, params, x, y)
        for l in (0, 3):
            np.testing.assert_allclose(
                jnp.kron(factors[l]["A"], factors[l]["G"]),
                block_of(ggn, params, l),
                rtol=1e-10,
                atol=1e-14,
            )


def test_kfc_factors_match_their_definition_by_autodiff():
    # T = 9 positions, B = 4: A = (1/B) sum_{i,t} a a^T, G = (1/BT) sum sum g g^T with
    # g the cotangent at the conv output from jax.vjp of the rest of the network
    with jax.enable_x64(True):
        net = _conv_net(5)
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4, 5, 5, 2), jnp.float64)
        y = jnp.array([0, 1, 2, 1])
        z = jax.lax.conv_general_dilated(
            x, params[0]["w"], (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ) + params[0]["b"][None, None, None, :]  # fmt: skip
        tail = Sequential(net.layers[1:], input_shape=(3, 3, 3))
        out, pullback = jax.vjp(lambda t: tail.forward(params[1:], t), z)
        factor = hessian_factor(net.objective, out, jax.nn.one_hot(y, 3))
        gs = jnp.stack([pullback(factor[:, :, k])[0] for k in range(3)])
        g = gs.reshape(-1, 3)
        patches = jnp.stack(
            [x[:, i : i + 3, j : j + 3, :].reshape(4, -1)
             for i in range(3) for j in range(3)], axis=1,
        )  # (B, T, 18), HWIO order  # fmt: skip
        a = jnp.concatenate([patches, jnp.ones((4, 9, 1))], axis=-1).reshape(-1, 19)
        got = jit_kfac(net, params, x, y)[0]
        np.testing.assert_allclose(got["A"], a.T @ a / 4, rtol=1e-10)
        np.testing.assert_allclose(got["G"], g.T @ g / (4 * 9), rtol=1e-10, atol=1e-15)


def test_factors_of_a_batch_are_the_means_over_its_examples():
    with jax.enable_x64(True):
        net = MLP((3, 4, 2), "softplus", "identity", "softmax_cross_entropy")
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
        y = jnp.arange(5) % 2
        whole = jit_kfac(net, params, x, y)
        each = [jit_kfac(net, params, x[i : i + 1], y[i : i + 1]) for i in range(5)]
        mean = jax.tree.map(lambda *t: sum(t) / 5, *each)
        for got, want in zip(
            jax.tree.leaves(whole), jax.tree.leaves(mean), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)


def test_monte_carlo_g_is_unbiased():
    with jax.enable_x64(True):
        net = MLP((3, 4, 3), "tanh", "identity", "softmax_cross_entropy")
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
        y = jnp.arange(5) % 3
        exact = jit_kfac(net, params, x, y)
        keys = jax.random.split(jax.random.key(3), 2000)
        draws = jax.jit(jax.vmap(lambda k: kfac_factors(net, params, x, y, k)))(keys)
        for l in range(2):
            g = draws[l]["G"].reshape(2000, -1)
            mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(2000)
            err = jnp.abs(mean - exact[l]["G"].ravel())
            assert bool(jnp.all(err <= 5 * se + 1e-12)), float(jnp.max(err / se))
            np.testing.assert_allclose(draws[l]["A"][0], exact[l]["A"], rtol=1e-12)


def test_no_autodiff_and_float32(monkeypatch):
    net = _conv_net(5)
    params = net.init(jax.random.key(0))
    x = random_like(jnp.zeros((3, 5, 5, 2)), 1)
    y = jnp.array([0, 1, 2])
    forbid_autodiff(monkeypatch)
    factors = jit_kfac(net, params, x, y)
    assert factors[0]["A"].shape == (19, 19) and factors[0]["G"].shape == (3, 3)
    assert factors[3]["A"].shape == (28, 28) and factors[1] == {}
    assert factors[0]["A"].dtype == jnp.float32
    mc = jax.jit(kfac_factors, static_argnums=(0,), static_argnames="samples")
    assert mc(net, params, x, y, jax.random.key(0), samples=2)[3]["G"].shape == (3, 3)


def test_doctests():
    assert doctest.testmod(kfac).failed == 0
