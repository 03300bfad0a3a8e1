"""The MLP spec: construction, init, forward, loss, input checks and gradients."""

import dataclasses
import doctest
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads, check_vjp

import jaxbp
from jaxbp import mlp
from jaxbp.activations import ACTIVATIONS
from jaxbp.backward import forward_pass
from jaxbp.losses import LOSSES

ACTS = sorted(ACTIVATIONS)
LOSS_NAMES = sorted(LOSSES)
DTYPES = ["float32", "float64"]
# A few fixed shapes, reused everywhere, so that compiled ops are shared between tests.
SIZES = {1: (6, 4), 2: (6, 5, 4), 3: (6, 5, 5, 4), 4: (6, 5, 5, 5, 4)}
BATCH = 7
# manual vs jax.grad: max relative error (compare_grads, with its default_tiny floor)
MAX_REL = {"float64": 1e-10, "float32": 1e-4}
# chex.assert_trees_all_close tolerances: relative plus a small absolute floor for
# entries that are zero up to rounding of larger terms.
CLOSE = {
    "float64": {"rtol": 1e-9, "atol": 1e-13},
    "float32": {"rtol": 1e-4, "atol": 1e-6},
}


# --- helpers
def _params(net, dtype, seed=0):
    """Random parameters with small random biases, so that bias gradients count.

    Drawn with NumPy rather than ``net.init``: ``jax.random`` compiles a program per
    shape and dtype, which would dominate the run time of the sweeps below.
    """
    rng = np.random.default_rng(seed)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=n), dtype),
        }
        for m, n in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    ]


def _batch(net, dtype, batch, targets, seed=0):
    """Inputs and targets of one kind: ``labels``, ``onehot``, ``soft`` or ``float``."""
    rng = np.random.default_rng(seed)
    n_in, n_out = net.sizes[0], net.sizes[-1]
    x = jnp.asarray(rng.normal(size=(batch, n_in)), dtype)
    labels = rng.integers(0, n_out, size=batch)
    if targets == "labels":
        y = jnp.asarray(labels, jnp.int32)
    elif targets == "onehot":
        y = jnp.asarray(np.eye(n_out)[labels], dtype)
    elif targets == "soft":
        e = np.exp(rng.normal(size=(batch, n_out)))
        y = jnp.asarray(e / e.sum(axis=1, keepdims=True), dtype)
    else:
        y = jnp.asarray(rng.uniform(0.05, 0.95, size=(batch, n_out)), dtype)
    return x, y


def _assert_manual_equals_autodiff(net, params, x, y, dtype):
    value, manual = net.value_and_manual_grad(params, x, y)
    auto_value, auto = jax.value_and_grad(net.loss)(params, x, y)
    chex.assert_trees_all_equal_shapes_and_dtypes(manual, params)
    comparison = jaxbp.compare_grads(manual, auto, names=("manual", "jax.grad"))
    assert comparison.dtype == dtype
    assert comparison.max_rel < MAX_REL[dtype], str(comparison)
    chex.assert_trees_all_close(manual, auto, **CLOSE[dtype])
    chex.assert_trees_all_close(value, auto_value, **CLOSE[dtype])


# --- spec
def test_spec_is_frozen_and_hashable():
    net = jaxbp.MLP((6, 5, 4), activation="tanh")
    same = jaxbp.MLP([6, 5, 4], activation="tanh")
    assert net == same and hash(net) == hash(same)
    assert net != jaxbp.MLP((6, 5, 4), activation="relu")
    assert {net: 1}[same] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.activation = "relu"


def test_sizes_list_coerced_to_tuple():
    net = jaxbp.MLP([6, np.int64(5), 4])
    assert net.sizes == (6, 5, 4)
    assert isinstance(net.sizes, tuple)
    assert all(type(s) is int for s in net.sizes)
    hash(net)


def test_spec_as_jit_static_argument():
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def forward(net, params, x):
        traces.append(net)
        return net.forward(params, x)

    net = jaxbp.MLP((6, 5, 4), activation="tanh")
    params = _params(net, "float32")
    x, _ = _batch(net, "float32", BATCH, "labels")
    out = forward(net, params, x)
    forward(jaxbp.MLP([6, 5, 4], activation="tanh"), params, x)  # equal spec: cached
    assert len(traces) == 1
    np.testing.assert_allclose(out, net.forward(params, x), rtol=1e-6)
    forward(jaxbp.MLP((6, 5, 4), activation="relu"), params, x)  # new spec: retraced
    assert len(traces) == 2


def test_defaults_and_properties():
    net = jaxbp.MLP((6, 5, 4))
    assert net.activation == "sigmoid"
    assert net.output_activation == "identity"
    assert net.objective == "softmax_cross_entropy"
    assert net.depth == 2
    assert net.hidden is ACTIVATIONS["sigmoid"]
    assert net.output is ACTIVATIONS["identity"]
    assert net.loss_fn is LOSSES["softmax_cross_entropy"]
    assert str(net) == "MLP(6-5-4, sigmoid/identity, softmax_cross_entropy)"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sizes": (5,)}, ValueError, "at least an input and an output"),
        ({"sizes": ()}, ValueError, "at least an input and an output"),
        ({"sizes": (5, 0, 3)}, ValueError, "sizes must be positive"),
        ({"sizes": (5, -2, 3)}, ValueError, "sizes must be positive"),
        ({"sizes": (5, 2.0, 3)}, ValueError, "sizes must be integers"),
        ({"sizes": (5, True, 3)}, ValueError, "sizes must be integers"),
        (
            {"sizes": (5, 3), "activation": "swish"},
            ValueError,
            "unknown activation 'swish'",
        ),
        (
            {"sizes": (5, 3), "output_activation": "softmax"},
            ValueError,
            "unknown activation 'softmax'",
        ),
        ({"sizes": (5, 3), "objective": "hinge"}, ValueError, "unknown loss 'hinge'"),
        (
            {"sizes": (5, 3), "output_activation": "sigmoid"},
            ValueError,
            r"requires output_activation='identity', got 'sigmoid'",
        ),
    ],
)
def test_spec_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxbp.MLP(**kwargs)


@pytest.mark.parametrize("output", [a for a in ACTS if a != "identity"])
def test_softmax_cross_entropy_needs_identity_output(output):
    with pytest.raises(ValueError, match="requires output_activation='identity'"):
        jaxbp.MLP((5, 3), output_activation=output, objective="softmax_cross_entropy")
    for objective in ("half_sse", "mse"):
        jaxbp.MLP((5, 3), output_activation=output, objective=objective)


# --- params
@pytest.fixture(scope="module")
def mnist_net():
    """The 784-100-10 sigmoid network and its parameters, drawn once per module."""
    net = jaxbp.MLP((784, 100, 10), activation="sigmoid")
    return net, net.init(jax.random.key(0))


def test_num_params_784_100_10(mnist_net):
    net, params = mnist_net
    assert net.num_params == 79_510
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 79_510
    assert len(jax.tree.leaves(params)) == 4


@pytest.mark.parametrize("depth", sorted(SIZES))
def test_num_params_matches_init(depth):
    net = jaxbp.MLP(SIZES[depth])
    params = net.init(jax.random.key(0))
    assert net.num_params == sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("depth", sorted(SIZES))
def test_init_structure(depth, activation):
    net = jaxbp.MLP(SIZES[depth], activation=activation)
    params = net.init(jax.random.key(1))
    assert type(params) is list and len(params) == depth
    for layer, fan_in, fan_out in zip(
        params, net.sizes[:-1], net.sizes[1:], strict=True
    ):
        assert type(layer) is dict and set(layer) == {"w", "b"}
        assert layer["w"].shape == (fan_in, fan_out)
        assert layer["b"].shape == (fan_out,)
        assert layer["w"].dtype == layer["b"].dtype == jnp.float32
        np.testing.assert_array_equal(layer["b"], 0)
    net.check_params(params)


def test_init_float64():
    net = jaxbp.MLP((6, 5, 4))
    with jax.enable_x64(True):
        params = net.init(jax.random.key(0), dtype=jnp.float64)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
        net.check_params(params)


def test_init_deterministic_in_key():
    net = jaxbp.MLP((6, 5, 4))
    chex.assert_trees_all_equal(
        net.init(jax.random.key(3)), net.init(jax.random.key(3))
    )
    a, b = net.init(jax.random.key(3)), net.init(jax.random.key(4))
    assert not np.array_equal(a[0]["w"], b[0]["w"])
    # the layers get different keys
    c = jaxbp.MLP((5, 5, 5)).init(jax.random.key(0))
    assert not np.array_equal(c[0]["w"], c[1]["w"])


def test_init_scales(mnist_net):
    # Glorot uniform for sigmoid/tanh/identity: |w| <= sqrt(6 / (fan_in + fan_out)).
    w = mnist_net[1][0]["w"]
    limit = np.sqrt(6 / (784 + 100))
    assert float(jnp.max(jnp.abs(w))) <= limit
    assert float(jnp.max(jnp.abs(w))) > 0.95 * limit
    # He normal for the ReLU family: std = sqrt(2 / fan_in).
    w = jaxbp.MLP((784, 100, 10), activation="relu").init(jax.random.key(0))[0]["w"]
    assert float(jnp.std(w)) == pytest.approx(np.sqrt(2 / 784), rel=0.02)


# --- forward
def _reference_forward(net, params, x):
    a = np.asarray(x, np.float64)
    for l, layer in enumerate(params):
        z = a @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        act = net.output if l == net.depth - 1 else net.hidden
        a = np.asarray(act.fn(jnp.asarray(z)), np.float64)
    return a


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "gelu"])
@pytest.mark.parametrize("depth", [1, 3])
def test_forward(depth, activation):
    net = jaxbp.MLP(
        SIZES[depth], activation=activation, output_activation="tanh", objective="mse"
    )
    params = _params(net, "float32")
    x, _ = _batch(net, "float32", BATCH, "labels")
    out = net.forward(params, x)
    assert out.shape == (BATCH, net.sizes[-1]) and out.dtype == jnp.float32
    np.testing.assert_allclose(
        out, _reference_forward(net, params, x), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(
        out, forward_pass(params, x, net.hidden, net.output).a[-1]
    )


def test_forward_casts_x_to_param_dtype():
    net = jaxbp.MLP((6, 5, 4))
    params = _params(net, "float32")
    x, _ = _batch(net, "float32", BATCH, "labels")
    out = net.forward(params, x.astype(jnp.float16))
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("objective", LOSS_NAMES)
def test_loss_is_mean_of_per_example_loss(objective, dtype):
    net = jaxbp.MLP((6, 5, 4), activation="tanh", objective=objective)
    with jax.enable_x64(dtype == "float64"):
        params = _params(net, dtype)
        x, labels = _batch(net, dtype, BATCH, "labels")
        onehot = jax.nn.one_hot(labels, 4, dtype=dtype)
        per = net.per_example_loss(params, x, labels)
        assert per.shape == (BATCH,) and per.dtype == jnp.dtype(dtype)
        value = net.loss(params, x, labels)
        assert value.shape == () and value.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(value, jnp.mean(per), rtol=1e-12)
        # integer labels mean exactly the one-hot targets
        np.testing.assert_array_equal(value, net.loss(params, x, onehot))
        expected = net.loss_fn.value(net.forward(params, x), onehot)
        np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_mse_loss_matches_torch_convention():
    net = jaxbp.MLP((6, 5, 4), activation="tanh", objective="mse")
    params = _params(net, "float32")
    x, y = _batch(net, "float32", BATCH, "float")
    out = np.asarray(net.forward(params, x), np.float64)
    expected = np.mean((out - np.asarray(y, np.float64)) ** 2)  # torch.nn.MSELoss()
    assert float(net.loss(params, x, y)) == pytest.approx(expected, rel=1e-5)


# --- errors
def test_x_with_783_features(mnist_net):
    net, params = mnist_net
    x = jnp.zeros((3, 783))
    msg = "x has 783 features but the first layer expects 784"
    with pytest.raises(ValueError, match=msg):
        net.forward(params, x)
    with pytest.raises(ValueError, match=msg):
        net.loss(params, x, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=msg):
        net.manual_grad(params, x, jnp.zeros(3, jnp.int32))


def test_x_not_a_batch(mnist_net):
    net, params = mnist_net
    with pytest.raises(ValueError, match=r"x must be a 2-D batch \(batch, 784\)"):
        net.forward(params, jnp.zeros(784))


def test_int_x(mnist_net):
    net, params = mnist_net
    with pytest.raises(
        TypeError, match="x has dtype uint8; inputs must be floating point"
    ):
        net.forward(params, jnp.zeros((3, 784), jnp.uint8))
    with pytest.raises(TypeError, match="inputs must be floating point"):
        net.manual_grad(params, jnp.zeros((3, 784), jnp.int32), jnp.zeros(3, jnp.int32))


def test_wrong_param_shapes(mnist_net):
    net, params = mnist_net
    x = jnp.zeros((3, 784))
    bad = [dict(params[0]), params[1]]
    bad[0]["w"] = params[0]["w"].T
    with pytest.raises(
        ValueError,
        match=(
            r"params\[0\]\['w'\] has shape \(100, 784\) but layer 0 of "
            r"MLP\(784-100-10.*\) expects \(784, 100\)"
        ),
    ):
        net.forward(bad, x)
    bad = [params[0], {"w": params[1]["w"], "b": jnp.zeros(9)}]
    with pytest.raises(ValueError, match=r"params\[1\]\['b'\] has shape \(9,\)"):
        net.manual_grad(bad, x, jnp.zeros(3, jnp.int32))


def test_wrong_number_of_layers(mnist_net):
    net, params = mnist_net
    with pytest.raises(ValueError, match="params has 1 layers but .* has 2"):
        net.forward(params[:1], jnp.zeros((3, 784)))
    with pytest.raises(ValueError, match="params has 3 layers"):
        net.forward([*params, params[1]], jnp.zeros((3, 784)))


@pytest.mark.parametrize("make_bad", [dict, lambda p: p[0], lambda p: None])
def test_params_not_a_list(mnist_net, make_bad):
    net, params = mnist_net
    bad = make_bad(enumerate(params)) if make_bad is dict else make_bad(params)
    with pytest.raises(TypeError, match="params must be a list of {'w', 'b'} dicts"):
        net.forward(bad, jnp.zeros((3, 784)))


def test_layer_not_a_w_b_dict(mnist_net):
    net, params = mnist_net
    with pytest.raises(
        TypeError, match=r"params\[1\] must be a dict with keys 'w' and 'b'"
    ):
        net.forward([params[0], {"w": params[1]["w"]}], jnp.zeros((3, 784)))
    with pytest.raises(TypeError, match=r"params\[0\] must be a dict.*got tuple"):
        net.forward([(params[0]["w"], params[0]["b"]), params[1]], jnp.zeros((3, 784)))


def test_int_params(mnist_net):
    net, params = mnist_net
    bad = [params[0], {"w": params[1]["w"].astype(jnp.int32), "b": params[1]["b"]}]
    with pytest.raises(TypeError, match=r"params\[1\]\['w'\] has dtype int32"):
        net.forward(bad, jnp.zeros((3, 784)))


def test_mixed_param_dtypes(mnist_net):
    net, params = mnist_net
    bad = [params[0], {"w": params[1]["w"], "b": params[1]["b"].astype(jnp.bfloat16)}]
    with pytest.raises(TypeError, match="bfloat16 but earlier parameters are float32"):
        net.forward(bad, jnp.zeros((3, 784)))
    with jax.enable_x64(True):
        bad = [params[0], jax.tree.map(lambda t: t.astype(jnp.float64), params[1])]
        with pytest.raises(TypeError, match="use one dtype throughout"):
            net.manual_grad(bad, jnp.zeros((3, 784)), jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize(("label", "shown"), [(10, "10"), (-1, "-1"), (99, "99")])
def test_labels_out_of_range(mnist_net, label, shown):
    net, params = mnist_net
    y = jnp.asarray([0, label, 9], jnp.int32)
    msg = rf"label {shown} is out of range: labels must be in \[0, 9\] for 10 outputs"
    with pytest.raises(ValueError, match=msg):
        net.loss(params, jnp.zeros((3, 784)), y)
    with pytest.raises(ValueError, match=msg):
        net.manual_grad(params, jnp.zeros((3, 784)), y)


def test_labels_in_range_edges(mnist_net):
    net, params = mnist_net
    net.loss(params, jnp.zeros((2, 784)), jnp.asarray([0, 9]))


def test_float_labels_of_shape_batch(mnist_net):
    net, params = mnist_net
    with pytest.raises(
        TypeError, match=r"must hold integer class labels, got dtype float32"
    ):
        net.loss(params, jnp.zeros((3, 784)), jnp.asarray([0.0, 1.0, 2.0]))


def test_y_batch_mismatch(mnist_net):
    net, params = mnist_net
    with pytest.raises(ValueError, match="y has batch size 4 but x has 3"):
        net.loss(params, jnp.zeros((3, 784)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="y has batch size 2 but x has 3"):
        net.manual_grad(params, jnp.zeros((3, 784)), jnp.zeros((2, 10)))


def test_one_hot_width_mismatch(mnist_net):
    net, params = mnist_net
    with pytest.raises(
        ValueError, match="y has 9 columns but the last layer has 10 outputs"
    ):
        net.loss(params, jnp.zeros((3, 784)), jnp.zeros((3, 9)))


def test_int_targets_of_shape_batch_outputs(mnist_net):
    net, params = mnist_net
    with pytest.raises(
        TypeError, match="float targets y must be floating point, got int32"
    ):
        net.loss(params, jnp.zeros((3, 784)), jnp.zeros((3, 10), jnp.int32))


def test_y_of_wrong_rank(mnist_net):
    net, params = mnist_net
    with pytest.raises(ValueError, match=r"y must be labels \(batch,\) or targets"):
        net.loss(params, jnp.zeros((3, 784)), jnp.zeros((3, 10, 1)))


def test_labels_under_jit_are_shape_checked_only(mnist_net):
    net, params = mnist_net
    loss = jax.jit(net.loss)
    assert np.isfinite(float(loss(params, jnp.zeros((3, 784)), jnp.asarray([0, 1, 2]))))
    with pytest.raises(ValueError, match="y has batch size 4 but x has 3"):
        loss(params, jnp.zeros((3, 784)), jnp.zeros(4, jnp.int32))


# --- worked example
# A 2-2-2 sigmoid network with half the sum of squared errors, as worked by hand in
# backpropagation tutorials: every number below is to 8 decimal places.
_WORKED = {
    "h1": 0.51998934,
    "o1": 0.60944600,
    "o2": 0.66384491,
    "loss": 0.02397190,
    "dE/dW5": 0.02592286,
    "W5 updated": 0.43703857,
}


@pytest.mark.parametrize("grad_fn", ["manual_grad", "jax.grad"])
def test_worked_example(grad_fn):
    net = jaxbp.MLP(
        (2, 2, 2),
        activation="sigmoid",
        output_activation="sigmoid",
        objective="half_sse",
    )
    lr = 0.5
    with jax.enable_x64(True):
        params = [
            # z1 = 0.3 x1 + 0.25 x2, z2 = 0.4 x1 + 0.35 x2
            {"w": jnp.array([[0.3, 0.4], [0.25, 0.35]]), "b": jnp.zeros(2)},
            # z3 = 0.45 h1 + 0.4 h2, z4 = 0.7 h1 + 0.6 h2; W5 is w[1][0, 0]
            {"w": jnp.array([[0.45, 0.7], [0.4, 0.6]]), "b": jnp.zeros(2)},
        ]
        x = jnp.array([[0.1, 0.2]])
        y = jnp.array([[0.4, 0.6]])
        assert params[1]["w"].dtype == jnp.float64
        cache = forward_pass(params, x, net.hidden, net.output)
        out = net.forward(params, x)
        loss = net.loss(params, x, y)
        if grad_fn == "manual_grad":
            grads = net.manual_grad(params, x, y)
        else:
            grads = jax.grad(net.loss)(params, x, y)
        updated = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        got = {
            "h1": float(cache.a[1][0, 0]),
            "o1": float(out[0, 0]),
            "o2": float(out[0, 1]),
            "loss": float(loss),
            "dE/dW5": float(grads[1]["w"][0, 0]),
            "W5 updated": float(updated[1]["w"][0, 0]),
        }
    for name, expected in _WORKED.items():
        assert abs(got[name] - expected) < 5e-9, (name, got[name], expected)


# --- manual == jax.grad
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("depth", sorted(SIZES))
@pytest.mark.parametrize("activation", ACTS)
def test_manual_grad_every_hidden_activation_and_depth(activation, depth, dtype):
    net = jaxbp.MLP(SIZES[depth], activation=activation)
    with jax.enable_x64(dtype == "float64"):
        params = _params(net, dtype)
        x, y = _batch(net, dtype, BATCH, "labels")
        _assert_manual_equals_autodiff(net, params, x, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("objective", ["half_sse", "mse"])
@pytest.mark.parametrize("output", ACTS)
def test_manual_grad_every_output_activation(output, objective, dtype):
    net = jaxbp.MLP(
        SIZES[2], activation="tanh", output_activation=output, objective=objective
    )
    with jax.enable_x64(dtype == "float64"):
        params = _params(net, dtype)
        x, y = _batch(net, dtype, BATCH, "float")
        _assert_manual_equals_autodiff(net, params, x, y, dtype)


# Integer labels everywhere; one-hot and soft (normalised) targets for the
# cross-entropy; arbitrary float targets for the squared errors.
_LOSS_TARGETS = [
    ("softmax_cross_entropy", "labels"),
    ("softmax_cross_entropy", "onehot"),
    ("softmax_cross_entropy", "soft"),
    ("half_sse", "labels"),
    ("half_sse", "float"),
    ("mse", "labels"),
    ("mse", "float"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7, 32])
@pytest.mark.parametrize(("objective", "targets"), _LOSS_TARGETS)
def test_manual_grad_every_loss_batch_and_target(objective, targets, batch, dtype):
    net = jaxbp.MLP(SIZES[2], activation="tanh", objective=objective)
    with jax.enable_x64(dtype == "float64"):
        params = _params(net, dtype, seed=batch)
        x, y = _batch(net, dtype, batch, targets, seed=batch)
        _assert_manual_equals_autodiff(net, params, x, y, dtype)


def test_manual_grad_with_dead_relu_layer():
    # A layer with every pre-activation <= 0: relu'(0) = 0 on both sides, and the
    # gradients of the layers below are exactly zero.
    net = jaxbp.MLP(SIZES[3], activation="relu")
    params = _params(net, "float32")
    params[1] = {
        "w": jnp.zeros_like(params[1]["w"]),
        "b": -jnp.ones_like(params[1]["b"]),
    }
    x, y = _batch(net, "float32", BATCH, "labels")
    manual = net.manual_grad(params, x, y)
    chex.assert_trees_all_close(
        manual, jax.grad(net.loss)(params, x, y), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_array_equal(manual[0]["w"], 0)
    np.testing.assert_array_equal(manual[1]["w"], 0)


@pytest.mark.parametrize("activation", ["elu", "relu", "leaky_relu"])
def test_manual_grad_with_zero_pre_activations(activation):
    # Zero weights and biases in the first layer put every z_1 exactly at 0, the kink.
    net = jaxbp.MLP(SIZES[2], activation=activation)
    params = _params(net, "float32")
    params[0] = jax.tree.map(jnp.zeros_like, params[0])
    x, y = _batch(net, "float32", BATCH, "labels")
    chex.assert_trees_all_close(
        net.manual_grad(params, x, y),
        jax.grad(net.loss)(params, x, y),
        rtol=1e-5,
        atol=1e-7,
    )


def test_manual_grad_under_jit():
    net = jaxbp.MLP(SIZES[3], activation="gelu")
    params = _params(net, "float32")
    x, y = _batch(net, "float32", BATCH, "labels")
    jitted = jax.jit(net.manual_grad)(params, x, y)
    chex.assert_trees_all_close(
        jitted, net.manual_grad(params, x, y), rtol=1e-5, atol=1e-7
    )
    chex.assert_trees_all_close(
        jitted, jax.grad(net.loss)(params, x, y), rtol=1e-4, atol=1e-6
    )


# --- custom_vjp
_VJP_NETS = [
    jaxbp.MLP(SIZES[1], activation="tanh", objective="softmax_cross_entropy"),
    jaxbp.MLP(
        SIZES[2],
        activation="sigmoid",
        output_activation="sigmoid",
        objective="half_sse",
    ),
    jaxbp.MLP(
        SIZES[3], activation="softplus", output_activation="tanh", objective="mse"
    ),
    jaxbp.MLP(SIZES[4], activation="gelu", objective="softmax_cross_entropy"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("net", _VJP_NETS, ids=str)
def test_loss_with_manual_vjp_grad(net, dtype):
    targets = "soft" if net.objective == "softmax_cross_entropy" else "float"
    with jax.enable_x64(dtype == "float64"):
        params = _params(net, dtype)
        x, y = _batch(net, dtype, BATCH, targets)
        np.testing.assert_allclose(
            net.loss_with_manual_vjp(params, x, y), net.loss(params, x, y), rtol=1e-12
        )
        via_vjp = jax.grad(net.loss_with_manual_vjp, argnums=(0, 1, 2))(params, x, y)
        auto = jax.grad(net.loss, argnums=(0, 1, 2))(params, x, y)
        chex.assert_trees_all_close(
            via_vjp[0], net.manual_grad(params, x, y), rtol=1e-12
        )
        chex.assert_trees_all_close(via_vjp, auto, **CLOSE[dtype])
        # integer labels: differentiate params and x only
        _, labels = _batch(net, dtype, BATCH, "labels")
        via_vjp = jax.grad(net.loss_with_manual_vjp, argnums=(0, 1))(params, x, labels)
        auto = jax.grad(net.loss, argnums=(0, 1))(params, x, labels)
        chex.assert_trees_all_close(via_vjp, auto, **CLOSE[dtype])


@pytest.mark.parametrize("net", _VJP_NETS, ids=str)
def test_loss_with_manual_vjp_check_grads(net):
    targets = "soft" if net.objective == "softmax_cross_entropy" else "float"
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float64", BATCH, targets)
        args = (params, x, y)
        check_grads(net.loss_with_manual_vjp, args, order=1, modes=["rev"])
        f = net.loss_with_manual_vjp
        check_vjp(f, functools.partial(jax.vjp, f), args)
        # with integer labels, w.r.t. params and x
        _, labels = _batch(net, "float64", BATCH, "labels")

        def g(p, xx):
            return net.loss_with_manual_vjp(p, xx, labels)

        check_grads(g, (params, x), order=1, modes=["rev"])


def test_loss_with_manual_vjp_cotangent_scales():
    net = _VJP_NETS[1]
    params = _params(net, "float32")
    x, y = _batch(net, "float32", BATCH, "float")
    value, vjp = jax.vjp(net.loss_with_manual_vjp, params, x, y)
    grads, dx, dy = vjp(jnp.asarray(3.0, value.dtype))
    chex.assert_trees_all_close(
        grads, jax.tree.map(lambda g: 3 * g, net.manual_grad(params, x, y)), rtol=1e-6
    )
    assert dx.shape == x.shape and dy.shape == y.shape


def test_doctests():
    result = doctest.testmod(mlp)
    assert result.attempted > 0
    assert result.failed == 0
