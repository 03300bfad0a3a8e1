"""Hessian- and Gauss-Newton-vector products by hand (jaxbp.curvature.products)
against forward-over-reverse autodiff, finite differences and their identities."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curvature_harness import (
    conv_net,
    random_like,
    ref_ggn_vp,
    ref_hvp,
    rel_error,
    setup,
    vdot,
)
from layer_harness import forbid_autodiff

from jaxbp import MLP, Sequential
from jaxbp.activations import ACTIVATIONS
from jaxbp.curvature import ggn_vp, hvp
from jaxbp.layers import (
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool2D,
    Reshape,
    Residual,
)

LOSSES = ("softmax_cross_entropy", "half_sse", "mse")
#: Each loss with an output activation it allows (the cross-entropy takes logits).
OUTPUT = {"softmax_cross_entropy": "identity", "half_sse": "sigmoid", "mse": "tanh"}
jit_hvp = jax.jit(hvp, static_argnums=0)
jit_ggn_vp = jax.jit(ggn_vp, static_argnums=0)
jit_ref_hvp = jax.jit(ref_hvp, static_argnums=0)
jit_ref_ggn_vp = jax.jit(ref_ggn_vp, static_argnums=0)


def mlp(activation, objective, sizes=(4, 5, 3)):
    return MLP(sizes, activation, OUTPUT[objective], objective)


# Every activation, each loss in turn, and depths 1 to 3.
CASES = [
    (act, LOSSES[i % 3], ((4, 3), (4, 5, 3), (4, 5, 6, 3))[i % 3])
    for i, act in enumerate(ACTIVATIONS)
]


@pytest.mark.parametrize("activation,objective,sizes", CASES)
def test_mlp_hvp_equals_jvp_of_grad_float64(activation, objective, sizes):
    with jax.enable_x64(True):
        net = mlp(activation, objective, sizes)
        params, x, y, v = setup(net, jnp.float64)
        assert (
            rel_error(jit_hvp(net, params, x, y, v), jit_ref_hvp(net, params, x, y, v))
            <= 1e-10
        )


@pytest.mark.parametrize("objective", ["softmax_cross_entropy", "half_sse"])
def test_conv_hvp_equals_jvp_of_grad_float64(objective):
    with jax.enable_x64(True):
        net = conv_net(objective)
        params, x, y, v = setup(net, jnp.float64)
        got = jit_hvp(net, params, x, y, v)
        assert rel_error(got, jit_ref_hvp(net, params, x, y, v)) <= 1e-10


@pytest.mark.parametrize("net", [mlp("gelu", "softmax_cross_entropy"), conv_net()],
                         ids=["mlp", "conv"])  # fmt: skip
def test_hvp_float32_loose(net):
    params, x, y, v = setup(net, jnp.float32)
    got = jit_hvp(net, params, x, y, v)
    assert jax.tree.leaves(got)[0].dtype == jnp.float32
    assert rel_error(got, jit_ref_hvp(net, params, x, y, v)) <= 1e-4


@pytest.mark.parametrize("net", [mlp("tanh", "half_sse"), conv_net("mse")],
                         ids=["mlp", "conv"])  # fmt: skip
def test_hvp_equals_finite_differences_of_manual_grad(net):
    # (g(p + h v) - g(p - h v)) / 2h = H v + O(h^2): the manual gradient's own slope
    with jax.enable_x64(True):
        params, x, y, v = setup(net, jnp.float64)
        grad = jax.jit(net.manual_grad)
        h = 1e-5
        plus = grad(jax.tree.map(lambda p, u: p + h * u, params, v), x, y)
        minus = grad(jax.tree.map(lambda p, u: p - h * u, params, v), x, y)
        fd = jax.tree.map(lambda a, b: (a - b) / (2 * h), plus, minus)
        assert rel_error(jit_hvp(net, params, x, y, v), fd) <= 1e-7


@pytest.mark.parametrize("net", [mlp("softplus", "softmax_cross_entropy"), conv_net()],
                         ids=["mlp", "conv"])  # fmt: skip
def test_hvp_is_symmetric(net):
    # <u, H v> = <v, H u>
    with jax.enable_x64(True):
        params, x, y, v = setup(net, jnp.float64)
        u = random_like(params, 11)
        left = vdot(u, jit_hvp(net, params, x, y, v))
        right = vdot(v, jit_hvp(net, params, x, y, u))
        assert abs(left - right) <= 1e-12 * max(abs(left), 1.0)


def test_hvp_and_ggn_vp_use_no_autodiff(monkeypatch):
    nets = [mlp("elu", "softmax_cross_entropy"), conv_net("half_sse")]
    with jax.enable_x64(True):
        cases = [(net, *setup(net, jnp.float64)) for net in nets]
        refs = [
            (jit_ref_hvp(n, p, x, y, v), jit_ref_ggn_vp(n, p, x, y, v))
            for n, p, x, y, v in cases
        ]
        forbid_autodiff(monkeypatch)
        for (net, p, x, y, v), (h_ref, g_ref) in zip(cases, refs, strict=True):
            # traced afresh (forbid_autodiff clears the caches) under the patch
            assert rel_error(jax.jit(hvp, static_argnums=0)(net, p, x, y, v),
                             h_ref) <= 1e-10  # fmt: skip
            assert rel_error(jax.jit(ggn_vp, static_argnums=0)(net, p, x, y, v),
                             g_ref) <= 1e-10  # fmt: skip


def test_hvp_jits_and_takes_any_batch_size():
    net = mlp("sigmoid", "softmax_cross_entropy")
    params, x, y, v = setup(net, jnp.float32)
    eager = hvp(net, params, x, y, v)
    np.testing.assert_allclose(
        jit_hvp(net, params, x, y, v)[0]["w"], eager[0]["w"], rtol=1e-5, atol=1e-7
    )
    one = jit_hvp(net, params, x[:1], y[:1], v)
    assert rel_error(one, jit_ref_hvp(net, params, x[:1], y[:1], v)) <= 1e-4


@pytest.mark.parametrize(
    "layers,where",
    [
        ((Dense(4), LayerNorm(), Dense(3)), "layer 2 of 3, LayerNorm"),
        ((Dense(4), BatchNorm(), Dense(3)), "layer 2 of 3, BatchNorm"),
        ((Dense(4), Dropout(0.5), Dense(3)), "layer 2 of 3, Dropout"),
        (
            (Dense(4), Residual([Dense(4), BatchNorm()]), Flatten(), Dense(3)),
            "layer 2 of 4, Residual(Dense(4), BatchNorm()), block layer 2 of 2, "
            "BatchNorm",
        ),
    ],
)
@pytest.mark.parametrize("fn", [hvp, ggn_vp], ids=["hvp", "ggn_vp"])
def test_unsupported_layers_are_refused_by_name(layers, where, fn):
    net = Sequential(layers, input_shape=(3,))
    params = net.init(jax.random.key(0))
    x, y = jnp.ones((2, 3)), jnp.array([0, 1])
    with pytest.raises(
        ValueError, match=re.escape(f"{fn.__name__} does not support {where}")
    ):
        fn(net, params, x, y, params)


def test_direction_of_another_shape_is_refused():
    net = mlp("tanh", "half_sse")
    params, x, y, _ = setup(net, jnp.float32)
    bad = [params[0], {"w": params[1]["w"].T, "b": params[1]["b"]}]
    with pytest.raises(ValueError, match=r"v\[1\]\['w'\] has shape \(3, 5\)"):
        hvp(net, params, x, y, bad)


# ------------------------------------------------------------------------ ggn_vp
@pytest.mark.parametrize("activation,objective,sizes", CASES[::2])
def test_mlp_ggn_vp_equals_jvp_hessian_vjp(activation, objective, sizes):
    with jax.enable_x64(True):
        net = mlp(activation, objective, sizes)
        params, x, y, v = setup(net, jnp.float64)
        got = jit_ggn_vp(net, params, x, y, v)
        assert rel_error(got, jit_ref_ggn_vp(net, params, x, y, v)) <= 1e-10


@pytest.mark.parametrize("objective", ["mse"])
def test_conv_ggn_vp_equals_jvp_hessian_vjp(objective):
    with jax.enable_x64(True):
        net = conv_net(objective)
        params, x, y, v = setup(net, jnp.float64)
        got = jit_ggn_vp(net, params, x, y, v)
        assert rel_error(got, jit_ref_ggn_vp(net, params, x, y, v)) <= 1e-10


@pytest.mark.parametrize("objective", LOSSES)
def test_ggn_is_positive_semidefinite(objective):
    # every loss is convex in the output, so <v, G v> = |S^T J v|^2 / B >= 0, while
    # the Hessian of a tanh network is indefinite
    with jax.enable_x64(True):
        net = mlp("tanh", objective, (4, 6, 3))
        params, x, y, _ = setup(net, jnp.float64)
        quad = [
            vdot(v, jit_ggn_vp(net, params, x, y, v))
            for v in (random_like(params, s) for s in range(8))
        ]
        assert min(quad) >= -1e-14 * max(quad)


@pytest.mark.parametrize("objective", ["softmax_cross_entropy", "half_sse"])
def test_relu_network_diagonal_blocks_of_hessian_and_ggn_agree(objective):
    # A ReLU network with an identity output is linear in each layer's parameters
    # alone, so H_ll = G_ll; the blocks that couple two layers differ.
    with jax.enable_x64(True):
        net = MLP((4, 5, 5, 3), "relu", "identity", objective)
        params, x, y, v = setup(net, jnp.float64)
        for l in range(net.depth):
            only = [
                u if k == l else jax.tree.map(jnp.zeros_like, u)
                for k, u in enumerate(v)
            ]
            hv, gv = (
                jit_hvp(net, params, x, y, only),
                jit_ggn_vp(net, params, x, y, only),
            )
            assert rel_error(hv[l], gv[l]) <= 1e-12
        assert (
            rel_error(jit_hvp(net, params, x, y, v), jit_ggn_vp(net, params, x, y, v))
            > 1e-3
        )


def test_hessian_minus_ggn_is_the_f_second_terms_and_couplings():
    # For a linear network with half_sse the loss Hessian is I and f'' = 0; the
    # Hessian still differs from the GGN by the couplings of W_2 with W_1.
    with jax.enable_x64(True):
        net = MLP((3, 4, 2), "identity", "identity", "half_sse")
        params, x, y, v = setup(net, jnp.float64)
        got = jax.tree.map(
            jnp.subtract,
            jit_hvp(net, params, x, y, v),
            jit_ggn_vp(net, params, x, y, v),
        )
        out = net.forward(params, x)
        delta = (out - net.check_batch(params, x, y)[1]) / x.shape[0]  # dL/dz_2
        # (H - G) v for W_1: x^T (delta V_2^T);  for W_2: (x V_1 + V_b1)^T delta
        want_w1 = x.T @ (delta @ v[1]["w"].T)
        want_w2 = (x @ v[0]["w"] + v[0]["b"][None, :]).T @ delta
        np.testing.assert_allclose(got[0]["w"], want_w1, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got[1]["w"], want_w2, rtol=1e-10, atol=1e-13)


def test_doctests():
    import doctest

    from jaxbp.curvature import products

    assert doctest.testmod(products).failed == 0


def test_readme_example_runs_as_written():  # docs/curvature.md's example
    # In a subprocess: the example turns on float64 for the whole process.
    import pathlib
    import subprocess
    import sys

    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "curvature.md"
    section = page.read_text().split("# Second order by hand", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    printed = section.split("prints\n\n```\n", 1)[1].split("```", 1)[0]
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    got, want = run.stdout.splitlines(), printed.splitlines()
    assert float(got[0].split(":")[1]) <= 1e-14  # rounding differs by machine
    assert got[1:] == want[1:]


def test_max_pool_ties_after_relu_agree_with_jax():
    # Dead ReLUs make windows of equal zeros: the R-pass takes R{x} at each window's
    # first maximum, the element the backward (and jax) choose.
    with jax.enable_x64(True):
        layers = (Reshape((6, 6, 2)), Conv2D(3, 2, padding="SAME"),
                  Activation("relu"), MaxPool2D(2), Flatten(), Dense(3))  # fmt: skip
        net = Sequential(layers, input_shape=(72,))
        params, x, y, v = setup(net, jnp.float64)
        params[1]["b"] = params[1]["b"] - 1.0
        out = jax.nn.relu(net.layers[1].forward(params[1], x.reshape(-1, 6, 6, 2))[0])
        assert float(jnp.mean(out == 0)) > 0.5  # ties are common
        for mine, ref in ((jit_hvp, jit_ref_hvp), (jit_ggn_vp, jit_ref_ggn_vp)):
            assert (
                rel_error(mine(net, params, x, y, v), ref(net, params, x, y, v))
                <= 1e-10
            )
