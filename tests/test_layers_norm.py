"""LayerNorm, BatchNorm and Dropout: hand-derived backward passes and their modes.

Each backward equals ``jax.vjp`` of the layer's own forward (float64: relative error
<= 1e-10; float32: loose) in training and evaluation mode, on dense and NHWC inputs
with odd sizes and batch 1 where it is legal, passes finite differences, and runs with
every autodiff entry point patched to raise. BatchNorm's fused and stepwise backward
agree to rounding; its running averages follow the documented formula and evaluation
uses them. Dropout's mask is a function of the key.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_harness import (
    forbid_autodiff,
    layer_check_grad,
    layer_setup,
    layer_vjp_error,
    max_rel_error,
    random_array,
)

from jaxbp import layers

KEY = jax.random.key(7)

# (layer, batch shape, train, key): dense (B, n) and NHWC (B, H, W, C) inputs, odd
# sizes, batch 1 where it is legal, both modes.
CASES = [
    (layers.LayerNorm(), (5, 3), False, None),
    (layers.LayerNorm(eps=0.1), (1, 3), True, None),
    (layers.LayerNorm(), (2, 3, 5, 3), False, None),
    (layers.BatchNorm(), (5, 3), True, None),
    (layers.BatchNorm(), (2, 3, 5, 3), True, None),
    (layers.BatchNorm(momentum=0.5), (1, 3, 5, 3), True, None),
    (layers.BatchNorm(), (5, 3), False, None),
    (layers.BatchNorm(), (1, 3), False, None),
    (layers.BatchNorm(), (1, 3, 5, 3), False, None),
    (layers.Dropout(0.5), (5, 3), True, KEY),
    (layers.Dropout(0.3), (2, 3, 5, 3), True, KEY),
    (layers.Dropout(0.5), (5, 3), False, None),
    (layers.Dropout(0), (5, 3), True, None),
]
IDS = [
    f"{layer}-{'train' if train else 'eval'}-{'x'.join(map(str, shape))}"
    for layer, shape, train, _ in CASES
]


@pytest.mark.parametrize(("layer", "shape", "train", "key"), CASES, ids=IDS)
def test_backward_equals_vjp_float64(layer, shape, train, key):
    with jax.enable_x64(True):
        error, _, _ = layer_vjp_error(layer, shape, jnp.float64, train=train, key=key)
    assert error <= 1e-10


@pytest.mark.parametrize(("layer", "shape", "train", "key"), CASES, ids=IDS)
def test_backward_equals_vjp_float32(layer, shape, train, key):
    error, _, _ = layer_vjp_error(layer, shape, jnp.float32, train=train, key=key)
    assert error <= 1e-5


FD_CASES = [
    (layers.LayerNorm(), (5, 3), False, None),
    (layers.BatchNorm(), (5, 3), True, None),
    (layers.BatchNorm(), (1, 3, 5, 3), True, None),
    (layers.BatchNorm(), (5, 3), False, None),
    (layers.Dropout(0.5), (5, 3), True, KEY),
]


@pytest.mark.parametrize(
    ("layer", "shape", "train", "key"),
    FD_CASES,
    ids=[f"{c[0]}-{'train' if c[2] else 'eval'}" for c in FD_CASES],
)
def test_backward_passes_finite_differences(layer, shape, train, key):
    report = layer_check_grad(layer, shape, train=train, key=key)
    assert report.passed, str(report)


@pytest.mark.parametrize(("layer", "shape", "train", "key"), CASES, ids=IDS)
def test_backward_uses_no_autodiff(layer, shape, train, key, monkeypatch):
    params, state, x, dy = layer_setup(layer, shape, jnp.float32)
    _, want, _ = layer_vjp_error(layer, shape, jnp.float32, train=train, key=key)
    forbid_autodiff(monkeypatch)

    @jax.jit
    def manual(params, x, dy):
        _, cache, _ = layer.forward(params, x, state=state, key=key, train=train)
        return layer.backward(params, cache, dy)

    got = manual(params, x, dy)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert jnp.allclose(a, b, rtol=1e-5, atol=1e-6)


# --- BatchNorm: fused and stepwise backward, running averages, errors -------------
STEPWISE_SHAPES = [(5, 3), (2, 3, 5, 3), (1, 3, 5, 3)]


@pytest.mark.parametrize("shape", STEPWISE_SHAPES, ids=str)
def test_batchnorm_fused_equals_stepwise_float64(shape):
    layer = layers.BatchNorm(eps=1e-3)
    with jax.enable_x64(True):
        params, state, x, dy = layer_setup(layer, shape, jnp.float64)
        _, cache, _ = layer.forward(params, x, state=state, train=True)
        fused = layer.backward(params, cache, dy)
        stepwise = layers.batchnorm_backward_stepwise(params, x, dy, eps=1e-3)
        assert max_rel_error(fused, stepwise) <= 1e-12


def test_batchnorm_stepwise_uses_no_autodiff(monkeypatch):
    layer = layers.BatchNorm()
    params, state, x, dy = layer_setup(layer, (2, 3, 5, 3), jnp.float32)
    _, want, _ = layer_vjp_error(layer, (2, 3, 5, 3), jnp.float32, train=True)
    forbid_autodiff(monkeypatch)
    got = jax.jit(layers.batchnorm_backward_stepwise)(params, x, dy)
    assert max_rel_error(got, want) <= 1e-5


def _trained_state(shape, dtype):
    # A state away from init_state's (0, 1), as after some training.
    c = shape[-1]
    return {
        "mean": random_array((c,), dtype, 11),
        "var": 0.5 + jnp.abs(random_array((c,), dtype, 12)),
    }


@pytest.mark.parametrize("momentum", [0.0, 0.8, 1.0])
def test_batchnorm_running_averages_follow_the_formula(momentum):
    layer = layers.BatchNorm(momentum=momentum, eps=1e-3)
    shape = (2, 3, 5, 3)
    with jax.enable_x64(True):
        params, _, x, _ = layer_setup(layer, shape, jnp.float64)
        state = _trained_state(shape, jnp.float64)
        y, _, new_state = layer.forward(params, x, state=state, train=True)

        xn, g, b = np.asarray(x), np.asarray(params["g"]), np.asarray(params["b"])
        batch_mean, batch_var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
        # Training normalises with the batch statistics (biased variance) ...
        want_y = g * (xn - batch_mean) / np.sqrt(batch_var + 1e-3) + b
        np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
        # ... and moves the running averages towards them (biased variance, as flax).
        for name, batch_stat in (("mean", batch_mean), ("var", batch_var)):
            want = momentum * np.asarray(state[name]) + (1 - momentum) * batch_stat
            np.testing.assert_allclose(new_state[name], want, rtol=1e-13)

        # Evaluation uses the running averages and leaves them as they are.
        x2 = random_array(shape, jnp.float64, 5)
        y2, _, same_state = layer.forward(params, x2, state=new_state)
        assert same_state is new_state
        mean, var = (np.asarray(new_state[k]) for k in ("mean", "var"))
        want_y2 = g * (np.asarray(x2) - mean) / np.sqrt(var + 1e-3) + b
        np.testing.assert_allclose(y2, want_y2, rtol=1e-12, atol=1e-12)


def test_batchnorm_default_momentum_is_flax_convention():
    layer = layers.BatchNorm()
    params = layer.init(KEY, (3,), jnp.float32)
    state = layer.init_state((3,), jnp.float32)
    x = jnp.array([[0.0, 1.0, 4.0], [2.0, 5.0, 4.0]])
    _, _, new_state = layer.forward(params, x, state=state, train=True)
    np.testing.assert_allclose(new_state["mean"], 0.1 * np.array([1.0, 3.0, 4.0]))
    np.testing.assert_allclose(
        new_state["var"], 0.9 + 0.1 * np.array([1.0, 4.0, 0.0]), rtol=1e-6
    )


def test_batchnorm_eval_backward_with_trained_state():
    layer = layers.BatchNorm()
    shape = (2, 3, 5, 3)
    with jax.enable_x64(True):
        params, _, x, dy = layer_setup(layer, shape, jnp.float64)
        state = _trained_state(shape, jnp.float64)
        _, cache, _ = layer.forward(params, x, state=state)
        manual = layer.backward(params, cache, dy)
        _, vjp = jax.vjp(lambda p, x: layer.forward(p, x, state=state)[0], params, x)
        assert max_rel_error(manual, vjp(dy)) <= 1e-10


def test_batchnorm_normalises_each_channel_over_batch_and_space():
    layer = layers.BatchNorm()
    params = layer.init(KEY, (3, 5, 3), jnp.float32)
    x = 3.0 + 2.0 * random_array((2, 3, 5, 3), jnp.float32, 0)
    y, _, _ = layer.forward(params, x, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_batchnorm_training_without_state_returns_no_state():
    layer = layers.BatchNorm()
    params, state, x, _ = layer_setup(layer, (5, 4), jnp.float32)
    y, _, new_state = layer.forward(params, x, train=True)
    assert new_state == {}
    np.testing.assert_array_equal(
        y, layer.forward(params, x, state=state, train=True)[0]
    )


def test_batchnorm_evaluation_needs_state():
    layer = layers.BatchNorm()
    params = layer.init(KEY, (4,), jnp.float32)
    with pytest.raises(
        ValueError, match=r"BatchNorm\(\) in evaluation mode \(train=False\).*state="
    ):
        layer.forward(params, jnp.ones((2, 4)))


@pytest.mark.parametrize("shape", [(1, 4), (1, 1, 1, 3)], ids=str)
def test_batchnorm_training_on_one_value_per_feature_is_an_error(shape):
    layer = layers.BatchNorm()
    params = layer.init(KEY, shape[1:], jnp.float32)
    state = layer.init_state(shape[1:], jnp.float32)

    def forward(x):
        return layer.forward(params, x, state=state, train=True)[0]

    # Raised from the static shape, while tracing: nothing is computed.
    with pytest.raises(
        layers.LayerShapeError,
        match=r"variance of one value is 0, so the output is identically the bias",
    ):
        jax.eval_shape(forward, jax.ShapeDtypeStruct(shape, jnp.float32))


def test_batchnorm_image_batch_of_one_is_legal():
    # Each channel is normalised over the H W = 6 positions of the one image.
    layer = layers.BatchNorm()
    params = layer.init(KEY, (3, 5, 3), jnp.float32)
    y, _, _ = layer.forward(
        params, random_array((1, 3, 5, 3), jnp.float32, 0), train=True
    )
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)


# --- LayerNorm --------------------------------------------------------------------
def test_layernorm_normalises_the_last_axis_of_each_example():
    layer = layers.LayerNorm()
    params = layer.init(KEY, (3, 5, 3), jnp.float32)
    assert jax.tree.map(jnp.shape, params) == {"g": (3,), "b": (3,)}
    x = 3.0 + 2.0 * random_array((2, 3, 5, 3), jnp.float32, 0)
    y, _, state = layer.forward(params, x, train=True)
    assert state is None
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-5)
    # var(y) = var / (var + eps): within 1e-3 of 1 unless var < 1e-2.
    np.testing.assert_allclose(y.var(axis=-1), 1.0, atol=1e-3)


@pytest.mark.parametrize("shape", [(1,), (4, 4, 1)], ids=str)
def test_layernorm_over_one_value_is_an_error(shape):
    with pytest.raises(layers.LayerShapeError, match="the variance of one value is 0"):
        layers.LayerNorm().output_shape(shape)


@pytest.mark.parametrize("layer", [layers.LayerNorm(), layers.BatchNorm()], ids=str)
def test_norm_needs_a_feature_axis(layer):
    with pytest.raises(layers.LayerShapeError, match=r"feature axis.*got \(B\)"):
        layer.output_shape(())


@pytest.mark.parametrize("bad", [0, -1e-5, math.nan, True, "1e-5"])
def test_norm_rejects_bad_eps(bad):
    with pytest.raises(ValueError, match="LayerNorm eps must be a positive number"):
        layers.LayerNorm(eps=bad)
    with pytest.raises(ValueError, match="BatchNorm eps must be a positive number"):
        layers.BatchNorm(eps=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, True, "0.9"])
def test_batchnorm_rejects_bad_momentum(bad):
    with pytest.raises(ValueError, match=r"BatchNorm momentum must be in \[0, 1\]"):
        layers.BatchNorm(momentum=bad)


# --- Dropout ----------------------------------------------------------------------
def test_dropout_mask_is_a_function_of_the_key():
    layer = layers.Dropout(0.5)
    x = jnp.ones((2, 3, 5, 3))
    _, mask_a, _ = layer.forward({}, x, key=KEY, train=True)
    _, mask_b, _ = layer.forward({}, x, key=KEY, train=True)
    _, mask_c, _ = layer.forward({}, x, key=jax.random.key(8), train=True)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(mask_a, mask_c)


def test_dropout_keeps_one_minus_rate_and_scales_the_kept():
    layer = layers.Dropout(0.3)
    x = random_array((500, 200), jnp.float32, 0)
    y, mask, _ = layer.forward({}, x, key=KEY, train=True)
    # 1e5 Bernoulli(0.7) draws: the mean's standard deviation is 0.0014.
    assert abs(float(mask.mean()) - 0.7) < 0.01
    np.testing.assert_allclose(y[mask], x[mask] / (1 - 0.3), rtol=1e-6)
    np.testing.assert_array_equal(y[~mask], 0.0)


@pytest.mark.parametrize(
    ("layer", "train"),
    [(layers.Dropout(0.5), False), (layers.Dropout(0.0), True)],
    ids=["eval", "rate0-train"],
)
def test_dropout_identity(layer, train):
    x = random_array((5, 3), jnp.float32, 0)
    y, cache, _ = layer.forward({}, x, train=train)  # no key needed
    np.testing.assert_array_equal(y, x)
    _, dx = layer.backward({}, cache, x)
    np.testing.assert_array_equal(dx, x)


def test_dropout_training_needs_a_key():
    with pytest.raises(ValueError, match=r"Dropout\(0.5\) in training mode.*pass key="):
        layers.Dropout(0.5).forward({}, jnp.ones((5, 3)), train=True)


@pytest.mark.parametrize("bad", [-0.1, 1, 1.0, 1.5, math.nan, True, "0.5"])
def test_dropout_rejects_bad_rate(bad):
    with pytest.raises(
        ValueError, match=r"Dropout rate must be a probability in \[0, 1\)"
    ):
        layers.Dropout(bad)


# --- all three ----------------------------------------------------------------------
def test_specs_are_hashable_and_named():
    assert hash(layers.BatchNorm()) == hash(layers.BatchNorm())
    assert layers.Dropout(0.5) == layers.Dropout(0.5)
    assert str(layers.LayerNorm()) == "LayerNorm()"
    assert str(layers.BatchNorm(momentum=0.99)) == "BatchNorm(momentum=0.99)"
    assert str(layers.Dropout(0.5)) == "Dropout(0.5)"


def test_chain_of_all_three_equals_vjp_float64():
    chain = [
        layers.Dense(3),
        layers.BatchNorm(),
        layers.Activation("tanh"),
        layers.Dropout(0.5),
        layers.LayerNorm(),
    ]
    shapes = layers.chain_output_shapes(chain, (3,))
    with jax.enable_x64(True):
        params, states = [], []
        for i, (layer, s) in enumerate(zip(chain, shapes, strict=False)):
            p, state, _, _ = layer_setup(layer, (5, *s), jnp.float64, seed=i)
            params.append(p)
            states.append(state)
        x = random_array((5, 3), jnp.float64, 0)
        dy = random_array((5, 3), jnp.float64, 1)

        def forward(params, x):
            return layers.chain_forward(
                chain, params, x, states=states, key=KEY, train=True
            )

        @jax.jit
        def manual(params, x, dy):
            _, caches, new_states = forward(params, x)
            grads, dx, _ = layers.chain_backward(chain, params, caches, dy)
            return (grads, dx), new_states

        @jax.jit
        def reference(params, x, dy):
            _, vjp = jax.vjp(lambda p, x: forward(p, x)[0], params, x)
            return vjp(dy)

        got, new_states = manual(params, x, dy)
        assert max_rel_error(got, reference(params, x, dy)) <= 1e-10
        assert jax.tree.map(jnp.shape, new_states[1]) == {"mean": (3,), "var": (3,)}


def test_dropout_mask_is_the_same_in_float32_and_float64():
    # A gradient check evaluates the loss in float64: it must see the same mask.
    layer = layers.Dropout(0.5)
    key = jax.random.key(11)
    _, mask32, _ = layer.forward({}, jnp.ones((64,), jnp.float32), key=key, train=True)
    with jax.enable_x64(True):
        _, mask64, _ = layer.forward(
            {}, jnp.ones((64,), jnp.float64), key=key, train=True
        )
    np.testing.assert_array_equal(np.asarray(mask32), np.asarray(mask64))
