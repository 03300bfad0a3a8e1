"""Conv2D, MaxPool2D and AvgPool2D: hand-derived backward against jax.vjp and FD.

Over shapes with odd sizes, batch 1, strides 2 and (2, 1), strides larger than the
window, SAME, VALID and explicit padding, non-square kernels and windows and several
channels: ``layer.backward`` equals ``jax.vjp`` of ``layer.forward`` (float64
relative error <= 1e-10, float32 <= 1e-5), passes :func:`jaxbp.check_grad` against
finite differences, and runs under ``jit`` with every autodiff entry point patched to
raise. Max pooling is also checked on inputs full of ties.
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
    max_rel_error,
)

from jaxbp import layers
from jaxbp.layers import AvgPool2D, Conv2D, MaxPool2D, conv, pool

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
    (MaxPool2D(2), (2, 6, 6, 3)),
    (MaxPool2D((3, 2), stride=(2, 1)), (1, 7, 5, 2)),  # overlapping windows
    (MaxPool2D(3, stride=2, padding="SAME"), (2, 7, 8, 2)),
    (MaxPool2D(2, padding=((1, 0), (0, 1))), (2, 5, 5, 1)),
    (MaxPool2D(2, stride=3), (2, 7, 7, 1)),
    (AvgPool2D(2), (2, 5, 6, 3)),
    (AvgPool2D((3, 2), stride=(2, 1)), (1, 7, 5, 2)),
    (AvgPool2D(3, stride=2, padding="SAME"), (2, 7, 8, 2)),
    (AvgPool2D((2, 3), padding=((1, 0), (0, 2))), (2, 5, 5, 1)),
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
    (MaxPool2D((3, 2), stride=(2, 1), padding="SAME"), (1, 5, 4, 2)),
    (AvgPool2D(2, stride=1, padding=((1, 0), (0, 1))), (2, 4, 3, 1)),
]


@pytest.mark.parametrize(
    ("layer", "shape"), FD_CASES, ids=[str(layer) for layer, _ in FD_CASES]
)
def test_backward_passes_finite_differences(layer, shape):
    report = layer_check_grad(layer, shape)
    assert report.passed, str(report)


# Each layer and each branch of its backward (Conv2D with C = 1 and C > 1); the
# other shapes run the same code.
NO_AUTODIFF = [1, 4, 9, 15]


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


@pytest.mark.parametrize(
    "layer", [MaxPool2D(2), AvgPool2D(3, stride=2, padding="SAME")], ids=str
)
def test_forward_is_differentiable_under_jit(layer):
    # The autodiff side of a training step: jax.grad of the forward inside jit (a
    # traced reduce_window init value would make it the generic, non-differentiable
    # reduce_window).
    params, _, x, dy = layer_setup(layer, (2, 6, 6, 2), jnp.float32)
    dx = jax.jit(jax.grad(lambda x: jnp.sum(dy * layer.forward(params, x)[0])))(x)
    _, cache, _ = layer.forward(params, x)
    np.testing.assert_allclose(dx, layer.backward(params, cache, dy)[1], rtol=1e-6)


# --- max pooling at ties ---------------------------------------------------------
TIE_CASES = [CASES[7], CASES[8], CASES[9]]  # tiling, overlapping, SAME


@pytest.mark.parametrize("kind", ["binary", "relu"])
@pytest.mark.parametrize(
    ("layer", "shape"), TIE_CASES, ids=[str(layer) for layer, _ in TIE_CASES]
)
def test_max_pool_ties_go_where_jax_grad_sends_them(layer, shape, kind):
    rng = np.random.default_rng(7)
    if kind == "binary":  # integers in {0, 1}: almost every window ties
        x = rng.integers(0, 2, size=shape).astype(np.float32)
    else:  # a ReLU of mostly negative values: windows of exact zeros
        x = np.maximum(rng.normal(size=shape) - 1.0, 0.0).astype(np.float32)
    x = jnp.asarray(x)
    y, cache, _ = layer.forward({}, x)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    _, dx = layer.backward({}, cache, dy)
    _, vjp = jax.vjp(lambda x: layer.forward({}, x)[0], x)
    (want,) = vjp(dy)
    assert max_rel_error(dx, want) <= 1e-6


@pytest.mark.parametrize(
    ("layer", "x", "want"),
    [
        (  # one window, four tied 2s: the first in row-major order takes delta
            MaxPool2D(3),
            [[0, 2, 1], [2, 2, 0], [0, 0, 2]],
            [[0, 1, 0], [0, 0, 0], [0, 0, 0]],
        ),
        (  # four overlapping windows of zeros: each sends delta to its first
            MaxPool2D(2, stride=1),
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[1, 1, 0], [1, 1, 0], [0, 0, 0]],
        ),
        (  # four overlapping windows share one maximum: their deltas add up
            MaxPool2D(2, stride=1),
            [[0, 0, 0], [0, 5, 5], [0, 5, 0]],
            [[0, 0, 0], [0, 4, 0], [0, 0, 0]],
        ),
    ],
)
def test_max_pool_sends_delta_to_the_first_maximum_in_row_major_order(layer, x, want):
    x = jnp.asarray(x, jnp.float32)[None, :, :, None]
    y, cache, _ = layer.forward({}, x)
    _, dx = layer.backward({}, cache, jnp.ones_like(y))
    assert dx[0, :, :, 0].tolist() == want


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


def test_avg_pool_divides_by_the_full_window():
    # count_include_pad=True: the corner window holds one real 1 and three zeros.
    layer = AvgPool2D(2, stride=1, padding=((1, 0), (1, 0)))
    y, _, _ = layer.forward({}, jnp.ones((1, 2, 2, 1)))
    assert y[0, :, :, 0].tolist() == [[0.25, 0.5], [0.5, 1.0]]


def test_conv_init_fans_count_the_kernel_window():
    # fan_in = kh kw C = 3 * 3 * 16, fan_out = kh kw F = 3 * 3 * 32
    key = jax.random.key(0)
    w = Conv2D(32, 3).init(key, (8, 8, 16), jnp.float32)["w"]
    assert w.shape == (3, 3, 16, 32)
    assert abs(float(jnp.std(w)) / np.sqrt(2 / 144) - 1) < 0.05  # He normal
    w = Conv2D(32, 3, weight_init="glorot").init(key, (8, 8, 16), jnp.float32)["w"]
    limit = np.sqrt(6 / (144 + 288))  # Glorot uniform
    assert limit * 0.99 < float(jnp.max(jnp.abs(w))) <= limit


# --- a LeNet-like chain, shapes and messages ---------------------------------------
def test_chain_with_ties_equals_vjp():
    chain = [
        Conv2D(3, 3),
        layers.Activation("relu"),  # exact zeros, so the pool sees ties
        MaxPool2D(2),
        Conv2D(4, (2, 3), stride=(1, 2), padding="SAME"),
        AvgPool2D(2, stride=1),
        layers.Flatten(),
        layers.Dense(3),
    ]
    with jax.enable_x64(True):
        shapes = layers.chain_output_shapes(chain, (10, 9, 2))
        params = [
            layer.init(jax.random.key(i), shape, jnp.float64)
            for i, (layer, shape) in enumerate(zip(chain, shapes, strict=False))
        ]
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(size=(2, 10, 9, 2)))
        dy = jnp.asarray(rng.normal(size=(2, *shapes[-1])))

        @jax.jit  # one compile for the whole chain instead of one per eager op
        def both(params, x, dy):
            _, caches, _ = layers.chain_forward(chain, params, x)
            grads, dx, _ = layers.chain_backward(chain, params, caches, dy)
            _, vjp = jax.vjp(
                lambda p, x: layers.chain_forward(chain, p, x)[0], params, x
            )
            return (grads, dx), vjp(dy)

        manual, reference = both(params, x, dy)
        assert max_rel_error(manual, reference) <= 1e-10


def test_lenet_shapes():
    lenet = [Conv2D(20, 5), MaxPool2D(2), Conv2D(50, 5), MaxPool2D(2), layers.Flatten()]
    shapes = layers.chain_output_shapes(lenet, (28, 28, 1))
    assert shapes[1:] == [(24, 24, 20), (12, 12, 20), (8, 8, 50), (4, 4, 50), (800,)]


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
        (MaxPool2D(2), (5,), r"got \(B, 5\); reshape the images to \(B, H, W, C\)"),
        (
            Conv2D(50, 5),
            (4, 4, 20),
            r"at least 5x5 after padding \(its kernel is 5x5, VALID\), "
            r'got \(B, 4, 4, 20\), 4x4 padded; use padding="SAME"',
        ),
        (
            AvgPool2D((2, 3), padding=((0, 0), (1, 0))),
            (3, 1, 1),
            r"at least 2x3 .* got \(B, 3, 1, 1\), 3x2 padded",
        ),
    ],
)
def test_shape_errors_say_what_is_expected(layer, shape, message):
    with pytest.raises(layers.LayerShapeError, match=message):
        layer.output_shape(shape)


def test_chain_names_the_layer_that_cannot_take_its_input():
    chain = [Conv2D(20, 5), MaxPool2D(2), Conv2D(50, 5), MaxPool2D(2), Conv2D(8, 5)]
    with pytest.raises(layers.LayerShapeError, match=r"^layer 5 Conv2D\(8, 5x5\): "):
        layers.chain_output_shapes(chain, (28, 28, 1))


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
        (lambda: MaxPool2D(0), "MaxPool2D window must be a positive integer"),
        (lambda: AvgPool2D(2, stride=-1), "AvgPool2D stride .*, got -1"),
        (
            lambda: MaxPool2D(2, padding=((2, 0), (0, 0))),
            r"padding \(\(2, 0\), \(0, 0\)\) must be smaller than the window 2x2",
        ),
    ],
)
def test_bad_specs_name_the_field_and_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_specs_are_hashable_and_normalised():
    assert Conv2D(20, 5) == Conv2D(20, (5, 5), stride=(1, 1))
    explicit = Conv2D(2, 3, padding=[[1, 1], [0, 0]])
    assert hash(explicit) == hash(Conv2D(2, 3, padding=((1, 1), (0, 0))))
    assert MaxPool2D(2) == MaxPool2D(2, stride=2) != AvgPool2D(2)
    assert str(Conv2D(50, 5)) == "Conv2D(50, 5x5)"
    assert str(Conv2D(8, (3, 2), stride=(2, 1), padding="SAME")) == (
        "Conv2D(8, 3x2, stride 2x1, SAME)"
    )
    assert str(MaxPool2D(3, stride=2)) == "MaxPool2D(3x3, stride 2)"
    assert str(AvgPool2D(2)) == "AvgPool2D(2x2)"


@pytest.mark.parametrize("module", [conv, pool], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
