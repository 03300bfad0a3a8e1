"""Conv2D: hand-derived backward against jax.vjp and finite differences.

Over shapes with odd sizes, batch 1, strides 2 and (2, 1), strides larger than the
kernel, SAME, VALID and explicit padding, non-square kernels and several channels:
``layer.backward`` equals ``jax.vjp`` of ``layer.forward`` (float64 relative error
<= 1e-10, float32 <= 1e-5), passes :func:`jaxbp.check_grad` against finite
differences, and runs under ``jit`` with every autodiff entry point patched to
raise.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from layer_harness import (
    forbid_autodiff,
    layer_check_grad,
    layer_setup,
    layer_vjp_error,
)

from jaxbp import layers
from jaxbp.layers import Conv2D, conv

# The convolutions share four kernel shapes: each new shape costs a compile of
# jax.random in the layer's init. One has a single input channel (Conv2D's backward
# treats C = 1 apart).
CASES = [
    (Conv2D(3, 3), (2, 7, 6, 2)),
    (Conv2D(3, 3, stride=2, padding="SAME"), (2, 8, 8, 1)),  # padding (0, 1)
    (Conv2D(3, 3, stride=(1, 2), padding=((2, 1), (0, 3))), (2, 5, 6, 2)),
    (Conv2D(4, (2, 3), stride=2), (1, 9, 8, 3)),
    (Conv2D(4, (2, 3), stride=(2, 1), padding="SAME"), (3, 7, 5, 3)),
    (Conv2D(4, (2, 3), stride=3), (2, 8, 7, 3)),  # the last row is never read
    (Conv2D(3, 1), (1, 3, 3, 4)),
]
IDS = [f"{layer}-{'x'.join(map(str, shape))}" for layer, shape in CASES]


@pytest.mark.parametrize(("layer", "shape"), CASES, ids=IDS)
def test_backward_equals_vjp_float64(layer, shape):
    with jax.enable_x64(True):
        error, _, _ = layer_vjp_error(layer, shape, jnp.float64)
    assert error <= 1e-10


@pytest.mark.parametrize(("layer", "shape"), CASES, ids=IDS)
def test_backward_equals_vjp_float32(layer, shape):
    error, _, _ = layer_vjp_error(layer, shape, jnp.float32)
    assert error <= 1e-5


FD_CASES = [
    (Conv2D(3, 3, stride=(2, 1), padding="SAME"), (2, 5, 4, 2)),
]


@pytest.mark.parametrize(
    ("layer", "shape"), FD_CASES, ids=[str(layer) for layer, _ in FD_CASES]
)
def test_backward_passes_finite_differences(layer, shape):
    report = layer_check_grad(layer, shape)
    assert report.passed, str(report)


# Each branch of the backward (C = 1 and C > 1); the other shapes run the same
# code.
NO_AUTODIFF = [1, 4]


@pytest.mark.parametrize(
    ("layer", "shape"),
    [CASES[i] for i in NO_AUTODIFF],
    ids=[IDS[i] for i in NO_AUTODIFF],
)
def test_backward_uses_no_autodiff(layer, shape, monkeypatch):
    params, state, x, dy = layer_setup(layer, shape, jnp.float32)
    _, want, _ = layer_vjp_error(layer, shape, jnp.float32)
    forbid_autodiff(monkeypatch)
    # The backward is jitted: without this, the trace cached by the unpatched call
    # above would be reused, and autodiff inside it would go unseen.
    type(layer).backward.clear_cache()

    @jax.jit
    def manual(params, x, dy):
        _, cache, _ = layer.forward(params, x, state=state)
        return layer.backward(params, cache, dy)

    got = manual(params, x, dy)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert jnp.allclose(a, b, rtol=1e-5, atol=1e-6)


# --- padding -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "k", "s"), [(7, 3, 2), (8, 3, 2), (5, 2, 1), (6, 1, 3), (5, 4, 3), (4, 2, 5)]
)
def test_same_padding_is_lax_same(n, k, s):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, n, n + 1, 1)))
    w = jnp.ones((k, k, 1, 1), x.dtype)
    layer = Conv2D(1, k, stride=s, padding="SAME")
    want = lax.conv_general_dilated(
        x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got, _, _ = layer.forward({"w": w, "b": jnp.zeros((1,), x.dtype)}, x)
    np.testing.assert_array_equal(got, want)
    assert layer.output_shape((n, n + 1, 1)) == (-(-n // s), -(-(n + 1) // s), 1)


def test_conv_init_fans_count_the_kernel_window():
    # fan_in = kh kw C = 3 * 3 * 16, fan_out = kh kw F = 3 * 3 * 32
    key = jax.random.key(0)
    w = Conv2D(32, 3).init(key, (8, 8, 16), jnp.float32)["w"]
    assert w.shape == (3, 3, 16, 32)
    assert abs(float(jnp.std(w)) / np.sqrt(2 / 144) - 1) < 0.05  # He normal
    w = Conv2D(32, 3, weight_init="glorot").init(key, (8, 8, 16), jnp.float32)["w"]
    limit = np.sqrt(6 / (144 + 288))  # Glorot uniform
    assert limit * 0.99 < float(jnp.max(jnp.abs(w))) <= limit


# --- shapes and messages ---------------------------------------
@pytest.mark.parametrize(
    ("layer", "shape", "message"),
    [
        (
            Conv2D(20, 5),
            (784,),
            r"expects \(B, H, W, C\) inputs, got \(B, 784\); "
            r"reshape the images to \(B, 28, 28, 1\)",
        ),
        (Conv2D(20, 5), (28, 28), r"got \(B, 28, 28\); add a channel axis"),
        (
            Conv2D(50, 5),
            (4, 4, 20),
            r"at least 5x5 after padding \(its kernel is 5x5, VALID\), "
            r'got \(B, 4, 4, 20\), 4x4 padded; use padding="SAME"',
        ),
    ],
)
def test_shape_errors_say_what_is_expected(layer, shape, message):
    with pytest.raises(layers.LayerShapeError, match=message):
        layer.output_shape(shape)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Conv2D(0, 3), "Conv2D features must be a positive integer, got 0"),
        (lambda: Conv2D(4, 0), r"Conv2D kernel_size must be .*, got 0"),
        (lambda: Conv2D(4, (3,)), r"Conv2D kernel_size must be .*, got \(3,\)"),
        (lambda: Conv2D(4, (3, 2.0)), r"Conv2D kernel_size .*, got \(3, 2.0\)"),
        (lambda: Conv2D(4, True), "Conv2D kernel_size .*, got True"),
        (lambda: Conv2D(4, 3, stride=(1, 0)), r"Conv2D stride .*, got \(1, 0\)"),
        (lambda: Conv2D(4, 3, padding="same"), r"Conv2D padding must be \"VALID\""),
        (lambda: Conv2D(4, 3, padding=1), "Conv2D padding must be .*, got 1"),
        (lambda: Conv2D(4, 3, padding=((1, -1), (0, 0))), "non-negative integers"),
        (lambda: Conv2D(4, 3, padding=((1, 1),)), r"got \(\(1, 1\),\)"),
        (lambda: Conv2D(4, 3, weight_init="lecun"), "weight_init must be one of"),
    ],
)
def test_bad_specs_name_the_field_and_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_spec_is_hashable_and_normalised():
    assert Conv2D(20, 5) == Conv2D(20, (5, 5), stride=(1, 1))
    explicit = Conv2D(2, 3, padding=[[1, 1], [0, 0]])
    assert hash(explicit) == hash(Conv2D(2, 3, padding=((1, 1), (0, 0))))
    assert str(Conv2D(50, 5)) == "Conv2D(50, 5x5)"
    assert str(Conv2D(8, (3, 2), stride=(2, 1), padding="SAME")) == (
        "Conv2D(8, 3x2, stride 2x1, SAME)"
    )


def test_doctests():
    result = doctest.testmod(conv)
    assert result.attempted > 0 and result.failed == 0
