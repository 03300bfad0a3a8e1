"""Training with ``optimizer="kfac"``: the step passes the batch, refusals, resume."""

import dataclasses
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbp import MLP, checkpoint, optim, train
from jaxbp.config import TrainConfig, fit, setup
from jaxbp.curvature import ScaleByKFACState, scale_by_kfac

NUM_TRAIN = 200
_rng = np.random.default_rng(0)
# Two informative pixels per class, so a few steps visibly lower the loss.
_y = (np.arange(NUM_TRAIN) % 10).astype(np.int32)
_x = _rng.random((NUM_TRAIN, 784)).astype(np.float32) * 0.1
_x[np.arange(NUM_TRAIN), _y] += 1.0
TRAIN = TEST = (_x, _y)
SMALL = TrainConfig(
    hidden=(8,), optimizer="kfac", batch_size=50, epochs=2, schedule="constant"
)


def _trees_equal(a, b) -> bool:
    return all(
        np.array_equal(u, v)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_kfac_config_trains_and_the_loss_falls():
    run = setup(SMALL, train_data=TRAIN, test_data=TEST)
    before = run.net.loss(run.state.params, jnp.asarray(_x), jnp.asarray(_y))
    state, logs, _ = fit(run)
    after = run.net.loss(state.params, jnp.asarray(_x), jnp.asarray(_y))
    assert int(state.step) == 8 and float(after) < 0.75 * float(before)
    assert logs[-1].test_accuracy > 0.3  # chance: 0.1
    assert isinstance(state.opt_state[0], ScaleByKFACState)


def test_train_step_matches_a_hand_composed_kfac_loop():
    net = MLP((6, 5, 3), "tanh")
    opt = optim.make_optimizer("kfac", 0.1, net=net)
    state = train.init_train_state(net, opt, jax.random.key(0))
    step = train.make_train_step(net, opt)
    hand = optax.chain(
        scale_by_kfac(net, damping=optim.KFAC_DAMPING), optax.scale(-0.1)
    )
    params, hand_state = state.params, hand.init(state.params)
    for i in range(3):  # the inverses of step 0 reused by steps 1, 2
        x = jax.random.normal(jax.random.key(i), (8, 6))
        y = jnp.arange(8) % 3
        state, _ = step(state, (x, y))
        grads = net.manual_grad(params, x, y)
        updates, hand_state = hand.update(grads, hand_state, params, x=x, y=y)
        params = optax.apply_updates(params, updates)
        chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
    # and the preconditioning did something: plain SGD at the same rate differs
    sgd = optax.sgd(0.1)
    plain = train.init_train_state(net, sgd, jax.random.key(0))
    plain_step = train.make_train_step(net, sgd)
    for i in range(3):
        x = jax.random.normal(jax.random.key(i), (8, 6))
        plain, _ = plain_step(plain, (x, jnp.arange(8) % 3))
    assert not np.allclose(plain.params[0]["w"], state.params[0]["w"], atol=1e-4)


def test_make_optimizer_kfac_needs_the_network():
    with pytest.raises(ValueError, match="kfac.*needs the network"):
        optim.make_optimizer("kfac", 0.1)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"dp_clip": 1.0}, "DP-SGD.*unclipped"),
        ({"grad": "feedback-alignment"}, "learning rule feedback-alignment"),
        ({"model": "dense(8),relu,dropout(0.5),dense(10)"}, "Dropout"),
        ({"model": "dense(8),bn,relu,dense(10)"}, "BatchNorm"),
    ],
)
def test_kfac_refuses_what_it_cannot_train(changes, match):
    if "model" in changes:
        changes = {"hidden": (100,), **changes}  # the MLP settings at their defaults
    with pytest.raises(ValueError, match=f"optimizer kfac.*{match}"):
        dataclasses.replace(SMALL, **changes)


def test_kfac_resume_from_a_checkpoint_is_bitwise(tmp_path):
    run = setup(SMALL, train_data=TRAIN, test_data=TEST)
    states = []
    whole, _, _ = fit(run, on_epoch=lambda state, log: states.append(state))
    path = checkpoint.save_checkpoint(tmp_path / "checkpoint.npz", states[0], run.net)
    restored, _ = checkpoint.restore_train_state(path, run.state)
    assert int(restored.opt_state[0].count) == 4
    assert _trees_equal(restored.opt_state, states[0].opt_state)
    resumed, _, _ = fit(run._replace(state=restored), start_epoch=1)
    assert _trees_equal(resumed.params, whole.params)
    assert _trees_equal(resumed.opt_state, whole.opt_state)


_MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jaxbp import MLP, optim, parallel, train
assert jax.device_count() == 2
net = MLP((6, 5, 3), "tanh")
opt = optim.make_optimizer("kfac", 0.1, net=net)
start = train.init_train_state(net, opt, jax.random.key(0))
mesh = parallel.make_data_mesh(2)
runs = []
for m in (None, mesh):
    state = start if m is None else parallel.replicate(start, m)
    step = train.make_train_step(net, opt, mesh=m)
    for i in range(3):
        batch = (jax.random.normal(jax.random.key(i), (8, 6)), jnp.arange(8) % 3)
        state, _ = step(state, batch if m is None else parallel.global_batch(batch, m))
    runs.append(state)
for a, b in zip(*(jax.tree.leaves((s.params, s.opt_state)) for s in runs)):
    # float32: the devices' partial sums add in another order; inverses amplify it
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print("same")
"""


def test_kfac_on_a_mesh_matches_one_device():
    # The factors of the global batch, inside the compiled step: 2 CPU devices in a
    # subprocess (JAX fixes its device count when it starts).
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", _MESH_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr
