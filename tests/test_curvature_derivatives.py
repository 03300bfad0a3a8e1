"""The second-order pieces the curvature is built from, each against jax: every
activation's f'' and every loss's Hessian in the output, its factor and its
Monte-Carlo factor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import activations, losses
from jaxbp.activations import ACTIVATIONS, PIECEWISE_LINEAR, second_derivative

Z = (-30.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 30.0)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_second_derivative_equals_jax(name):
    with jax.enable_x64(True):
        fn = ACTIVATIONS[name].fn
        z = jnp.array(Z, jnp.float64)
        want = jax.vmap(jax.grad(jax.grad(fn)))(z)
        got = second_derivative(name, z, fn(z))
        # atol: at z = 30 jax's own softplus'' loses 1% to cancellation (9.24e-14
        # against the exact e^-30 / (1 + e^-30)^2 = 9.36e-14, which ours gives)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        if name in PIECEWISE_LINEAR:
            assert not np.any(np.asarray(got))


def _batch(name, dtype=jnp.float64):
    out = jax.random.normal(jax.random.key(0), (4, 3), dtype)
    y = jax.random.normal(jax.random.key(1), (4, 3), dtype)
    if name == "softmax_cross_entropy":
        y = jnp.abs(y)  # unnormalised targets: s = sum_j y_j != 1
    return out, y


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_loss_hessian_and_its_factor_equal_jax_hessian(name):
    with jax.enable_x64(True):
        out, y = _batch(name)
        per_example = losses.get_loss(name).per_example
        want = jax.vmap(jax.hessian(lambda o, t: per_example(o[None], t[None])[0]))(
            out, y
        )  # (B, O, O)
        v = jax.random.normal(jax.random.key(2), out.shape, out.dtype)
        np.testing.assert_allclose(
            losses.hessian_vp(name, out, y, v),
            jnp.einsum("bij,bj->bi", want, v),
            rtol=1e-12,
            atol=1e-15,
        )
        s = losses.hessian_factor(name, out, y)
        np.testing.assert_allclose(
            jnp.einsum("bik,bjk->bij", s, s), want, rtol=1e-12, atol=1e-15
        )


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_sampled_factor_is_unbiased(name):
    with jax.enable_x64(True):
        out, y = _batch(name)
        exact = jnp.einsum("bik,bjk->bij", *[losses.hessian_factor(name, out, y)] * 2)
        n = 4000
        c = losses.sampled_hessian_factor(name, out, y, jax.random.key(3), n)
        # C C^T / n-scaled columns: each column's outer product times n has mean H
        outer = jnp.einsum("bik,bjk->kbij", c, c) * n
        mean, se = outer.mean(0), outer.std(0, ddof=1) / np.sqrt(n)
        assert bool(jnp.all(jnp.abs(mean - exact) <= 5 * se + 1e-12))


def test_second_derivative_of_an_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        second_derivative("swish", jnp.zeros(1), jnp.zeros(1))
    assert set(activations.SECOND_DERIVATIVES) == set(ACTIVATIONS)
