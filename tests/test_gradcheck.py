"""gradcheck: any gradient of any pytree against jax.grad and finite differences."""

import dataclasses
import inspect
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp import finite_differences as fdiff
from jaxbp.activations import ACTIVATIONS, Activation
from jaxbp.gradcheck.network import MANUAL_NAME
from jaxbp.gradcheck.report import AUTO_NAME, FD_NAME, GRAD_RTOL, default_tiny

SIZES = {1: (6, 4), 2: (6, 5, 4), 3: (6, 5, 5, 4)}
BATCH = 7


def _params(net, dtype="float32", seed=0):
    """Random parameters (NumPy-drawn, so no ``jax.random`` compiles) with biases."""
    rng = np.random.default_rng(seed)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=n), dtype),
        }
        for m, n in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    ]


def _batch(net, targets="labels", dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(BATCH, net.sizes[0])), dtype)
    if targets == "labels":
        return x, jnp.asarray(rng.integers(0, net.sizes[-1], size=BATCH), jnp.int32)
    return x, jnp.asarray(rng.uniform(0.05, 0.95, size=(BATCH, net.sizes[-1])), dtype)


# --- a small non-MLP function: logistic regression with L2 over a dict ------------
LAM = 0.1


def logreg_loss(p, x, y):
    """Mean logistic loss of ``x @ w + b`` with labels in {0, 1}, plus L2 on ``w``."""
    z = x @ p["w"] + p["b"]
    return jnp.mean(jax.nn.softplus(z) - y * z) + 0.5 * LAM * jnp.sum(p["w"] ** 2)


def logreg_grad(p, x, y):
    r = (jax.nn.sigmoid(x @ p["w"] + p["b"]) - y) / x.shape[0]  # dL/dz
    return {"w": x.T @ r + LAM * p["w"], "b": jnp.sum(r)}


def _logreg(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    p = {
        "w": jnp.asarray(rng.normal(size=5), dtype),
        "b": jnp.asarray(0.3, dtype),
    }
    x = jnp.asarray(rng.normal(size=(8, 5)), dtype)
    y = jnp.asarray(rng.integers(0, 2, size=8), dtype)
    return p, x, y


def test_tolerances():
    assert GRAD_RTOL["float64"] == 1e-10
    assert GRAD_RTOL["float32"] == 1e-4
    assert set(GRAD_RTOL) == {"float64", "float32", "bfloat16", "float16"}


# --- check_grad: passing ----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_grad_passes_on_a_correct_gradient(dtype):
    with jax.enable_x64(dtype == "float64"):
        p, x, y = _logreg(dtype)
        report = jaxbp.check_grad(logreg_loss, logreg_grad, p, x, y)
    assert report.passed, str(report)
    assert [(c.left, c.right) for c in report.comparisons] == [
        ("grad_fun", AUTO_NAME),
        ("grad_fun", FD_NAME),
        (AUTO_NAME, FD_NAME),
    ]
    assert [c.dtype for c in report.comparisons] == [dtype, "float64", "float64"]
    for comparison in report.comparisons:
        assert [leaf.path for leaf in comparison.leaves] == ["['b']", "['w']"]
        assert [leaf.shape for leaf in comparison.leaves] == [(), (5,)]
        assert all(leaf.checked == leaf.size for leaf in comparison.leaves)
        assert all(leaf.verdict == "PASS" for leaf in comparison.leaves)
    text = str(report)
    assert "every coordinate (6 of 6)" in text
    for word in ("leaf", "shape", "max abs", "max rel", "worst at", "tol", "err/tol"):
        assert word in text
    assert text.endswith("PASS: all comparisons pass")
    jaxbp.assert_grad_matches(logreg_loss, logreg_grad, p, x, y)


class Pair(NamedTuple):
    first: jax.Array
    second: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Layer:
    w: jax.Array
    b: jax.Array


def _tree_kinds():
    """One pytree of every kind (and its leaf paths), with a None leaf."""
    rng = np.random.default_rng(1)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {
        "dict": {"enc": {"w": arr(3, 2)}, "dec": arr(2)},
        "list": [arr(3), arr(2, 2)],
        "tuple": (arr(4), (arr(1), arr(2))),
        "namedtuple": Pair(arr(3), arr(2)),
        "dataclass": Layer(arr(2, 3), arr(3)),
        "none": {"w": arr(3), "frozen": None},
    }


def _quartic(p):
    """A smooth scalar of any pytree: sum of x^2/2 + x^4/4 + sin x over its leaves."""
    return sum(jnp.sum(t**2 / 2 + t**4 / 4 + jnp.sin(t)) for t in jax.tree.leaves(p))


def _quartic_grad(p):
    return jax.tree.map(lambda t: t + t**3 + jnp.cos(t), p)


@pytest.mark.parametrize("kind", list(_tree_kinds()))
def test_check_grad_any_pytree(kind):
    params = _tree_kinds()[kind]
    report = jaxbp.check_grad(_quartic, _quartic_grad, params)
    assert report.passed, str(report)
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)
    ]
    for comparison in report.comparisons:
        assert [leaf.path for leaf in comparison.leaves] == paths

    # A wrong entry in the last leaf is found there, named by its key path.
    def wrong(p):
        g = _quartic_grad(p)
        leaves, treedef = jax.tree.flatten(g)
        leaves[-1] = leaves[-1].ravel().at[0].add(0.5).reshape(leaves[-1].shape)
        return jax.tree.unflatten(treedef, leaves)

    report = jaxbp.check_grad(_quartic, wrong, params)
    assert not report.passed
    for comparison in report.comparisons[:2]:
        assert [leaf.passed for leaf in comparison.leaves] == [True] * (
            len(paths) - 1
        ) + [False]
    assert report.comparisons[2].passed  # jax.grad against finite differences
    assert f"leaves where grad_fun is wrong: {paths[-1]}" in str(report)


def test_none_leaves_and_paths():
    params = _tree_kinds()["none"]
    report = jaxbp.check_grad(_quartic, _quartic_grad, params)
    assert [leaf.path for leaf in report.comparisons[0].leaves] == ["['w']"]


# --- check_grad: failing ----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_grad_fails_on_a_wrong_gradient(dtype):
    def wrong(p, x, y):  # the L2 term's factor forgotten: lam/2 |w|^2 -> lam/2 w
        g = logreg_grad(p, x, y)
        return {"w": g["w"] - 0.5 * LAM * p["w"], "b": g["b"]}

    with jax.enable_x64(dtype == "float64"):
        p, x, y = _logreg(dtype)
        report = jaxbp.check_grad(logreg_loss, wrong, p, x, y)
        wrong_w = np.asarray(wrong(p, x, y)["w"])
    assert not report.passed
    user_auto, user_fd, auto_fd = report.comparisons
    assert auto_fd.passed
    for comparison in (user_auto, user_fd):
        assert {leaf.path: leaf.verdict for leaf in comparison.leaves} == {
            "['b']": "PASS",
            "['w']": "FAIL",
        }
    row = user_fd.leaves[1]
    assert row.ratio > 100 and row.failures == 5
    assert row.left_value == pytest.approx(float(wrong_w[row.worst]))
    text = str(report)
    assert "far beyond what finite differences can explain" in text
    assert "leaves where grad_fun is wrong: ['w']" in text
    assert text.endswith("FAIL: 2 of 3 comparisons fail")
    with jax.enable_x64(dtype == "float64"):
        with pytest.raises(AssertionError, match="gradients disagree") as info:
            jaxbp.assert_grad_matches(logreg_loss, wrong, p, x, y)
    assert "grad_fun vs jax.grad" in str(info.value)
    assert "['w']" in str(info.value)


def test_structure_and_shape_errors_name_the_leaf():
    p, x, y = _logreg()
    with pytest.raises(ValueError, match=r"missing leaves \['b'\]"):
        jaxbp.check_grad(logreg_loss, lambda p, x, y: {"w": p["w"]}, p, x, y)
    with pytest.raises(ValueError, match=r"unexpected leaves \['bias'\]"):
        jaxbp.check_grad(
            logreg_loss,
            lambda p, x, y: {"w": p["w"], "b": p["b"], "bias": 0.0},
            p,
            x,
            y,
        )
    with pytest.raises(ValueError, match=r"\['w'\]: \(1, 5\) instead of \(5,\)"):
        jaxbp.check_grad(
            logreg_loss,
            lambda p, x, y: {"w": p["w"][None, :], "b": p["b"]},
            p,
            x,
            y,
        )
    with pytest.raises(ValueError, match="structure"):
        jaxbp.check_grad(_quartic, lambda q: list(_quartic_grad(q)), (p["w"], p["b"]))
    with pytest.raises(TypeError, match=r"params leaf \['n'\] has dtype int32"):
        jaxbp.check_grad(_quartic, _quartic_grad, {"n": jnp.arange(3)})
    with pytest.raises(ValueError, match="must return a scalar, got shape"):
        jaxbp.check_grad(lambda p: p["w"] * 2, lambda p: p, {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="fd must be one of"):
        jaxbp.check_grad(_quartic, _quartic_grad, {"w": jnp.ones(3)}, fd="every")
    with pytest.raises(ValueError, match="no array leaves"):
        jaxbp.check_grad(_quartic, _quartic_grad, {"w": None})


def test_mlp_shape_error_names_the_layer():
    net = jaxbp.MLP(SIZES[2])
    params = _params(net)
    x, y = _batch(net)

    def transposed(p, x, y):
        g = net.manual_grad(p, x, y)
        return [g[0], {"w": g[1]["w"].T, "b": g[1]["b"]}]

    with pytest.raises(ValueError, match=r"\[1\]\['w'\] \(layer 2 of 2\): \(4, 5\)"):
        jaxbp.check_network_grad(net, params, x, y, grad_fun=transposed)


# --- dtypes -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_has_its_own_tolerances(dtype):
    p, x, y = _logreg(dtype)
    report = jaxbp.check_grad(logreg_loss, logreg_grad, p, x, y)
    assert report.passed, str(report)
    assert report.comparisons[0].dtype == dtype
    assert report.comparisons[0].leaves[0].rtol == GRAD_RTOL[dtype]
    assert report.comparisons[1].dtype == "float64"  # finite differences still float64

    def doubled(p, x, y):
        return jax.tree.map(lambda g: 2 * g, logreg_grad(p, x, y))

    assert not jaxbp.check_grad(logreg_loss, doubled, p, x, y).passed
    # float32 params checked in a half-precision dtype, asked for explicitly
    p32, x32, y32 = _logreg("float32")
    report = jaxbp.check_grad(logreg_loss, logreg_grad, p32, x32, y32, dtype=dtype)
    assert report.passed and report.comparisons[0].dtype == dtype
    assert default_tiny(dtype, 1.0) > 0  # no numpy finfo error for bfloat16


def test_bad_dtype_option_is_refused():
    p, x, y = _logreg()
    with pytest.raises(ValueError, match="dtype must be one of"):
        jaxbp.check_grad(logreg_loss, logreg_grad, p, x, y, dtype="int32")
    with pytest.raises(ValueError, match="fd_dtype must be one of"):
        jaxbp.check_grad(logreg_loss, logreg_grad, p, x, y, fd_dtype="complex64")


def test_float32_finite_differences_do_not_fail_on_rounding_noise():
    # A loss far from zero (|f| ~ 100) whose gradient is ~1: float32 rounding of f
    # alone is ~1e-5, ~1e-2 of a quotient at h = 1e-3; the budget allows for it.
    rng = np.random.default_rng(0)
    c = jnp.asarray(rng.normal(size=(50,)), jnp.float32)

    def fun(p):
        return 100.0 + jnp.sum(c * p["w"] + 0.5 * p["w"] ** 2)

    def grad(p):
        return {"w": c + p["w"]}

    p = {"w": jnp.asarray(rng.normal(size=(50,)), jnp.float32)}
    report = jaxbp.check_grad(fun, grad, p, fd_dtype="float32")
    assert report.passed, str(report)
    # ... and a 20% error is still caught there
    bad = jaxbp.check_grad(
        fun, lambda p: {"w": 1.2 * grad(p)["w"]}, p, fd_dtype="float32"
    )
    assert not bad.comparisons[1].passed


# --- kinks ------------------------------------------------------------------------
def test_kink_inside_the_bracket_passes_outside_fails():
    # f = sum |p|: at p_0 = 0 every value in [-1, 1] is a subgradient.
    p = {"w": jnp.asarray([0.0, 0.5, -2.0], jnp.float32)}

    def fun(p):
        return jnp.sum(jnp.abs(p["w"]))

    def grad(value):
        return lambda p: {"w": jnp.asarray([value, 1.0, -1.0], jnp.float32)}

    for value in (0.0, 0.3, -1.0):
        report = jaxbp.check_grad(fun, grad(value), p)
        assert report.passed, str(report)
        row = report.comparisons[1].leaves[0]
        assert row.kinks == 1 and row.verdict == "kink"
        assert report.kinks == 1
        assert "accepted as subgradients" in str(report)
    for value in (1.5, -1.2):
        report = jaxbp.check_grad(fun, grad(value), p)
        assert not report.comparisons[1].passed
        assert "not smooth there: outside the bracket" in str(report)


@pytest.mark.parametrize("fd_dtype", ["float64", "float32"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_net_with_a_preactivation_at_zero_passes(dtype, fd_dtype):
    net = jaxbp.MLP(SIZES[2], activation="relu")
    params = [dict(layer, b=jnp.zeros_like(layer["b"])) for layer in _params(net)]
    x, y = _batch(net)
    x = x.at[0].set(0.0)  # example 0: every z_1 is exactly 0, on the ReLU's corner
    report = jaxbp.check_network_grad(net, params, x, y, dtype=dtype, fd_dtype=fd_dtype)
    assert report.passed, str(report)
    assert report.kinks > 0
    assert report.comparisons[1].leaves[0].path == "[0]['b']"
    assert report.comparisons[1].leaves[0].verdict == "kink"


# --- coverage: modes ------------------------------------------------------------------
def test_modes_and_coverage_text():
    net = jaxbp.MLP(SIZES[2], activation="tanh")
    params = _params(net)
    x, y = _batch(net)
    n = net.num_params
    report = jaxbp.check_network_grad(
        net, params, x, y, fd="sample", fd_samples=3, seed=1
    )
    assert report.passed, str(report)
    assert f"random sample of 12 of {n} coordinates" in str(report)
    for comparison in report.comparisons[1:]:
        assert [leaf.checked for leaf in comparison.leaves] == [3, 3, 3, 3]
        assert all(leaf.unit == "coordinates" for leaf in comparison.leaves)
    report = jaxbp.check_network_grad(
        net, params, x, y, fd="directions", fd_directions=5
    )
    assert report.passed, str(report)
    assert "5 random directions per leaf (20 directions over 4 leaves" in str(report)
    assert all(
        leaf.unit == "directions" and leaf.checked == 5
        for leaf in report.comparisons[1].leaves
    )
    assert "dir " in report.comparisons[1].table()
    report = jaxbp.check_network_grad(net, params, x, y, fd=None)
    assert len(report.comparisons) == 1 and report.passed
    # auto: every coordinate of a small function, a sample of a large one
    p, xx, yy = _logreg()
    report = jaxbp.check_grad(logreg_loss, logreg_grad, p, xx, yy, fd="all")
    assert "every coordinate (6 of 6)" in str(report)
    big = {"w": jnp.linspace(-1, 1, 5000)}
    report = jaxbp.check_grad(_quartic, _quartic_grad, big)
    assert "random sample of 64 of 5,000 coordinates" in str(report)


def test_directions_catch_a_single_wrong_entry():
    p = {"w": jnp.linspace(-1.0, 1.0, 40, dtype=jnp.float32)}

    def wrong(p):
        return {"w": _quartic_grad(p)["w"].at[7].add(0.05)}

    report = jaxbp.check_grad(_quartic, wrong, p, fd="directions", fd_directions=4)
    assert not report.comparisons[1].passed
    assert report.comparisons[2].passed


# --- the MLP layer ----------------------------------------------------------------
_GOOD = [
    (jaxbp.MLP(SIZES[1], activation="tanh"), "labels", "float32"),
    (jaxbp.MLP(SIZES[2], activation="sigmoid"), "labels", "float64"),
    (
        jaxbp.MLP(
            SIZES[3], activation="gelu", output_activation="sigmoid", objective="mse"
        ),
        "float",
        "float32",
    ),
    (jaxbp.MLP(SIZES[2], activation="elu", objective="half_sse"), "float", "float64"),
]


@pytest.mark.parametrize(("net", "targets", "dtype"), _GOOD, ids=str)
def test_check_network_grad_passes_on_good_nets(net, targets, dtype):
    params = _params(net)
    x, y = _batch(net, targets)
    report = jaxbp.check_network_grad(net, params, x, y, dtype=dtype)
    assert report.passed, str(report)
    assert report.title.startswith(f"check_network_grad of {net}, batch {BATCH}")
    assert [(c.left, c.right) for c in report.comparisons] == [
        (MANUAL_NAME, AUTO_NAME),
        (MANUAL_NAME, FD_NAME),
        (AUTO_NAME, FD_NAME),
    ]
    assert [c.dtype for c in report.comparisons] == [dtype, "float64", "float64"]
    paths = [f"[{l}]['{n}']" for l in range(net.depth) for n in ("b", "w")]
    for comparison in report.comparisons:
        assert [leaf.path for leaf in comparison.leaves] == paths
    assert report.first_failing_layer is None
    assert "agree in every layer" in str(report)
    jaxbp.assert_network_grad_matches(net, params, x, y, dtype=dtype)


def _wrong_tanh(monkeypatch):
    """Breaks the hand-derived tanh' (1 - a instead of 1 - a^2); f is untouched."""
    tanh = ACTIVATIONS["tanh"]
    monkeypatch.setitem(
        ACTIVATIONS, "tanh", Activation("tanh", tanh.fn, lambda z, a: 1 - a)
    )


def test_check_network_grad_localises_a_wrong_delta(monkeypatch):
    net = jaxbp.MLP(SIZES[3], activation="tanh")
    params = _params(net)
    x, y = _batch(net)
    _wrong_tanh(monkeypatch)
    report = jaxbp.check_network_grad(net, params, x, y)
    assert not report.passed
    manual_auto, manual_fd, auto_fd = report.comparisons
    assert auto_fd.passed
    # tanh' enters delta_1 and delta_2; the output layer's gradient is right.
    for comparison in (manual_auto, manual_fd):
        verdict = {leaf.path: leaf.passed for leaf in comparison.leaves}
        assert verdict == {
            "[0]['b']": False,
            "[0]['w']": False,
            "[1]['b']": False,
            "[1]['w']": False,
            "[2]['b']": True,
            "[2]['w']": True,
        }
    assert report.first_failing_layer == 2
    text = str(report)
    assert "layer 3 agree; the first layer from the output down whose delta" in text
    assert "disagrees is layer 2 of 3 (params[1])" in text
    with pytest.raises(AssertionError, match="gradients disagree") as info:
        jaxbp.assert_network_grad_matches(net, params, x, y)
    assert "manual (delta rule) vs jax.grad [float32]" in str(info.value)


def test_check_network_grad_localises_a_users_grad_fun():
    net = jaxbp.MLP(SIZES[3], activation="tanh")
    params = _params(net)
    x, y = _batch(net)

    def wrong_middle(p, x, y):  # a bias gradient of layer 2 scaled by 2
        g = net.manual_grad(p, x, y)
        g[1] = dict(g[1], b=2 * g[1]["b"])
        return g

    report = jaxbp.check_network_grad(net, params, x, y, grad_fun=wrong_middle)
    assert not report.passed and report.first_failing_layer == 2
    assert "layer 2 of 3 (params[1]: [1]['b'])" in str(report)
    good = jaxbp.check_network_grad(net, params, x, y, grad_fun=net.manual_grad)
    assert good.passed and good.first_failing_layer is None


def test_check_network_grad_refuses_nan_params():
    # A NaN in params is the point's fault, not the delta rule's: refused up front.
    net = _GOOD[0][0]
    params = _params(net)
    params[0] = dict(params[0], b=params[0]["b"].at[0].set(jnp.nan))
    x, y = _batch(net)
    with pytest.raises(
        ValueError, match=r"\[0\]\['b'\] \(layer 1 of 1\) is not finite"
    ):
        jaxbp.check_network_grad(net, params, x, y)


# --- compare_grads, default_tiny ---------------------------------------------------
def test_compare_grads_any_pytree():
    grads = {"enc": {"w": jnp.ones((2, 3))}, "b": jnp.arange(3.0)}
    assert jaxbp.compare_grads(grads, grads).passed
    assert jaxbp.compare_grads(grads, grads).max_rel == 0
    wrong = {"enc": {"w": grads["enc"]["w"].at[1, 2].multiply(1.01)}, "b": grads["b"]}
    comparison = jaxbp.compare_grads(wrong, grads, names=("mine", "reference"))
    assert [(leaf.path, leaf.passed) for leaf in comparison.leaves] == [
        ("['b']", True),
        ("['enc']['w']", False),
    ]
    row = comparison.leaves[1]
    assert row.worst == (1, 2) and row.left_value == pytest.approx(1.01)
    assert comparison.max_rel == pytest.approx(0.01 / 1.01, rel=1e-3)
    assert comparison.table().splitlines()[0].startswith("mine vs reference [float32]")
    assert jaxbp.compare_grads(wrong, grads, rtol=0.02).passed
    with pytest.raises(ValueError, match="missing leaves"):
        jaxbp.compare_grads({"b": grads["b"]}, grads)


def test_compare_grads_relative_error_floor():
    # An entry 1e-7 next to an entry 1 is zero up to rounding in float32: it is
    # measured against the floor eps^(1/3) * 1, not against itself.
    a = {"w": jnp.asarray([[1.0, 1e-7]])}
    b = {"w": jnp.asarray([[1.0, 2e-7]])}
    comparison = jaxbp.compare_grads(a, b)
    assert comparison.passed
    floor = default_tiny("float32", 1.0)
    assert comparison.leaves[0].max_rel == pytest.approx(1e-7 / floor, rel=1e-3)
    assert jaxbp.compare_grads(a, b, tiny=1.0).leaves[0].max_rel == pytest.approx(1e-7)
    # The same entries at full scale are a 50% error.
    c = {"w": jnp.asarray([1e-7, 1e-7])}
    d = {"w": jnp.asarray([2e-7, 2e-7])}
    assert jaxbp.compare_grads(c, d).leaves[0].max_rel == pytest.approx(0.5, rel=1e-3)
    assert not jaxbp.compare_grads(c, d).passed


def test_nan_gradients_fail():
    good = {"w": jnp.ones(3), "b": jnp.ones(2)}
    bad = {"w": good["w"].at[0].set(jnp.nan), "b": good["b"]}
    comparison = jaxbp.compare_grads(bad, good)
    assert not comparison.passed
    assert math.isnan(comparison.leaves[1].max_rel)
    assert comparison.leaves[0].passed
    assert not jaxbp.compare_grads(bad, bad).passed


def test_default_tiny():
    assert default_tiny("float32", 1.0) == pytest.approx(
        np.finfo(np.float32).eps ** (1 / 3)
    )
    assert default_tiny("float64", 2.0) == pytest.approx(
        2 * np.finfo(np.float64).eps ** (1 / 3)
    )
    assert default_tiny("float64", 0.0) == np.finfo(np.float64).tiny


# --- finite differences --------------------------------------------------------------
def test_noise_estimate_and_budget():
    # f = sum w^2 + 1e-9 * noise: the estimated noise follows the injected noise.
    rng = np.random.default_rng(0)
    n = 200
    f0 = 1.0
    h = 1e-3
    offsets = np.tile(h * np.array(fdiff.OFFSETS), (n, 1))
    smooth = f0 + 3.0 * offsets  # linear: D4 = 0
    noisy = smooth + 1e-9 * rng.normal(size=smooth.shape)
    quiet = fdiff.noise_level([fdiff.Samples(f0, smooth, offsets)], 2.2e-16)
    loud = fdiff.noise_level([fdiff.Samples(f0, noisy, offsets)], 2.2e-16)
    assert quiet == pytest.approx(4 * 2.2e-16 * np.abs(smooth).max())
    assert 5e-10 < loud < 5e-9
    q = fdiff.quotients(fdiff.Samples(f0, noisy, offsets), loud)
    assert np.all(q.smooth)
    assert np.all(np.abs(q.central - 3.0) < 10 * q.rounding)
    # a kink at 0: |t| has D4 = 2h, far above the noise
    kinked = np.abs(offsets) + f0
    q = fdiff.quotients(fdiff.Samples(f0, kinked, offsets), quiet)
    assert not q.smooth.any()
    lo, hi = q.bracket
    assert np.allclose(lo, -1) and np.allclose(hi, 1)


def test_default_steps_follow_the_scale():
    leaf = np.array([0.0, 1e-3, 10.0])
    steps = fdiff.default_steps(leaf, "float64")
    rms = np.sqrt(np.mean(leaf**2))
    eps3 = np.finfo(np.float64).eps ** (1 / 3)
    np.testing.assert_allclose(steps, eps3 * np.array([rms, rms, 10.0]))
    np.testing.assert_allclose(
        fdiff.default_steps(np.zeros(2), "float32"), 4.9e-3, rtol=0.01
    )


def test_finite_difference_grad_float64():
    net = jaxbp.MLP(SIZES[1], activation="tanh", objective="mse")
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float", "float64")
        flat_auto, _ = jax.flatten_util.ravel_pytree(jax.grad(net.loss)(params, x, y))
        fd = jaxbp.finite_difference_grad(lambda p: net.loss(p, x, y), params, chunk=28)
        assert fd.shape == flat_auto.shape and fd.dtype == jnp.float64
        np.testing.assert_allclose(fd, flat_auto, rtol=1e-6, atol=1e-9)
        indices = np.array([0, 5, 17, flat_auto.size - 1])
        some = jaxbp.finite_difference_grad(
            lambda p: net.loss(p, x, y), params, indices=indices
        )
        np.testing.assert_allclose(some, fd[indices], rtol=1e-12)


def test_a_lone_kink_is_not_mistaken_for_noise():
    # One coordinate, exactly at the corner of |x|: every probe is a kink, and the
    # noise estimate must not grow to swallow it (0.5 passes as a kink, 5 fails).
    def fun(p):
        return jnp.abs(p["x"])

    p = {"x": jnp.asarray(0.0, jnp.float32)}
    report = jaxbp.check_grad(fun, lambda p: {"x": jnp.asarray(0.5)}, p)
    assert report.passed and report.kinks == 1, str(report)
    report = jaxbp.check_grad(fun, lambda p: {"x": jnp.asarray(5.0)}, p)
    assert not report.comparisons[1].passed


# --- tolerances: rtol = 0 is exact ----------------------------------------------------
def _square(p):
    return jnp.sum(p["w"] ** 2)


def _square_grad(p):
    return {"w": 2 * p["w"]}


def test_rtol_zero_is_an_exact_comparison():
    p = {"w": jnp.ones(3)}
    wrong = jaxbp.check_grad(
        _square, lambda p: {"w": 2.5 * p["w"]}, p, rtol=0.0, fd=None
    )
    assert not wrong.passed, str(wrong)
    assert wrong.comparisons[0].leaves[0].ratio == math.inf
    assert jaxbp.check_grad(_square, _square_grad, p, rtol=0.0, fd=None).passed
    # rtol = 0 leaves the finite differences their own error budget
    assert jaxbp.check_grad(_square, _square_grad, p, rtol=0.0).passed
    exact = jaxbp.compare_grads(_square_grad(p), _square_grad(p), rtol=0.0)
    assert exact.passed
    off = {"w": _square_grad(p)["w"].at[1].add(1e-6)}
    assert not jaxbp.compare_grads(off, _square_grad(p), rtol=0.0).passed


@pytest.mark.parametrize("value", [-1e-6, -1.0, math.nan, math.inf])
def test_bad_rtol_is_refused(value):
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=rf"rtol must be .*, got {value}"):
        jaxbp.check_grad(_square, _square_grad, p, rtol=value)
    with pytest.raises(ValueError, match=rf"rtol must be .*, got {value}"):
        jaxbp.compare_grads(_square_grad(p), _square_grad(p), rtol=value)
    with pytest.raises(ValueError, match=rf"tiny must be .*, got {value}"):
        jaxbp.compare_grads(_square_grad(p), _square_grad(p), tiny=value)


# --- the point and the options are checked before anything ----------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_params_are_refused(bad):
    p = {"b": jnp.ones(2), "w": jnp.asarray([1.0, bad, 2.0])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"params leaf \['w'\] is not finite") as e:
            jaxbp.check_grad(_square, _square_grad, p)
    assert f"{bad} at (1,)" in str(e.value)
    assert "grad_fun" not in str(e.value)


def test_non_finite_value_of_fun_is_refused():
    def fun(p, x):
        return jnp.sum(jnp.log(p["w"])) * x

    def grad(p, x):
        return {"w": x / p["w"]}

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="fun's value at params is -inf") as e:
            jaxbp.check_grad(fun, grad, {"w": jnp.asarray([1.0, 0.0])}, 2.0)
        assert "grad_fun" not in str(e.value)
        with pytest.raises(ValueError, match="fun's value at params is nan"):
            jaxbp.check_grad(fun, grad, {"w": jnp.ones(2)}, jnp.nan)


def test_fun_not_finite_next_to_the_point_is_refused():
    # sqrt at 0: fun is finite at the point but not at p - h, so no quotient exists.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"fun is not finite at .*\['w'\]") as e:
            jaxbp.check_grad(
                lambda p: jnp.sum(jnp.sqrt(p["w"])),
                lambda p: {"w": 0.5 / jnp.sqrt(p["w"])},
                {"w": jnp.asarray([1.0, 0.0])},
            )
    assert "grad_fun" not in str(e.value)


@pytest.mark.parametrize("step", [0.0, -1e-3, math.nan, math.inf])
def test_fd_step_must_be_positive(step):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"fd_step must be .*, got {step}"):
            jaxbp.check_grad(_square, _square_grad, {"w": jnp.ones(3)}, fd_step=step)


def test_fd_step_too_small_to_move_the_point_is_refused():
    with pytest.raises(ValueError, match=r"fd_step=1e-300 does not move params"):
        jaxbp.check_grad(_square, _square_grad, {"w": jnp.ones(3)}, fd_step=1e-300)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("fd_samples", 0),
        ("fd_samples", -1),
        ("fd_samples", 2.5),
        ("fd_samples", True),
        ("fd_directions", 0),
        ("fd_directions", -4),
        ("chunk", 0),
        ("chunk", -128),
        ("fd_safety", 0.0),
        ("fd_safety", -10.0),
        ("fd_safety", math.nan),
        ("seed", -1),
        ("seed", 1.5),
        ("name", ""),
    ],
    ids=str,
)
def test_bad_options_are_refused(option, value):
    p = {"w": jnp.ones(100)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^{option} must be .*, got {value!r}$"):
            jaxbp.check_grad(_square, _square_grad, p, fd="sample", **{option: value})


@pytest.mark.parametrize(
    ("option", "value"), [("fd_samples", 0), ("fd_directions", 0), ("chunk", 0)]
)
def test_bad_options_of_check_network_grad_are_refused(option, value):
    net = jaxbp.MLP(SIZES[1], activation="tanh")
    x, y = _batch(net)
    with pytest.raises(ValueError, match=rf"^{option} must be .*, got {value!r}$"):
        jaxbp.check_network_grad(net, _params(net), x, y, **{option: value})


# --- has_aux, and what fun returns ----------------------------------------------------
def test_has_aux_for_fun_and_grad_fun():
    p = {"w": jnp.arange(3.0)}

    def fun(p):
        return jnp.sum(p["w"] ** 2), {"norm": jnp.linalg.norm(p["w"]), "tag": "x"}

    def grad(p):
        return {"w": 2 * p["w"]}, jnp.linalg.norm(p["w"])

    report = jaxbp.check_grad(fun, grad, p, has_aux=True)
    assert report.passed, str(report)
    assert len(report.comparisons) == 3
    wrong = jaxbp.check_grad(fun, lambda p: ({"w": 3 * p["w"]}, None), p, has_aux=True)
    assert not wrong.passed
    assert "leaves where grad_fun is wrong: ['w']" in str(wrong)


def test_what_fun_returns_is_named():
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"fun returned a tuple of 2 .*has_aux=True"):
        jaxbp.check_grad(lambda p: (_square(p), 3.0), _square_grad, p)
    with pytest.raises(ValueError, match=r"fun returned a dict .*\['loss'\]"):
        jaxbp.check_grad(lambda p: {"loss": _square(p)}, _square_grad, p)
    with pytest.raises(ValueError, match=r"fun returned complex64"):
        jaxbp.check_grad(lambda p: _square(p) + 1j, _square_grad, p)
    with pytest.raises(ValueError, match=r"fun returned int32"):
        jaxbp.check_grad(lambda p: _square(p).astype(jnp.int32), _square_grad, p)
    with pytest.raises(ValueError, match=r"has_aux=True: fun must return a pair"):
        jaxbp.check_grad(_square, _square_grad, p, has_aux=True)
    with pytest.raises(ValueError, match=r"has_aux=True: grad_fun must return a pair"):
        jaxbp.check_grad(lambda p: (_square(p), 0), _square_grad, p, has_aux=True)
    with pytest.raises(ValueError, match=r"grad_fun returned a tuple of 2 .*has_aux"):
        jaxbp.check_grad(_square, lambda p: (_square_grad(p), 1.0), p)


# --- a single array as params ---------------------------------------------------------
def test_a_single_array_is_named_params():
    report = jaxbp.check_grad(lambda w: jnp.sum(w**2), lambda w: 3 * w, jnp.ones(3))
    assert not report.passed
    for comparison in report.comparisons:
        assert [leaf.path for leaf in comparison.leaves] == ["params"]
    text = str(report)
    assert "- params: 3 of 3 coordinates fail" in text
    assert "leaves where grad_fun is wrong: params" in text
    assert "\n      " not in text.split("\n\n")[1]  # no blank leaf column
    with pytest.raises(ValueError, match=r"params: \(1, 3\) instead of \(3,\)"):
        jaxbp.check_grad(lambda w: jnp.sum(w**2), lambda w: w[None], jnp.ones(3))


# --- smooth functions at zero, tiny leaves --------------------------------------------
@pytest.mark.parametrize(
    ("fun", "grad"),
    [
        (jnp.sin, jnp.cos),
        (lambda w: 1 - jnp.cos(w), jnp.sin),
        (lambda w: jnp.tanh(w) ** 2, lambda w: 2 * jnp.tanh(w) / jnp.cosh(w) ** 2),
    ],
    ids=["sin", "1-cos", "tanh^2"],
)
def test_a_smooth_function_at_zero_has_no_kink(fun, grad):
    report = jaxbp.check_grad(fun, grad, jnp.array(0.0))
    assert report.passed and report.kinks == 0, str(report)
    assert all(leaf.verdict == "PASS" for c in report.comparisons for leaf in c.leaves)
    assert "accepted as subgradients" not in str(report)


def test_a_tiny_leaf_gets_a_step_that_resolves_the_gradient():
    # p = 1e-150: a step of eps^(1/3) |p| does not move 1 + sin(p) at all, so the
    # quotients are 0 with an infinite budget and anything passed.
    with jax.enable_x64(True):
        p = jnp.asarray([1e-150, 1e-150])

        def fun(w):
            return 1 + jnp.sum(jnp.sin(w))

        assert jaxbp.check_grad(fun, jnp.cos, p).passed
        report = jaxbp.check_grad(fun, lambda w: jnp.cos(w) * 1.01, p, fd="all")
    assert not report.comparisons[1].passed
    assert report.comparisons[1].leaves[0].failures == 2


# --- multivariate kinks ---------------------------------------------------------------
def _hinge(p):
    return jnp.maximum(p["w"][0] - p["w"][1], 0.0)


@pytest.mark.parametrize(
    ("g", "valid"),
    [
        ((0.0, 0.0), True),
        ((1.0, -1.0), True),
        ((0.5, -0.5), True),  # jax.grad's choice (maximum splits the tie)
        ((0.3, -0.3), True),
        ((1.0, 0.0), False),  # inside each coordinate's bracket, not a subgradient
        ((0.0, -1.0), False),
        ((1.0, -0.5), False),
        ((0.2, -0.7), False),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_kink_across_two_coordinates_needs_a_subgradient(g, valid, dtype):
    with jax.enable_x64(dtype == "float64"):
        p = {"w": jnp.asarray([1.0, 1.0], dtype)}
        report = jaxbp.check_grad(_hinge, lambda p: {"w": jnp.asarray(g, dtype)}, p)
    coordinates = report.comparisons[1]
    assert coordinates.passed and coordinates.kinks == 2, str(report)
    assert report.passed == valid, str(report)
    along = report.comparisons[3]
    assert along.left == "grad_fun" and "along the kinks" in along.coverage
    assert report.comparisons[4].passed  # jax.grad's own choice
    if not valid:
        assert "leaves where grad_fun is wrong: ['w']" in str(report)
        assert "not a subgradient" in str(report)


def _relu_net_at_a_kink():
    """A 2-2-2 ReLU net whose first unit has z = 0 exactly for example 0 (x != 0)."""
    net = jaxbp.MLP((2, 2, 2), activation="relu")
    params = [
        {"w": jnp.asarray([[2.0, 1.0], [-1.0, 0.5]]), "b": jnp.asarray([0.0, 0.25])},
        {"w": jnp.asarray([[1.5, -0.5], [0.25, 1.0]]), "b": jnp.asarray([0.1, -0.2])},
    ]
    x = jnp.asarray([[1.0, 2.0], [0.5, -1.0]])  # z_1[0, 0] = 2 - 2 + 0 = 0
    y = jnp.asarray([0, 1])
    return net, params, x, y


def _relu_one_at_zero(net):
    """``net.loss`` with relu'(0) = 1: another valid subgradient at the kink."""

    def loss(params, x, y):
        a = x
        for l, layer in enumerate(params):
            z = a @ layer["w"] + layer["b"][None, :]
            a = jnp.where(z >= 0, z, 0.0) if l < net.depth - 1 else z
        return net.loss_fn.value(a, jaxbp.losses.prepare_targets(y, 2, x.dtype))

    return loss


def test_relu_net_at_an_exact_zero_needs_one_subgradient_per_unit():
    net, params, x, y = _relu_net_at_a_kink()
    g0 = jax.grad(net.loss)(params, x, y)  # relu'(0) = 0
    g1 = jax.grad(_relu_one_at_zero(net))(params, x, y)  # relu'(0) = 1
    assert not np.allclose(g0[0]["w"][:, 0], g1[0]["w"][:, 0])
    for grads in (g0, g1):
        report = jaxbp.check_grad(net.loss, lambda p, x, y, g=grads: g, params, x, y)
        assert report.passed and report.kinks == 3, str(report)
        assert jaxbp.check_network_grad(
            net, params, x, y, grad_fun=lambda *a, g=grads: g
        ).passed
    assert jaxbp.check_network_grad(net, params, x, y).passed  # the delta rule's choice
    # relu'(0) = 1 for the weights but 0 for the bias: every entry is inside its
    # bracket, but the unit's kink runs across all three and this is no subgradient.
    mixed = [{"w": g1[0]["w"], "b": g0[0]["b"]}, g0[1]]
    report = jaxbp.check_grad(net.loss, lambda *a: mixed, params, x, y)
    assert report.comparisons[1].passed and report.comparisons[1].kinks == 3
    assert not report.passed, str(report)
    assert "leaves where grad_fun is wrong: [0]['b'], [0]['w']" in str(report)
    report = jaxbp.check_network_grad(net, params, x, y, grad_fun=lambda *a: mixed)
    assert not report.passed and report.first_failing_layer == 1, str(report)


def test_kinks_of_opposite_curvature_do_not_fail_a_clarke_subgradient():
    # relu(w0) - relu(w1) at 0: along (1, -1) it is linear with slope 1, yet jax.grad's
    # (0, 0) is a valid (Clarke) subgradient; no pair of these kinks is tested.
    def fun(p):
        return jax.nn.relu(p["w"][0]) - jax.nn.relu(p["w"][1]) + jnp.abs(p["w"][2])

    p = {"w": jnp.zeros(3)}
    for g in ([0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [0.5, 0.0, -1.0]):
        report = jaxbp.check_grad(fun, lambda p, g=g: {"w": jnp.asarray(g)}, p)
        assert report.passed and report.kinks == 3, str(report)


def test_nested_relu_kinks_do_not_fail_jax_grads_choice():
    # Three ReLU layers, zero biases and an all-zero example: every pre-activation of
    # that example is exactly 0, and the kinks are nested (a layer-2 unit's kink moves
    # with the layer-1 biases). No pair of them lies across a single kink, and
    # jax.grad's choice (a limiting gradient) and the delta rule's must pass.
    net = jaxbp.MLP((6, 5, 5, 5, 4), activation="relu")
    rng = np.random.default_rng(0)
    params = [
        {"w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m)), "b": jnp.zeros(n)}
        for m, n in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    ]
    x = jnp.asarray(rng.normal(size=(BATCH, 6))).at[0].set(0.0)
    y = jnp.asarray(rng.integers(0, 4, size=BATCH))
    report = jaxbp.check_network_grad(net, params, x, y)
    assert report.passed and report.kinks == 15, str(report)
    assert jaxbp.check_grad(net.loss, jax.grad(net.loss), params, x, y).passed


def test_a_kink_behind_cancelling_terms_keeps_its_whole_bracket():
    # -|a . x + c| at a point where terms of size 4 sum to exactly 0: next to it, f is
    # 1e-5 but carries the rounding of those terms (1e-16 absolute, not 1e-21), which
    # the noise must include, or the edges of the bracket (-a, a) fail by 1e-10.
    x = {
        "p0": jnp.asarray([2.0]),
        "p1": jnp.asarray([[-2.0, 2.0, -0.5], [-2.0, 0.5, 1.5]]),
        "p2": jnp.asarray([-0.25, -0.25, 0.5]),
    }
    a = {
        "p0": jnp.asarray([-2.0]),
        "p1": jnp.asarray([[2.0, 1.0, -1.0], [-2.0, 1.0, 2.0]]),
        "p2": jnp.asarray([-2.0, 0.5, 0.0]),
    }

    def fun(w):
        return -jnp.abs(sum(jnp.sum(a[k] * w[k]) for k in w) - 2.375)

    with jax.enable_x64(True):
        x, a = jax.tree.map(lambda t: t.astype(jnp.float64), (x, a))
        for sign in (-1.0, 0.0, 1.0):  # -sign(z) a, for the choices of sign(0)
            grads = jax.tree.map(lambda t, s=sign: -s * t, a)
            report = jaxbp.check_grad(fun, lambda w, g=grads: g, x)
            assert report.passed, str(report)


# --- jax.grad's own rounding -------------------------------------------------------
def test_a_correct_half_precision_gradient_passes_where_jax_grad_rounds_badly():
    # sum(tanh(M x)) at M x = (-4, 3): tanh' = 1 - tanh^2 cancels, and jax.grad in
    # float16 is 30% off the true gradient there. The true gradient, rounded to
    # float16, must pass; one 20% wrong must still fail (against finite differences).
    m = jnp.asarray([[2.0, -2.0, -2.0], [-1.5, -2.0, 0.0]], jnp.float16)
    x = jnp.asarray([-2.0, 0.0, 0.0], jnp.float16)

    def fun(x):
        return jnp.sum(jnp.tanh(m @ x))

    m64, x64 = np.asarray(m, np.float64), np.asarray(x, np.float64)
    true = m64.T @ (1 - np.tanh(m64 @ x64) ** 2)
    report = jaxbp.check_grad(fun, lambda x: jnp.asarray(true, jnp.float16), x)
    assert report.passed, str(report)
    wrong = jaxbp.check_grad(fun, lambda x: jnp.asarray(1.2 * true, jnp.float16), x)
    assert not wrong.passed
    assert not wrong.comparisons[1].passed


# --- a tree of mixed dtypes ---------------------------------------------------------
def test_mixed_dtypes_are_judged_at_the_least_precise():
    # d/da of sum(tanh(a)) * sum(exp(b)) carries sum(exp(b)), computed in bfloat16: the
    # float32 leaf's gradient is only as exact as bfloat16, in jax.grad as in the
    # correctly rounded true gradient.
    p = {
        "a": jnp.asarray([0.3, -1.2, 0.7], jnp.float32),
        "b": jnp.asarray([0.3, -0.7, 1.1], jnp.bfloat16),
    }

    def fun(p):
        return jnp.sum(jnp.tanh(p["a"])) * jnp.sum(jnp.exp(p["b"]))

    a, b = (np.asarray(p[k], np.float64) for k in "ab")
    true = {
        "a": jnp.asarray(np.sum(np.exp(b)) / np.cosh(a) ** 2, jnp.float32),
        "b": jnp.asarray(np.sum(np.tanh(a)) * np.exp(b), jnp.bfloat16),
    }
    report = jaxbp.check_grad(fun, lambda p: true, p)
    assert report.passed, str(report)
    assert {leaf.rtol for leaf in report.comparisons[0].leaves} == {
        GRAD_RTOL["bfloat16"]
    }
    wrong = dict(true, a=true["a"] * 1.2)
    assert not jaxbp.check_grad(fun, lambda p: wrong, p).passed


# --- one vocabulary of options: check_grad and check_network_grad -------------------
_SHARED_OPTIONS = ("dtype", "fd", "fd_dtype", "fd_step", "fd_samples",
                   "fd_directions", "fd_safety", "rtol", "seed")  # fmt: skip


def test_both_checkers_take_the_same_options_with_the_same_defaults():
    grad = inspect.signature(jaxbp.check_grad).parameters
    network = inspect.signature(jaxbp.check_network_grad).parameters
    fields = {f.name: f.default for f in dataclasses.fields(jaxbp.CheckOptions)}
    for option in (*_SHARED_OPTIONS, "chunk"):
        assert (
            grad[option].kind == network[option].kind == inspect.Parameter.KEYWORD_ONLY
        )
        assert option in fields
    for option in _SHARED_OPTIONS:
        assert grad[option].default == network[option].default == fields[option]
    # chunk means the same in both; its default differs, for the reason documented
    assert (grad["chunk"].default, network["chunk"].default) == (128, 1024)
    assert "finite_differences" not in network


@pytest.mark.parametrize(
    ("fd", "checked"),
    [("sample", [3, 3, 3, 3]), ("auto", [5, 30, 4, 20]), ("all", [5, 30, 4, 20])],
)
def test_fd_samples_means_the_same_in_both_checkers(fd, checked):
    """fd_samples never changes fd: with "auto" on a small network, both checkers
    check every coordinate; with "sample", both check fd_samples per leaf."""
    net = jaxbp.MLP(SIZES[2], activation="tanh")
    params = _params(net)
    x, y = _batch(net)
    options = {"fd": fd, "fd_samples": 3, "seed": 1}
    general = jaxbp.check_grad(net.loss, net.manual_grad, params, x, y, **options)
    network = jaxbp.check_network_grad(net, params, x, y, **options)
    for report in (general, network):
        assert report.passed, str(report)
        assert [leaf.checked for leaf in report.comparisons[1].leaves] == checked
    assert general.comparisons[1].coverage == network.comparisons[1].coverage
    rows = [
        [(leaf.path, leaf.checked) for leaf in report.comparisons[1].leaves]
        for report in (general, network)
    ]
    assert rows[0] == rows[1]


def test_fd_none_skips_finite_differences_in_both_checkers():
    net = jaxbp.MLP(SIZES[1], activation="tanh")
    params = _params(net)
    x, y = _batch(net)
    general = jaxbp.check_grad(net.loss, net.manual_grad, params, x, y, fd=None)
    network = jaxbp.check_network_grad(net, params, x, y, fd=None)
    assert len(general.comparisons) == len(network.comparisons) == 1
    for bad in (False, "none", "every"):
        with pytest.raises(ValueError, match=r"^fd must be one of"):
            jaxbp.check_network_grad(net, params, x, y, fd=bad)
        with pytest.raises(ValueError, match=r"^fd must be one of"):
            jaxbp.check_grad(net.loss, net.manual_grad, params, x, y, fd=bad)


def test_check_network_grad_has_no_finite_differences_keyword():
    net = jaxbp.MLP(SIZES[1], activation="tanh")
    x, y = _batch(net)
    with pytest.raises(TypeError, match="finite_differences"):
        jaxbp.check_network_grad(net, _params(net), x, y, finite_differences=False)


# --- the deprecated names of the network check ------------------------------------
def test_check_gradients_is_a_deprecated_alias():
    net = jaxbp.MLP(SIZES[1], activation="tanh")
    params = _params(net)
    x, y = _batch(net)
    with pytest.warns(DeprecationWarning, match=r"use jaxbp\.check_network_grad"):
        old = jaxbp.check_gradients(net, params, x, y)
    new = jaxbp.check_network_grad(net, params, x, y)
    assert str(old) == str(new)
    # the old keywords: finite_differences=False is fd=None, and fd_samples with the
    # default fd meant fd="sample" (the CLI still relies on both)
    with pytest.warns(DeprecationWarning):
        report = jaxbp.check_gradients(net, params, x, y, finite_differences=False)
    assert len(report.comparisons) == 1
    with pytest.warns(DeprecationWarning):
        report = jaxbp.check_gradients(net, params, x, y, fd_samples=2, seed=1)
    assert [leaf.checked for leaf in report.comparisons[1].leaves] == [2, 2]
    with pytest.warns(DeprecationWarning):
        report = jaxbp.check_gradients(net, params, x, y, fd_samples=None)
    assert "every coordinate" in report.comparisons[1].coverage


def test_assert_gradients_agree_is_a_deprecated_alias():
    net = jaxbp.MLP(SIZES[1], activation="tanh")
    params = _params(net)
    x, y = _batch(net)
    match = r"use jaxbp\.assert_network_grad_matches"
    with pytest.warns(DeprecationWarning, match=match):
        jaxbp.assert_gradients_agree(net, params, x, y, finite_differences=False)
    wrong = jax.tree.map(lambda g: 2 * g, net.manual_grad(params, x, y))
    with pytest.warns(DeprecationWarning), pytest.raises(AssertionError):
        jaxbp.assert_gradients_agree(net, params, x, y, grad_fun=lambda *a: wrong)
    with pytest.raises(AssertionError, match="gradients disagree"):
        jaxbp.assert_network_grad_matches(net, params, x, y, grad_fun=lambda *a: wrong)


def test_public_surface_holds_what_users_call():
    public = {
        "CheckOptions", "Comparison", "GradCheckReport", "LeafError",
        "assert_grad_matches", "assert_gradients_agree",
        "assert_network_grad_matches", "check_grad", "check_gradients",
        "check_network_grad", "compare_grads", "finite_difference_grad",
    }  # fmt: skip
    assert set(jaxbp.gradcheck.__all__) == public
    assert public <= set(jaxbp.__all__)
    for name in public:
        assert getattr(jaxbp, name) is getattr(jaxbp.gradcheck, name)
    for internal in (
        "FAR_BEYOND",
        "AUTO_NAME",
        "MANUAL_NAME",
        "NETWORK_AUTO_ALL_LIMIT",
    ):
        assert not hasattr(jaxbp.gradcheck, internal)
