"""Validation: what ``MLP`` checks before its mathematics, and what it does under jit.

The messages of the shape and dtype checks are tested through ``MLP`` in
``test_mlp.py``; this file tests the module's own functions, the label range under
``jax.jit`` (NaN, never a silently wrong number) and the input dtype rule (no silent
loss of precision).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp import optim, train, validation

NET = jaxbp.MLP((6, 5, 4), activation="tanh")
B = 8


def _params(dtype="float32"):
    return NET.init(jax.random.key(0), dtype=jnp.dtype(dtype))


def _batch(dtype="float32", *, bad_label=None):
    x = jax.random.normal(jax.random.key(1), (B, 6), jnp.dtype(dtype))
    y = jnp.arange(B, dtype=jnp.int32) % 4
    if bad_label is not None:
        y = y.at[3].set(bad_label)
    return x, y


def _all_nan(tree) -> bool:
    return all(bool(jnp.all(jnp.isnan(leaf))) for leaf in jax.tree.leaves(tree))


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


# --- the module's functions are the MLP's checks
def test_functions_and_methods_agree():
    params = _params()
    x, y = _batch()
    validation.check_params(NET, params)
    np.testing.assert_array_equal(
        validation.check_inputs(NET, params, x), NET.check_inputs(params, x)
    )
    for got, want in zip(
        validation.check_batch(NET, params, x, y),
        NET.check_batch(params, x, y),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p, x, y: validation.check_params(NET, p[:1]), ValueError, "1 layers"),
        (
            lambda p, x, y: validation.check_inputs(NET, p, x[:, :5]),
            ValueError,
            "x has 5 features",
        ),
        (
            lambda p, x, y: validation.check_batch(NET, p, x, y[:3]),
            ValueError,
            "y has batch size 3 but x has 8",
        ),
        (
            lambda p, x, y: validation.check_batch(NET, p, x, y.at[0].set(4)),
            ValueError,
            r"label 4 is out of range: labels must be in \[0, 3\]",
        ),
        (
            lambda p, x, y: validation.check_batch(NET, p, x, y.at[0].set(-1)),
            ValueError,
            "label -1 is out of range",
        ),
    ],
)
def test_functions_fail_on_wrong_input(call, error, match):
    x, y = _batch()
    with pytest.raises(error, match=match):
        call(_params(), x, y)


# --- labels out of range under jit: NaN, so training stops
@pytest.mark.parametrize("bad_label", [4, 7, -1])
@pytest.mark.parametrize("objective", ["softmax_cross_entropy", "half_sse", "mse"])
def test_bad_label_under_jit_makes_loss_and_both_gradients_nan(objective, bad_label):
    net = jaxbp.MLP((6, 5, 4), activation="tanh", objective=objective)
    params = _params()
    x, y = _batch(bad_label=bad_label)
    assert np.isnan(jax.jit(net.loss)(params, x, y))
    assert np.all(np.isnan(jax.jit(net.per_example_loss)(params, x, y))[3])
    loss, manual = jax.jit(net.value_and_manual_grad)(params, x, y)
    assert np.isnan(loss) and _all_nan(manual)
    assert _all_nan(jax.jit(net.manual_grad)(params, x, y))
    assert _all_nan(jax.jit(jax.grad(net.loss))(params, x, y))
    assert _all_nan(jax.jit(jax.grad(net.loss_with_manual_vjp))(params, x, y))
    # The same batch with its labels in range stays finite.
    x, y = _batch()
    assert np.isfinite(jax.jit(net.loss)(params, x, y))
    assert _all_finite(jax.jit(net.manual_grad)(params, x, y))
    assert _all_finite(jax.jit(jax.grad(net.loss))(params, x, y))


def test_bad_label_outside_jit_still_raises():
    params = _params()
    x, y = _batch(bad_label=4)
    for fn in (NET.loss, NET.manual_grad, jax.grad(NET.loss)):
        with pytest.raises(ValueError, match="label 4 is out of range"):
            fn(params, x, y)


@pytest.mark.parametrize("grad", train.GRAD_KINDS)
def test_bad_label_makes_the_train_step_nan(grad):
    opt = optim.make_optimizer("sgd", 0.1)
    state = train.init_train_state(NET, opt, jax.random.key(0))
    x, y = _batch(bad_label=9)
    step = train.make_train_step(NET, opt, grad=grad)
    new_state, metrics = step(state, (x, y))
    assert np.isnan(metrics["loss"])
    assert _all_nan(new_state.params)


@pytest.mark.parametrize("grad", train.GRAD_KINDS)
def test_bad_label_stops_training_naming_the_step(grad):
    opt = optim.make_optimizer("sgd", 0.1)
    state = train.init_train_state(NET, opt, jax.random.key(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (64, 6)))
    y = np.arange(64, dtype=np.int32) % 4
    y[17] = 12  # the epoch is one compiled program: the labels are traced
    with pytest.raises(train.DivergenceError, match=r"the loss is nan at step \d+"):
        train.train_epochs(NET, opt, state, (x, y), epochs=1, batch_size=16, grad=grad)


# --- dtypes: never lose precision silently
def test_float64_x_with_float32_params_raises_saying_what_to_do():
    with jax.enable_x64(True):
        params = _params("float32")
        x, y = _batch("float64")
        for fn in (NET.forward, NET.check_inputs):
            with pytest.raises(TypeError) as info:
                fn(params, x)
        message = str(info.value)
        assert "x has dtype float64 but the parameters are float32" in message
        assert "x.astype(jnp.float32)" in message
        assert "net.init(key, dtype=jnp.float64)" in message
        with pytest.raises(TypeError, match="would lose precision"):
            NET.loss(params, x, y)
        with pytest.raises(TypeError, match="would lose precision"):
            NET.manual_grad(params, np.asarray(x), y)
        with pytest.raises(TypeError, match="would lose precision"):
            jax.jit(jax.grad(NET.loss))(params, x, y)
        # Said what to do: either works.
        out32 = NET.forward(params, x.astype(jnp.float32))
        assert out32.dtype == jnp.float32
        out64 = NET.forward(_params("float64"), x)
        assert out64.dtype == jnp.float64


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_lower_precision_x_is_cast_up_losslessly(low):
    params = _params("float32")
    x, _ = _batch("float32")
    x_low = x.astype(low)
    out = NET.forward(params, x_low)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, NET.forward(params, x_low.astype(jnp.float32)))


def test_float32_x_with_float64_params_is_cast_up():
    with jax.enable_x64(True):
        x, _ = _batch("float32")
        out = NET.forward(_params("float64"), x)
        assert out.dtype == jnp.float64


def test_numpy_float64_without_x64_follows_jax():
    # Without x64 JAX holds every array in 32 bits (jnp.asarray does the same).
    params = _params("float32")
    x = np.asarray(_batch("float32")[0], np.float64)
    assert jnp.asarray(x).dtype == jnp.float32
    assert NET.forward(params, x).dtype == jnp.float32


def test_training_on_uint8_pixels_and_float32_data_still_works():
    opt = optim.make_optimizer("sgd", 0.1)
    state = train.init_train_state(NET, opt, jax.random.key(0))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 64).astype(np.int32)
    for x in (
        rng.integers(0, 256, (64, 6)).astype(np.uint8),
        rng.random((64, 6), dtype=np.float32),
    ):
        final, logs, _ = train.train_epochs(
            NET, opt, state, (x, y), epochs=1, batch_size=16
        )
        assert np.isfinite(logs[0].train_loss) and _all_finite(final.params)
