"""Feedback alignment, direct feedback alignment and sign symmetry (jaxbp.feedback)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_harness import forbid_autodiff

from jaxbp import feedback
from jaxbp.layers import Activation, Conv2D, Dense, Dropout, Flatten, Reshape
from jaxbp.mlp import MLP
from jaxbp.sequential import Sequential

FA, DFA, SS = feedback.RULES
TOL = {jnp.float32: {"rtol": 2e-5, "atol": 1e-6}, jnp.float64: {"rtol": 1e-12}}


def _batch(net_in: int, k: int, *, n=6, dtype=jnp.float32, seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, net_in), dtype)
    return x, jax.random.randint(ky, (n,), 0, k)


def _transposed_weights(params):
    """``B_l = W_l`` (in the orientation of ``delta B^T``): backprop's own matrices."""
    return [None] + [p["w"] for p in params[1:]]


def _products(params):
    """``D_l = W_l W_{l+1} ... W_L`` for every layer above the first."""
    out = [None]
    for l in range(1, len(params)):
        d = params[l]["w"]
        for p in params[l + 1 :]:
            d = d @ p["w"]
        out.append(d)
    return out


# --------------------------------------------------------------------- equal to BP
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "sizes,activation",
    [((5, 4, 3), "sigmoid"), ((5, 4, 6, 3), "tanh"), ((5, 4, 4, 4, 3), "relu")],
)
def test_fa_with_the_true_weights_is_the_true_gradient(sizes, activation, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        net = MLP(sizes, activation)
        params = net.init(jax.random.key(0), dtype=dtype)
        x, y = _batch(sizes[0], sizes[-1], dtype=dtype)
        fb = _transposed_weights(params)
        loss, upd = feedback.value_and_feedback_grad(net, params, fb, x, y, FA)
        ref_loss, ref = jax.value_and_grad(net.loss)(params, x, y)
        chex.assert_trees_all_close(upd, ref, **TOL[dtype])
        np.testing.assert_allclose(loss, ref_loss, **TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("sizes", [(5, 4, 3), (5, 4, 6, 3), (5, 7, 4, 6, 3)])
def test_dfa_with_the_weight_products_is_the_true_gradient_of_a_linear_net(
    sizes, dtype
):
    with jax.enable_x64(dtype == jnp.float64):
        net = MLP(sizes, "identity")
        params = net.init(jax.random.key(0), dtype=dtype)
        x, y = _batch(sizes[0], sizes[-1], dtype=dtype)
        _, upd = feedback.value_and_feedback_grad(
            net, params, _products(params), x, y, DFA
        )
        chex.assert_trees_all_close(upd, jax.grad(net.loss)(params, x, y), **TOL[dtype])


def test_sequential_rules_with_true_matrices_are_the_true_gradient():
    with jax.enable_x64(True):
        layers = [Dense(4), Activation("identity"), Dropout(0.0), Dense(6), Dense(3)]
        net = Sequential(layers, input_shape=(5,))
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x, y = _batch(5, 3, dtype=jnp.float64)
        ref = jax.grad(net.loss)(params, x, y)
        fa = [None, None, None, params[3]["w"], params[4]["w"]]
        dfa = [None, None, None, params[3]["w"] @ params[4]["w"], params[4]["w"]]
        for rule, fb in ((FA, fa), (DFA, dfa)):
            _, upd = feedback.value_and_feedback_grad(net, params, fb, x, y, rule)
            chex.assert_trees_all_close(upd, ref, rtol=1e-12)


def test_fa_on_a_convolutional_net_keeps_the_conv_backward_exact():
    with jax.enable_x64(True):
        layers = [Reshape((4, 4, 1)), Conv2D(2, 3), Activation("tanh"), Flatten()]
        net = Sequential([*layers, Dense(5), Activation("tanh"), Dense(3)], (16,))
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x, y = _batch(16, 3, dtype=jnp.float64)
        shapes = feedback.feedback_shapes(net, FA)
        assert shapes == [None, None, None, None, (8, 5), None, (5, 3)]
        fb = [None] * 4 + [params[4]["w"], None, params[6]["w"]]
        _, upd = feedback.value_and_feedback_grad(net, params, fb, x, y, FA)
        chex.assert_trees_all_close(upd, jax.grad(net.loss)(params, x, y), rtol=1e-12)


def test_sign_symmetry_is_fa_with_the_signs_of_the_weights():
    net = MLP((5, 4, 6, 3), "tanh")
    params = net.init(jax.random.key(0))
    x, y = _batch(5, 3)
    _, ss = feedback.value_and_feedback_grad(net, params, None, x, y, SS)
    signs = [None] + [jnp.sign(p["w"]) for p in params[1:]]
    _, fa = feedback.value_and_feedback_grad(net, params, signs, x, y, FA)
    chex.assert_trees_all_close(ss, fa, rtol=0, atol=0)


# --------------------------------------------------------------------- NumPy
def _numpy_rule(params, fb, x, y, rule):
    """The three rules written out in NumPy for a tanh MLP with softmax
    cross-entropy, independently of jaxbp."""
    ws = [np.asarray(p["w"], np.float64) for p in params]
    bs = [np.asarray(p["b"], np.float64) for p in params]
    a, acts = np.asarray(x, np.float64), []
    for l, (w, b) in enumerate(zip(ws, bs, strict=True)):
        acts.append(a)
        z = a @ w + b
        a = z if l == len(ws) - 1 else np.tanh(z)
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(a.shape[1])[np.asarray(y)]) / len(a)  # dL/dz_L
    deltas = [None] * len(ws)
    deltas[-1] = e
    for l in range(len(ws) - 1, 0, -1):
        if rule == "feedback-alignment":
            back = deltas[l] @ np.asarray(fb[l], np.float64).T
        elif rule == "sign-symmetry":
            back = deltas[l] @ np.sign(ws[l]).T
        else:
            back = e @ np.asarray(fb[l], np.float64).T
        deltas[l - 1] = back * (1.0 - acts[l] ** 2)  # tanh' = 1 - a^2
    return [{"w": acts[l].T @ deltas[l], "b": deltas[l].sum(0)} for l in range(len(ws))]


@pytest.mark.parametrize("rule", feedback.RULES)
def test_rules_match_a_numpy_implementation(rule):
    with jax.enable_x64(True):
        net = MLP((6, 5, 4, 3), "tanh")
        params = net.init(jax.random.key(2), dtype=jnp.float64)
        fb = feedback.init_feedback(net, jax.random.key(3), rule, dtype=jnp.float64)
        x, y = _batch(6, 3, n=7, dtype=jnp.float64)
        _, upd = feedback.value_and_feedback_grad(net, params, fb, x, y, rule)
        want = _numpy_rule(params, fb, x, y, rule)
        chex.assert_trees_all_close(upd, want, rtol=1e-12, atol=1e-15)
        # Not the true gradient: the rule really changed the backward pass.
        true = jax.grad(net.loss)(params, x, y)
        assert not np.allclose(upd[0]["w"], true[0]["w"], rtol=1e-3)


# --------------------------------------------------------------------- no autodiff
@pytest.mark.parametrize("rule", feedback.RULES)
def test_rules_use_no_autodiff(rule, monkeypatch):
    mlp = MLP((5, 4, 6, 3), "tanh")
    seq = Sequential([Dense(4), Activation("tanh"), Dense(3)], input_shape=(5,))
    nets = [(mlp, mlp.init(jax.random.key(0))), (seq, seq.init(jax.random.key(0)))]
    fbs = [feedback.init_feedback(net, jax.random.key(1), rule) for net, _ in nets]
    x, y = _batch(5, 3)
    forbid_autodiff(monkeypatch)
    for (net, params), fb in zip(nets, fbs, strict=True):
        feedback.value_and_feedback_grad(net, params, fb, x, y, rule)
        jax.jit(feedback.value_and_feedback_grad, static_argnums=(0, 5))(
            net, params, fb, x, y, rule
        )


# --------------------------------------------------------------------- drawing
def test_init_feedback_shapes_scale_and_determinism():
    net = MLP((784, 30, 20, 10), "tanh")
    key = jax.random.key(0)
    fa = feedback.init_feedback(net, key, FA)
    dfa = feedback.init_feedback(net, key, DFA)
    assert [None if b is None else b.shape for b in fa] == [None, (30, 20), (20, 10)]
    assert [None if b is None else b.shape for b in dfa] == [None, (30, 10), (20, 10)]
    assert feedback.init_feedback(net, key, SS) is None
    for b in fa[1:] + dfa[1:]:
        limit = math.sqrt(6 / sum(b.shape))
        assert float(jnp.max(jnp.abs(b))) <= limit
        assert float(jnp.max(jnp.abs(b))) > 0.8 * limit  # uniform, not tiny
    chex.assert_trees_all_equal(fa, feedback.init_feedback(net, key, FA))
    other = feedback.init_feedback(net, jax.random.key(1), FA)
    assert not np.array_equal(fa[1], other[1])


# --------------------------------------------------------------------- errors
def test_unknown_rule_is_named():
    net = MLP((5, 4, 3))
    with pytest.raises(ValueError, match=r"unknown learning rule 'fa'.*feedback-align"):
        feedback.init_feedback(net, jax.random.key(0), "fa")


def test_wrong_feedback_is_named():
    net = MLP((5, 4, 6, 3), "tanh")
    params = net.init(jax.random.key(0))
    x, y = _batch(5, 3)
    fb = feedback.init_feedback(net, jax.random.key(1), FA)

    def call(fb, rule=FA):
        feedback.value_and_feedback_grad(net, params, fb, x, y, rule)

    with pytest.raises(ValueError, match=r"feedback\[2\] has shape \(3, 6\), expected"):
        call([None, fb[1], fb[2].T])
    with pytest.raises(ValueError, match=r"one entry per layer \(3\), got a list of 2"):
        call(fb[:2])
    with pytest.raises(ValueError, match=r"feedback\[1\] is None"):
        call([None, None, fb[2]])
    with pytest.raises(ValueError, match=r"feedback\[0\] must be None"):
        call([params[0]["w"], fb[1], fb[2]])
    with pytest.raises(ValueError, match=r"sign\(W\); pass feedback=None"):
        call(fb, SS)
    with pytest.raises(ValueError, match=r"expected \(4, 3\) for direct"):
        call(fb, DFA)


def test_dfa_refuses_a_convolutional_net_naming_the_layer():
    net = Sequential(
        [Reshape((4, 4, 1)), Conv2D(2, 3), Flatten(), Dense(3)], input_shape=(16,)
    )
    with pytest.raises(ValueError, match=r"cannot train layer 2 of 4, Conv2D"):
        feedback.init_feedback(net, jax.random.key(0), DFA)


# --------------------------------------------------------------------- alignment
@pytest.mark.parametrize(
    "a,b,degrees",
    [
        ([1.0, 0.0], [1.0, 1.0], 45.0),
        ([1.0, 0.0], [0.0, 3.0], 90.0),
        ([2.0, 4.0], [1.0, 2.0], 0.0),
        ([1.0, 2.0], [-1.0, -2.0], 180.0),
        ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]], 90.0),
        ([1.0, 0.0, 0.0], [1.0, 1.0, math.sqrt(2)], 60.0),
    ],
)
def test_angle_of_hand_computed_cases(a, b, degrees):
    got = feedback.angle(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(got, degrees, atol=1e-4)


def test_angle_of_identical_vectors_is_exactly_zero_and_of_zero_is_nan():
    v = jax.random.normal(jax.random.key(0), (1000,))
    assert float(feedback.angle(v, 3 * v)) < 1e-3
    assert math.isnan(float(feedback.angle(v, jnp.zeros_like(v))))


def test_alignment_of_the_true_matrices_is_zero_and_of_random_ones_not():
    with jax.enable_x64(True):
        net = MLP((6, 5, 4, 3), "tanh")
        params = net.init(jax.random.key(2), dtype=jnp.float64)
        x, y = _batch(6, 3, n=8, dtype=jnp.float64)
        align = jax.jit(feedback.alignment, static_argnums=(0, 5))
        m = align(net, params, _transposed_weights(params), x, y, FA)
        assert set(m) == set(feedback.ALIGNMENT_METRICS)
        for name in ("update_angle", "delta_angle"):
            np.testing.assert_allclose(m[name], 0.0, atol=1e-5)
        np.testing.assert_allclose(m["norm_ratio"], 1.0, rtol=1e-10)
        assert math.isnan(m["feedback_angle"][0])
        np.testing.assert_allclose(m["feedback_angle"][1:], 0.0, atol=1e-5)

        fb = feedback.init_feedback(net, jax.random.key(3), FA, dtype=jnp.float64)
        m = align(net, params, fb, x, y, FA)
        # The output layer is exact under every rule; the hidden ones are not.
        np.testing.assert_allclose(m["update_angle"][-1], 0.0, atol=1e-5)
        np.testing.assert_allclose(m["delta_angle"][-1], 0.0, atol=1e-5)
        assert np.all(m["update_angle"][:-1] > 20)
        assert np.all(m["delta_angle"][:-1] > 20)
        # Independent random matrices are nearly orthogonal to the weights.
        np.testing.assert_allclose(m["feedback_angle"][1:], 90, atol=40)
        # The delta angle agrees with a direct computation.
        _, upd, deltas, _ = feedback.feedback_deltas(
            net, params, fb, x, jax.nn.one_hot(y, 3, dtype=jnp.float64), FA
        )
        _, true = net.deltas(params, x, jax.nn.one_hot(y, 3, dtype=jnp.float64))
        np.testing.assert_allclose(
            m["delta_angle"][1], feedback.angle(deltas[1], true[1]), rtol=1e-10
        )


def test_alignment_of_dfa_uses_the_weight_products():
    with jax.enable_x64(True):
        net = MLP((5, 4, 6, 3), "identity")
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        x, y = _batch(5, 3, dtype=jnp.float64)
        m = feedback.alignment(net, params, _products(params), x, y, DFA)
        np.testing.assert_allclose(m["update_angle"], 0.0, atol=1e-5)
        np.testing.assert_allclose(m["feedback_angle"][1:], 0.0, atol=1e-5)


def test_alignment_of_sign_symmetry_on_a_sequential():
    net = Sequential(
        [Dense(8), Activation("tanh"), Dense(8), Activation("tanh"), Dense(3)], (5,)
    )
    params = net.init(jax.random.key(0))
    x, y = _batch(5, 3, n=16)
    m = feedback.alignment(net, params, None, x, y, SS)
    assert m["update_angle"].shape == (3,)
    assert float(m["update_angle"][-1]) < 1e-2
    # sign(W) points within 45 degrees of W.
    assert math.isnan(m["feedback_angle"][0])
    assert np.all(np.asarray(m["feedback_angle"][1:]) < 45)
