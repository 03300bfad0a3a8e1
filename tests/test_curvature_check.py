"""check_hvp and assert_hvp_matches: they pass correct Hessian-vector products and
catch the classic mistakes, naming the leaves."""

import doctest

import jax
import jax.numpy as jnp
import pytest
from curvature_harness import conv_net, setup

from jaxbp import MLP, assert_hvp_matches, check_hvp
from jaxbp.curvature import check, ggn_vp, hvp, products, rop
from jaxbp.gradcheck.report import FD_NAME


def net_hvp(net):
    return lambda p, v, x, y: hvp(net, p, x, y, v)


def failing_note(report) -> str:
    return [n for n in report.notes if n.startswith("leaves where")][0]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_passes_the_library_hvp_on_an_mlp(dtype):
    with jax.enable_x64(dtype == "float64"):
        net = MLP((4, 5, 3), "tanh", "identity", "softmax_cross_entropy")
        params, x, y, v = setup(net, jnp.dtype(dtype))
        report = check_hvp(net.loss, net_hvp(net), params, v, x, y)
        assert report.passed, str(report)
        assert [c.right for c in report.comparisons] == [
            check.AUTO_HVP_NAME,
            FD_NAME,
            FD_NAME,
        ]
        assert "[0]['w']" in str(report)


def test_passes_the_library_hvp_on_a_conv_net():
    with jax.enable_x64(True):
        net = conv_net("half_sse")
        params, x, y, v = setup(net, jnp.float64)
        assert_hvp_matches(net.loss, net_hvp(net), params, v, x, y)


def _tanh_net():
    net = MLP((4, 5, 3), "tanh", "identity", "softmax_cross_entropy")
    return net, *setup(net, jnp.float64)


def test_catches_the_second_derivative_left_out(monkeypatch):
    # Without f'' the hidden layer's R{dz} loses f''(z) R{z} da: only the layer below
    # the tanh (parameters [0]) is wrong.
    with jax.enable_x64(True):
        net, params, x, y, v = _tanh_net()
        monkeypatch.setattr(rop, "second_derivative", lambda n, z, a: jnp.zeros_like(z))
        report = check_hvp(net.loss, net_hvp(net), params, v, x, y)
        assert not report.passed
        assert (
            failing_note(report) == "leaves where hvp_fun is wrong: [0]['b'], [0]['w']"
        )
        # the reference itself agrees with the finite differences
        assert report.comparisons[2].passed


def test_catches_the_gauss_newton_product_given_as_the_hessian():
    # f'' and the couplings of the layers dropped: the GGN product, which is PSD and
    # looks plausible, is not the Hessian's.
    with jax.enable_x64(True):
        net, params, x, y, v = _tanh_net()
        ggn = lambda p, u, x, y: ggn_vp(net, p, x, y, u)  # noqa: E731
        report = check_hvp(net.loss, ggn, params, v, x, y, name="ggn_vp")
        assert not report.passed
        assert "[0]['w']" in failing_note(report)
        assert "[1]['w']" in failing_note(report)


def test_catches_the_softmax_coupling_dropped(monkeypatch):
    # H = diag(p) instead of diag(p) - p p^T for the cross-entropy
    with jax.enable_x64(True):
        net, params, x, y, v = _tanh_net()

        def no_coupling(name, out, targets, u):
            return jax.nn.softmax(out, axis=-1) * u

        monkeypatch.setattr(products, "hessian_vp", no_coupling)
        report = check_hvp(net.loss, net_hvp(net), params, v, x, y)
        assert not report.passed
        assert failing_note(report) == (
            "leaves where hvp_fun is wrong: [0]['b'], [0]['w'], [1]['b'], [1]['w']"
        )


def test_catches_a_missing_one_over_batch():
    with jax.enable_x64(True):
        net, params, x, y, v = _tanh_net()
        summed = lambda p, u, x, y: jax.tree.map(  # noqa: E731
            lambda t: t * x.shape[0], hvp(net, p, x, y, u)
        )
        report = check_hvp(net.loss, summed, params, v, x, y)
        assert not report.passed
        assert all(not c.passed for c in report.comparisons[:2])
        with pytest.raises(AssertionError, match="leaves where hvp_fun is wrong"):
            assert_hvp_matches(net.loss, summed, params, v, x, y)


def test_refuses_a_direction_of_another_shape():
    with jax.enable_x64(True):
        net, params, x, y, v = _tanh_net()
        with pytest.raises(ValueError, match="v returned the wrong shape"):
            check_hvp(net.loss, net_hvp(net), params, v[:1] + [params[0]], x, y)


def test_doctests():
    assert doctest.testmod(check).failed == 0
