"""Each layer's hand-derived backward against ``jax.vjp`` and finite differences.

For every layer, in float64 (relative error <= 1e-10) and float32 (loose), over
several shapes: ``layer.backward`` equals ``jax.vjp`` of ``layer.forward``, passes
:func:`jaxbp.check_grad` against finite differences, and runs with every autodiff
entry point patched to raise.
"""

import jax
import jax.numpy as jnp
import pytest
from layer_harness import (
    forbid_autodiff,
    layer_check_grad,
    layer_setup,
    layer_vjp_error,
)

from jaxbp import layers
from jaxbp.activations import ACTIVATIONS

CASES = [
    (layers.Dense(3), (5, 4)),
    (layers.Dense(1, weight_init="glorot"), (1, 7)),
    (layers.Flatten(), (3, 2, 3, 4)),
    (layers.Flatten(), (1, 5)),
    *[(layers.Activation(name), (4, 3, 2)) for name in ACTIVATIONS],
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


@pytest.mark.parametrize(("layer", "shape"), CASES[:4], ids=IDS[:4])
def test_backward_passes_finite_differences(layer, shape):
    report = layer_check_grad(layer, shape)
    assert report.passed, str(report)


@pytest.mark.parametrize(("layer", "shape"), CASES, ids=IDS)
def test_backward_uses_no_autodiff(layer, shape, monkeypatch):
    params, state, x, dy = layer_setup(layer, shape, jnp.float32)
    _, want, _ = layer_vjp_error(layer, shape, jnp.float32)
    forbid_autodiff(monkeypatch)

    @jax.jit
    def manual(params, x, dy):
        _, cache, _ = layer.forward(params, x, state=state)
        return layer.backward(params, cache, dy)

    got = manual(params, x, dy)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert jnp.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dense_names_the_fix_for_an_image_input():
    with pytest.raises(
        layers.LayerShapeError, match=r"got \(B, 4, 4, 50\); add Flatten"
    ):
        layers.Dense(500).output_shape((4, 4, 50))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_dense_rejects_bad_features(bad):
    with pytest.raises(ValueError, match="Dense features must be a positive integer"):
        layers.Dense(bad)


def test_activation_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        layers.Activation("swish")


def test_layers_are_hashable_specs():
    assert hash(layers.Dense(3)) == hash(layers.Dense(3))
    assert layers.Activation("relu") == layers.Activation("relu")
    assert str(layers.Dense(500)) == "Dense(500)"
