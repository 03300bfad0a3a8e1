"""scale_by_kfac: the damped K-FAC preconditioner as an optax transformation."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from curvature_harness import setup

from jaxbp import MLP, Sequential
from jaxbp.curvature import kfac_factors, kfac_optim, scale_by_kfac
from jaxbp.layers import Activation, Conv2D, Dense, Flatten


def test_one_step_solves_the_damped_kronecker_system():
    with jax.enable_x64(True):
        net = MLP((3, 4, 2), "tanh", "identity", "softmax_cross_entropy")
        params, x, y, _ = setup(net, jnp.float64)
        lam = 1e-2
        opt = scale_by_kfac(net, damping=lam, update_every=1)
        grads = net.manual_grad(params, x, y)
        pre, _ = opt.update(grads, opt.init(params), params, x=x, y=y)
        factors = kfac_factors(net, params, x, y)
        for l in range(net.depth):
            a, g = factors[l]["A"], factors[l]["G"]
            damped = jnp.kron(
                a + np.sqrt(lam) * jnp.eye(len(a)), g + np.sqrt(lam) * jnp.eye(len(g))
            )
            theta = jnp.concatenate([grads[l]["w"], grads[l]["b"][None]], axis=0)
            want = jnp.linalg.solve(damped, theta.ravel()).reshape(theta.shape)
            np.testing.assert_allclose(pre[l]["w"], want[:-1], rtol=1e-9)
            np.testing.assert_allclose(pre[l]["b"], want[-1], rtol=1e-9)


def test_inverses_are_refreshed_every_k_steps():
    net = MLP((3, 4, 2), "tanh")
    params, x, y, _ = setup(net, jnp.float32)
    opt = scale_by_kfac(net, update_every=3)
    state = opt.init(params)
    grads = net.manual_grad(params, x, y)
    seen = []
    for step in range(4):
        xs = x * (1.0 + step)  # a different batch each step
        _, state = opt.update(grads, state, params, x=xs, y=y)
        seen.append(state.inverses[0]["A"])
    np.testing.assert_array_equal(seen[0], seen[1])
    np.testing.assert_array_equal(seen[0], seen[2])
    assert not np.allclose(seen[0], seen[3])


def _train(net, opt, params, x, y, steps):
    @jax.jit
    def step(params, state):
        loss, grads = net.value_and_manual_grad(params, x, y)
        updates, state = opt.update(grads, state, params, x=x, y=y)
        return optax.apply_updates(params, updates), state, loss

    state, losses = opt.init(params), []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return losses


def test_kfac_trains_an_mlp_and_a_conv_net():
    net = MLP((4, 8, 3), "tanh")
    params, x, y, _ = setup(net, jnp.float32)
    opt = optax.chain(
        scale_by_kfac(net, damping=1e-2, update_every=2), optax.scale(-0.5)
    )
    losses = _train(net, opt, params, x, y, 20)
    assert losses[-1] < 0.1 * losses[0], losses
    conv = Sequential(
        (Conv2D(2, 2), Activation("relu"), Flatten(), Dense(3)), input_shape=(4, 4, 1)
    )
    params = conv.init(jax.random.key(0))
    xc = jax.random.normal(jax.random.key(1), (6, 4, 4, 1))
    yc = jnp.arange(6) % 3
    opt = optax.chain(scale_by_kfac(conv, damping=1e-2), optax.scale(-0.5))
    losses = _train(conv, opt, params, xc, yc, 20)
    assert losses[-1] < 0.5 * losses[0], losses


def test_options_are_checked():
    net = MLP((3, 4, 2), "tanh")
    with pytest.raises(ValueError, match="damping must be a positive number"):
        scale_by_kfac(net, damping=0.0)
    with pytest.raises(ValueError, match="update_every must be a positive integer"):
        scale_by_kfac(net, update_every=0)
    params, x, y, _ = setup(net, jnp.float32)
    opt = scale_by_kfac(net, monte_carlo=True)
    with pytest.raises(ValueError, match="needs update"):
        opt.update(params, opt.init(params), params, x=x, y=y)


def test_doctests():
    assert doctest.testmod(kfac_optim).failed == 0
