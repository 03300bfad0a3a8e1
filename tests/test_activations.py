"""Each activation's hand-derived derivative against ``jax.grad`` of its function."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import activations
from jaxbp.activations import ACTIVATIONS, LEAKY_RELU_SLOPE, get_activation

NAMES = sorted(ACTIVATIONS)
DTYPES = ["float32", "float64"]

# Many points: a dense grid, both sides of zero, zero itself, and large magnitudes where
# a careless formula overflows (exp of a large z) or cancels (1 - a^2 near saturation).
_GRID = np.linspace(-8.0, 8.0, 161)
_SPECIAL = np.array(
    [0.0, -0.0, 1e-6, -1e-6, 1e-3, -1e-3, 0.5, 1, -1, 2, -2, 3, -3, 20, -20, 100, -100]
)
_EXTREME = np.array([1e3, -1e3, 1e4, -1e4])
POINTS = np.concatenate([_GRID, _SPECIAL, _EXTREME])  # 182 = 2 x 91 points

# f'(z) at a few points, by hand, for a check that does not lean on jax.grad.
_KNOWN = {
    "identity": {0.0: 1.0, -3.0: 1.0, 3.0: 1.0},
    "sigmoid": {0.0: 0.25, 100.0: 0.0},
    "tanh": {0.0: 1.0, 100.0: 0.0, -100.0: 0.0},
    "relu": {0.0: 0.0, -2.0: 0.0, 2.0: 1.0},
    "leaky_relu": {0.0: LEAKY_RELU_SLOPE, -2.0: LEAKY_RELU_SLOPE, 2.0: 1.0},
    "elu": {0.0: 1.0, 100.0: 1.0, -100.0: 0.0, -1.0: float(np.exp(-1.0))},
    "softplus": {0.0: 0.5, 100.0: 1.0, -100.0: 0.0},
    "gelu": {0.0: 0.5, 100.0: 1.0, -100.0: 0.0},
}


def _autodiff_deriv(act, z):
    return jax.vmap(jax.grad(act.fn))(z)


def _manual_deriv(act, z):
    return act.deriv(z, act.fn(z))


def test_registry():
    assert NAMES == sorted(
        [
            "identity",
            "sigmoid",
            "tanh",
            "relu",
            "leaky_relu",
            "elu",
            "softplus",
            "gelu",
        ]
    )
    for name, act in ACTIVATIONS.items():
        assert act.name == name
        assert get_activation(name) is act


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*sigmoid"):
        get_activation("swish")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_deriv_matches_autodiff(name, dtype):
    act = ACTIVATIONS[name]
    with jax.enable_x64(dtype == "float64"):
        z = jnp.asarray(POINTS, dtype)
        a = act.fn(z)
        manual = act.deriv(z, a)
        auto = _autodiff_deriv(act, z)
        assert a.dtype == manual.dtype == auto.dtype == z.dtype
        assert manual.shape == z.shape
        # no overflow or NaN anywhere, the largest magnitudes included, both ways
        assert np.isfinite(np.asarray(a)).all(), name
        assert np.isfinite(np.asarray(manual)).all(), name
        assert np.isfinite(np.asarray(auto)).all(), name
        rtol = 1e-12 if dtype == "float64" else 2e-6
        atol = 1e-14 if dtype == "float64" else 1e-7
        np.testing.assert_allclose(manual, auto, rtol=rtol, atol=atol, err_msg=name)
        # and both agree with values worked out by hand
        for point, expected in _KNOWN[name].items():
            at = int(np.flatnonzero(POINTS == point)[0])
            for got in (manual[at], auto[at]):
                assert float(got) == pytest.approx(expected, rel=1e-6, abs=1e-30), (
                    name,
                    point,
                )


@pytest.mark.parametrize("z", [100.0, -100.0, 0.0])
def test_elu_gradient_finite_both_ways(z):
    # The unused branch of elu (e^z - 1 for z > 0) must not overflow or poison the
    # gradient through the where; at 0, elu'(0) = 1 from both sides (not 1/2).
    act = ACTIVATIONS["elu"]
    for dtype in DTYPES:
        with jax.enable_x64(dtype == "float64"):
            zz = jnp.asarray(z, dtype)
            auto = jax.grad(act.fn)(zz)
            manual = act.deriv(zz, act.fn(zz))
            assert np.isfinite(float(auto)) and np.isfinite(float(manual))
            assert float(auto) == pytest.approx(float(manual), abs=1e-12)


def test_deriv_is_elementwise_on_matrices():
    flat = jnp.asarray(POINTS, jnp.float32)
    z = flat.reshape(2, 91)
    for name, act in ACTIVATIONS.items():
        d = act.deriv(z, act.fn(z))
        assert d.shape == z.shape, name
        expected = act.deriv(flat, act.fn(flat)).reshape(z.shape)
        np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-30, err_msg=name)


def test_deriv_reuses_the_cached_activation():
    # sigmoid' and tanh' are written in terms of a = f(z): they must read a, not z.
    a = jnp.asarray([0.5, 0.2], jnp.float32)
    garbage = jnp.asarray([123.0, -7.0], jnp.float32)
    np.testing.assert_allclose(
        ACTIVATIONS["sigmoid"].deriv(garbage, a), a * (1 - a), rtol=1e-7
    )
    np.testing.assert_allclose(ACTIVATIONS["tanh"].deriv(garbage, a), 1 - a * a)


def test_doctests():
    result = doctest.testmod(activations)
    assert result.attempted > 0
    assert result.failed == 0
