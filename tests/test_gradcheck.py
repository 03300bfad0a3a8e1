"""gradcheck: manual vs jax.grad vs finite differences, and its report."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.activations import ACTIVATIONS, Activation
from jaxbp.gradcheck import FD_RTOL, GRAD_RTOL, default_tiny

SIZES = {1: (6, 4), 2: (6, 5, 4), 3: (6, 5, 5, 4)}
BATCH = 7
MANUAL, AUTO, FD = "manual (delta rule)", "autodiff (jax.grad)", "finite differences"


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


def _leaf_ids(params):
    return [
        (l, name, tuple(layer[name].shape))
        for l, layer in enumerate(params)
        for name in ("w", "b")
    ]


def test_tolerances():
    assert GRAD_RTOL["float64"] == 1e-10
    assert GRAD_RTOL["float32"] == 1e-4
    assert FD_RTOL["float64"] == 1e-5


# --- passing reports --------------------------------------------------------------
_GOOD = [
    (jaxbp.MLP(SIZES[1], activation="tanh"), "labels"),
    (jaxbp.MLP(SIZES[2], activation="sigmoid"), "labels"),
    (
        jaxbp.MLP(
            SIZES[3], activation="gelu", output_activation="sigmoid", objective="mse"
        ),
        "float",
    ),
    (jaxbp.MLP(SIZES[2], activation="elu", objective="half_sse"), "float"),
]


# Each net in one dtype for manual vs autodiff (finite differences run in float64).
@pytest.mark.parametrize(
    ("net", "targets", "dtype"),
    [
        (*case, dtype)
        for case, dtype in zip(_GOOD, ["float32", "float64"] * 2, strict=True)
    ],
    ids=lambda v: str(v),
)
def test_gradcheck_passes_on_good_nets(net, targets, dtype):
    params = _params(net)
    x, y = _batch(net, targets)
    report = jaxbp.check_gradients(net, params, x, y, dtype=dtype)
    assert report.passed, str(report)
    assert report.network == str(net) and report.batch_size == BATCH
    assert [(c.left, c.right) for c in report.comparisons] == [
        (MANUAL, AUTO),
        (MANUAL, FD),
        (AUTO, FD),
    ]
    assert [c.dtype for c in report.comparisons] == [dtype, "float64", "float64"]
    for comparison in report.comparisons:
        assert comparison.passed
        ids = [(leaf.layer, leaf.name, leaf.shape) for leaf in comparison.leaves]
        assert ids == _leaf_ids(params)
        for leaf in comparison.leaves:
            assert leaf.checked == math.prod(leaf.shape)
            assert leaf.max_rel <= leaf.rtol and leaf.max_abs >= 0
    assert report.comparisons[0].leaves[0].rtol == GRAD_RTOL[dtype]
    assert report.comparisons[1].leaves[0].rtol == FD_RTOL["float64"]
    jaxbp.assert_gradients_agree(net, params, x, y, dtype=dtype)


def test_gradcheck_default_dtype_is_the_params_dtype():
    net = _GOOD[0][0]
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, dtype="float64")
        report = jaxbp.check_gradients(net, params, x, y, finite_differences=False)
    assert report.comparisons[0].dtype == "float64"
    assert report.passed
    report = jaxbp.check_gradients(net, _params(net), x, y, finite_differences=False)
    assert report.comparisons[0].dtype == "float32"


def test_report_table():
    net = _GOOD[1][0]
    params = _params(net)
    x, y = _batch(net)
    text = str(jaxbp.check_gradients(net, params, x, y))
    assert text.startswith(f"gradcheck: {net}, batch {BATCH}")
    assert f"{MANUAL} vs {AUTO} [float32]" in text
    assert f"{MANUAL} vs {FD} [float64]  (central differences, h=1e-06)" in text
    assert f"{AUTO} vs {FD} [float64]" in text
    for word in ("layer", "leaf", "shape", "max abs err", "max rel err", "checked"):
        assert word in text
    rows = [row.split() for row in text.splitlines() if row.endswith(("PASS", "FAIL"))]
    rows = [row for row in rows if row[0].isdigit()]
    assert len(rows) == 3 * 2 * net.depth
    assert {row[0] for row in rows} == {"0", "1"}
    assert {row[1] for row in rows} == {"w", "b"}
    assert all(row[-1] == "PASS" for row in rows)
    assert text.endswith("all checks PASS")


def test_without_finite_differences():
    net = _GOOD[0][0]
    x, y = _batch(net)
    report = jaxbp.check_gradients(net, _params(net), x, y, finite_differences=False)
    assert len(report.comparisons) == 1 and report.passed


@pytest.mark.parametrize("samples", [3])
def test_fd_samples_limits_the_checked_count(samples):
    net = _GOOD[1][0]
    params = _params(net)
    x, y = _batch(net)
    report = jaxbp.check_gradients(net, params, x, y, fd_samples=samples, seed=1)
    assert report.passed, str(report)
    manual_vs_auto, *against_fd = report.comparisons
    for leaf in manual_vs_auto.leaves:
        assert leaf.checked == math.prod(leaf.shape)
    for comparison in against_fd:
        for leaf in comparison.leaves:
            assert leaf.checked == min(samples, math.prod(leaf.shape))


# --- failing reports --------------------------------------------------------------
def _wrong_tanh(monkeypatch):
    """Breaks the hand-derived tanh' (1 - a instead of 1 - a^2); f is untouched."""
    tanh = ACTIVATIONS["tanh"]
    monkeypatch.setitem(
        ACTIVATIONS, "tanh", Activation("tanh", tanh.fn, lambda z, a: 1 - a)
    )


def test_gradcheck_fails_on_a_wrong_derivative(monkeypatch):
    net = jaxbp.MLP(SIZES[2], activation="tanh")
    params = _params(net)
    x, y = _batch(net)
    assert jaxbp.check_gradients(net, params, x, y).passed
    _wrong_tanh(monkeypatch)
    report = jaxbp.check_gradients(net, params, x, y)
    assert not report.passed
    manual_vs_auto, manual_vs_fd, auto_vs_fd = report.comparisons
    # The manual side is wrong: it disagrees with both references, which agree.
    assert not manual_vs_auto.passed and not manual_vs_fd.passed
    assert auto_vs_fd.passed
    # The hidden derivative feeds layer 0 only; the output layer's gradient is right.
    for comparison in (manual_vs_auto, manual_vs_fd):
        verdict = {(leaf.layer, leaf.name): leaf.passed for leaf in comparison.leaves}
        assert verdict == {
            (0, "w"): False,
            (0, "b"): False,
            (1, "w"): True,
            (1, "b"): True,
        }
    text = str(report)
    assert "some checks FAIL" in text
    assert f"{MANUAL} vs {AUTO}" in text
    with pytest.raises(AssertionError, match="gradients disagree") as info:
        jaxbp.assert_gradients_agree(net, params, x, y)
    message = str(info.value)
    assert f"{MANUAL} vs {AUTO} [float32]" in message
    assert "FAIL" in message and "PASS" in message


def test_compare_grads_perturbed():
    net = jaxbp.MLP(SIZES[2])
    grads = _params(net, seed=3)
    assert jaxbp.compare_grads(grads, grads).passed
    assert jaxbp.compare_grads(grads, grads).max_rel == 0
    wrong = jax.tree.map(lambda t: t, grads)
    wrong[1] = dict(wrong[1], b=wrong[1]["b"].at[2].multiply(1.01))
    comparison = jaxbp.compare_grads(wrong, grads, names=("mine", "reference"))
    assert not comparison.passed
    failed = [(leaf.layer, leaf.name) for leaf in comparison.leaves if not leaf.passed]
    assert failed == [(1, "b")]
    assert comparison.max_rel == pytest.approx(0.01 / 1.01, rel=1e-3)
    table = comparison.table()
    assert table.splitlines()[0] == "mine vs reference [float32]"
    assert "FAIL" in table
    # a loose tolerance lets it pass
    assert jaxbp.compare_grads(wrong, grads, rtol=0.02).passed
    with pytest.raises(AssertionError, match="mine vs reference"):
        jaxbp.GradCheckReport("net", 1, (comparison,)).assert_passed()


def test_compare_grads_rejects_mismatched_pytrees():
    net = jaxbp.MLP(SIZES[2])
    grads = _params(net)
    with pytest.raises(ValueError, match="gradient structures differ"):
        jaxbp.compare_grads(grads, grads[:1])
    with pytest.raises(ValueError, match="layer 1 w: shapes"):
        jaxbp.compare_grads(
            grads, [grads[0], {"w": grads[1]["w"].T, "b": grads[1]["b"]}]
        )


def test_compare_grads_relative_error_floor():
    # An entry 1e-7 next to an entry 1 is zero up to rounding in float32: it is
    # measured against the floor eps^(1/3) * 1, not against itself.
    a = [{"w": jnp.asarray([[1.0, 1e-7]]), "b": jnp.zeros(1)}]
    b = [{"w": jnp.asarray([[1.0, 2e-7]]), "b": jnp.zeros(1)}]
    comparison = jaxbp.compare_grads(a, b)
    assert comparison.passed
    floor = default_tiny("float32", 1.0)
    assert comparison.leaves[0].max_rel == pytest.approx(1e-7 / floor, rel=1e-3)
    assert comparison.leaves[1].max_rel == 0 and comparison.leaves[1].passed
    # A larger floor passed as `tiny` wins; a smaller one does not lower the default.
    assert jaxbp.compare_grads(a, b, tiny=1.0).leaves[0].max_rel == pytest.approx(1e-7)
    assert jaxbp.compare_grads(a, b, tiny=1e-30).leaves[0].max_rel == pytest.approx(
        1e-7 / floor, rel=1e-3
    )
    # The same entries at full scale are a 50% error.
    c = [{"w": jnp.asarray([[1e-7, 1e-7]]), "b": jnp.zeros(1)}]
    d = [{"w": jnp.asarray([[2e-7, 2e-7]]), "b": jnp.zeros(1)}]
    assert jaxbp.compare_grads(c, d).leaves[0].max_rel == pytest.approx(0.5, rel=1e-3)
    assert not jaxbp.compare_grads(c, d).passed


def test_default_tiny():
    assert default_tiny("float32", 1.0) == pytest.approx(
        np.finfo(np.float32).eps ** (1 / 3)
    )
    assert default_tiny("float64", 2.0) == pytest.approx(
        2 * np.finfo(np.float64).eps ** (1 / 3)
    )
    assert 4e-3 < default_tiny("float32", 1.0) < 6e-3
    assert 5e-6 < default_tiny("float64", 1.0) < 7e-6
    assert default_tiny("float64", 0.0) == np.finfo(np.float64).tiny


def test_nan_gradients_fail():
    net = jaxbp.MLP(SIZES[1])
    grads = _params(net)
    bad = [dict(grads[0], w=grads[0]["w"].at[0, 0].set(jnp.nan))]
    comparison = jaxbp.compare_grads(bad, grads)
    assert not comparison.passed
    assert math.isnan(comparison.leaves[0].max_rel)
    assert math.isnan(comparison.leaves[0].max_abs)
    assert comparison.leaves[1].passed
    assert "FAIL" in comparison.table()
    # NaN on both sides still fails
    assert not jaxbp.compare_grads(bad, bad).passed


def test_gradcheck_fails_on_nan_params():
    net = _GOOD[0][0]
    params = _params(net)
    params[0] = dict(params[0], b=params[0]["b"].at[0].set(jnp.nan))
    x, y = _batch(net)
    report = jaxbp.check_gradients(net, params, x, y)
    assert not report.passed
    with pytest.raises(AssertionError, match="gradients disagree"):
        report.assert_passed()


# --- finite differences ----------------------------------------------------------
def test_finite_difference_grad_float64():
    net = _GOOD[2][0]
    with jax.enable_x64(True):
        params = _params(net, "float64")
        x, y = _batch(net, "float", "float64")
        flat_auto, unravel = jax.flatten_util.ravel_pytree(
            jax.grad(net.loss)(params, x, y)
        )
        fd = jaxbp.finite_difference_grad(lambda p: net.loss(p, x, y), params, chunk=16)
        assert fd.shape == flat_auto.shape and fd.dtype == jnp.float64
        np.testing.assert_allclose(fd, flat_auto, rtol=1e-6, atol=1e-9)
        indices = np.array([0, 5, 17, flat_auto.size - 1])
        some = jaxbp.finite_difference_grad(
            lambda p: net.loss(p, x, y), params, indices=indices
        )
        np.testing.assert_allclose(some, fd[indices], rtol=1e-12)


def test_gradcheck_float64_fd_on_float32_params():
    # float32 inputs are cast up for the finite-difference part, run in float64.
    net = _GOOD[3][0]
    params = _params(net)
    x, y = _batch(net, "float")
    report = jaxbp.check_gradients(net, params, x, y, fd_dtype="float64")
    assert report.passed, str(report)
    assert all(c.dtype == "float64" for c in report.comparisons[1:])
