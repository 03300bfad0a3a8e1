"""Each loss's hand-derived gradients against ``jax.grad``, and its conventions."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import losses
from jaxbp.losses import LOSSES, get_loss, prepare_targets

NAMES = sorted(LOSSES)
DTYPES = ["float32", "float64"]
B, O = 7, 5


def _tol(dtype):
    return (
        {"rtol": 1e-12, "atol": 1e-14}
        if dtype == "float64"
        else {"rtol": 1e-5, "atol": 1e-6}
    )


def _batch(dtype, kind, seed=0):
    """Outputs ``(B, O)`` and float targets of one ``kind``: one-hot, soft or any."""
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(B, O)) * 2
    if kind == "onehot":
        y = np.eye(O)[rng.integers(0, O, size=B)]
    elif kind == "soft":
        logits = rng.normal(size=(B, O))
        y = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    else:
        y = rng.normal(size=(B, O))
    return jnp.asarray(out, dtype), jnp.asarray(y, dtype)


def test_registry():
    assert NAMES == ["half_sse", "mse", "softmax_cross_entropy"]
    for name, loss in LOSSES.items():
        assert loss.name == name
        assert get_loss(name) is loss
        assert loss.needs_logits == (name == "softmax_cross_entropy")


def test_unknown_loss():
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'.*half_sse"):
        get_loss("hinge")


@pytest.mark.parametrize("kind", ["onehot", "soft", "any"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_grads_match_autodiff(name, dtype, kind):
    loss = LOSSES[name]
    with jax.enable_x64(dtype == "float64"):
        out, y = _batch(dtype, kind)
        # Examples are independent, so the gradient of the sum of per-example losses
        # is, row by row, the gradient of each example's own loss.
        auto_out = jax.grad(lambda o: jnp.sum(loss.per_example(o, y)))(out)
        auto_y = jax.grad(lambda t: jnp.sum(loss.per_example(out, t)))(y)
        manual_out = loss.grad_out(out, y)
        manual_y = loss.grad_target(out, y)
        for manual, auto in ((manual_out, auto_out), (manual_y, auto_y)):
            assert manual.shape == (B, O)
            assert manual.dtype == out.dtype
            np.testing.assert_allclose(manual, auto, **_tol(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_per_example_grad_is_not_batch_averaged(name):
    # grad_out is d l_i / d out_i; one example alone gives the same row.
    loss = LOSSES[name]
    out, y = _batch("float32", "soft")
    full = loss.grad_out(out, y)
    one = jax.grad(lambda o: loss.per_example(o, y[2:3])[0])(out[2:3])
    np.testing.assert_allclose(full[2:3], one, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_is_mean_over_all_elements(dtype):
    # torch.nn.MSELoss(reduction="mean"): the mean of (out - y)^2 over every element.
    with jax.enable_x64(dtype == "float64"):
        out, y = _batch(dtype, "any")
        value = get_loss("mse").value(out, y)
        np.testing.assert_allclose(value, jnp.mean((out - y) ** 2), **_tol(dtype))
        np.testing.assert_allclose(
            value, np.mean((np.asarray(out) - np.asarray(y)) ** 2), rtol=1e-6
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_half_sse_is_half_sum_per_example_mean_over_batch(dtype):
    with jax.enable_x64(dtype == "float64"):
        out, y = _batch(dtype, "any")
        loss = get_loss("half_sse")
        per = 0.5 * jnp.sum((out - y) ** 2, axis=1)
        np.testing.assert_allclose(loss.per_example(out, y), per, **_tol(dtype))
        np.testing.assert_allclose(loss.value(out, y), jnp.mean(per), **_tol(dtype))


def test_half_sse_doctest_value():
    value = get_loss("half_sse").value(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]))
    assert float(value) == 2.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_integer_labels_equal_one_hot(dtype):
    with jax.enable_x64(dtype == "float64"):
        z, _ = _batch(dtype, "any")
        labels = jnp.asarray([0, 4, 2, 2, 1, 3, 0])
        onehot = jnp.asarray(np.eye(O)[np.asarray(labels)], dtype)
        targets = prepare_targets(labels, O, z.dtype)
        np.testing.assert_array_equal(targets, onehot)
        loss = get_loss("softmax_cross_entropy")
        np.testing.assert_allclose(
            loss.per_example(z, targets), loss.per_example(z, onehot), rtol=0
        )
        # l_i = -log softmax(z_i)[label_i]
        logp = jax.nn.log_softmax(z, axis=-1)
        expected = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        np.testing.assert_allclose(
            loss.per_example(z, targets), expected, **_tol(dtype)
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_fused_rule(dtype):
    # dl/dz = softmax(z) - onehot(y)
    with jax.enable_x64(dtype == "float64"):
        z, y = _batch(dtype, "onehot")
        grad = get_loss("softmax_cross_entropy").grad_out(z, y)
        np.testing.assert_allclose(grad, jax.nn.softmax(z, axis=-1) - y, **_tol(dtype))
        # each row of softmax(z) - onehot sums to zero
        np.testing.assert_allclose(jnp.sum(grad, axis=1), jnp.zeros(B), atol=1e-6)


def test_softmax_cross_entropy_is_stable_for_large_logits():
    loss = get_loss("softmax_cross_entropy")
    z = jnp.asarray([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]], jnp.float32)
    y = jnp.asarray([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], jnp.float32)
    value = loss.per_example(z, y)
    grad = loss.grad_out(z, y)
    assert np.isfinite(np.asarray(value)).all()
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(value, [0.0, 2000.0], rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prepare_targets(dtype):
    with jax.enable_x64(dtype == "float64"):
        labels = jnp.asarray([2, 0, 1])
        t = prepare_targets(labels, 4, jnp.dtype(dtype))
        assert t.shape == (3, 4) and t.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(t, np.eye(4)[[2, 0, 1]])
        floats = jnp.asarray(np.ones((3, 4)), jnp.float32)
        t = prepare_targets(floats, 4, jnp.dtype(dtype))
        assert t.shape == (3, 4) and t.dtype == jnp.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prepare_targets_makes_out_of_range_labels_nan_rows(dtype):
    # jax.nn.one_hot would give a row of zeros: the example would silently vanish.
    with jax.enable_x64(dtype == "float64"):
        labels = jnp.asarray([2, 4, -1, 0])
        t = jax.jit(prepare_targets, static_argnums=(1, 2))(labels, 4, jnp.dtype(dtype))
        assert t.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(t[0], np.eye(4)[2])
        np.testing.assert_array_equal(t[3], np.eye(4)[0])
        assert np.all(np.isnan(t[1])) and np.all(np.isnan(t[2]))


def test_doctests():
    result = doctest.testmod(losses)
    assert result.attempted > 0
    assert result.failed == 0
