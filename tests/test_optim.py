"""Optimizers and schedules by name: every one builds, descends, and bad names fail."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbp import MLP, optim


@pytest.mark.parametrize("name", [n for n in optim.OPTIMIZERS if n != "kfac"])
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_make_optimizer_builds_every_optimizer(name, schedule):
    optimizer = optim.make_optimizer(
        name, optim.DEFAULT_LEARNING_RATES[name], schedule=schedule, total_steps=10
    )
    assert isinstance(optimizer, optax.GradientTransformation)
    params = {"w": jnp.ones(3)}
    updates, _ = optimizer.update({"w": jnp.ones(3)}, optimizer.init(params), params)
    assert np.all(np.asarray(updates["w"]) < 0)  # a descent step


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_make_optimizer_builds_kfac_from_the_network(schedule):
    net = MLP((3, 4, 2), "tanh")
    lr = optim.DEFAULT_LEARNING_RATES["kfac"]
    optimizer = optim.make_optimizer(
        "kfac", lr, schedule=schedule, total_steps=10, net=net
    )
    assert isinstance(optimizer, optax.GradientTransformationExtraArgs)
    params = net.init(jax.random.key(0))
    x, y = jax.random.normal(jax.random.key(1), (5, 3)), jnp.array([0, 1, 1, 0, 1])
    grads = net.manual_grad(params, x, y)
    updates, _ = optimizer.update(grads, optimizer.init(params), params, x=x, y=y)
    # a descent direction: the damped inverse factors are positive definite
    assert float(optax.tree.vdot(updates, grads)) < 0


def test_cosine_schedule_decays_to_zero():
    optimizer = optim.make_optimizer("sgd", 0.5, schedule="cosine", total_steps=4)
    params = {"w": jnp.zeros(())}
    grads = {"w": jnp.ones(())}
    opt_state = optimizer.init(params)
    steps = []
    for _ in range(6):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        steps.append(float(-updates["w"]))
    expected = [0.25 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(6)]
    np.testing.assert_allclose(steps, expected, atol=1e-7)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("lbfgs", 0.1), {}, "unknown optimizer 'lbfgs'"),
        (("SGD", 0.1), {}, "unknown optimizer"),
        (("sgd", 0.0), {}, "learning rate must be positive"),
        (("adam", -1e-3), {}, "learning rate must be positive"),
        (("adam", float("nan")), {}, "learning rate must be positive"),
        (("sgd", 0.1), {"schedule": "cosine"}, "total_steps"),
        (("sgd", 0.1), {"schedule": "cosine", "total_steps": 0}, "total_steps"),
        (("sgd", 0.1), {"schedule": "linear"}, "unknown schedule 'linear'"),
    ],
)
def test_make_optimizer_rejects(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(*args, **kwargs)


def test_every_optimizer_has_a_default_learning_rate():
    assert set(optim.OPTIMIZERS) == set(optim.DEFAULT_LEARNING_RATES)
    assert all(lr > 0 for lr in optim.DEFAULT_LEARNING_RATES.values())
