"""Trains on 1, 2 and 4 simulated CPU devices; run by ``tests/test_parallel.py``.

Usage: ``python tests/_parallel_worker.py OUT.npz``. JAX must start with four CPU
devices, so this runs in its own process. For each gradient (manual, autodiff) it
computes one batch gradient, trains by single steps (:func:`make_train_step`) with SGD,
DP-SGD and Adam, and by whole epochs (:func:`train_epochs`, which also evaluates)
with Adam, each from the same start without a mesh (one device) and on meshes of 2 and 4
devices, and saves every result to ``OUT`` under
``"<case>/<grad>/<optimizer>/<devices>/<name>"`` (``devices`` 0 for no mesh). A mesh
of one device is tested in the pytest process.
"""

import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxbp import optim, parallel, train  # noqa: E402
from jaxbp.mlp import MLP  # noqa: E402

NET = MLP((12, 16, 8, 5), activation="tanh")
BATCH = 16
STEPS = 5
DEVICE_COUNTS = (0, 2, 4)  # 0: no mesh, the single-device code path


def _data(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, NET.sizes[0]), dtype=np.uint8)
    y = rng.integers(0, NET.sizes[-1], size=(n,), dtype=np.int32)
    return x, y


def _optimizer(name):
    return optim.make_optimizer(name, 0.05 if name == "sgd" else 0.01)


def _save(results, prefix, tree):
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        results[f"{prefix}/{i}"] = np.asarray(leaf)


def main(out):
    assert jax.device_count() == 4, jax.devices()
    x, y = _data(0, 100)  # 6 batches of 16 per epoch, 4 examples left over
    xt, yt = _data(1, 37)  # not a multiple of any evaluation batch
    xs = jnp.asarray(x[: STEPS * BATCH] / 255.0, jnp.float32).reshape(STEPS, BATCH, -1)
    ys = jnp.asarray(y[: STEPS * BATCH]).reshape(STEPS, BATCH)
    params = NET.init(jax.random.key(0))
    results = {}
    for grad in train.GRAD_KINDS:
        for n in DEVICE_COUNTS:
            # The gradient of one batch.
            mesh = parallel.make_data_mesh(n) if n else None
            value_and_grad = train.value_and_grad_fn(NET, grad)
            if mesh is not None:
                value_and_grad = parallel.data_parallel(value_and_grad, mesh)
            loss, grads = jax.jit(value_and_grad)(params, xs[0], ys[0])
            results[f"grad/{grad}/-/{n}/loss"] = np.asarray(loss)
            _save(results, f"grad/{grad}/-/{n}/grads", grads)

        for opt_name in ("sgd", "adam"):
            optimizer = _optimizer(opt_name)
            start = train.init_train_state(NET, optimizer, jax.random.key(0))
            for n in DEVICE_COUNTS:
                mesh = parallel.make_data_mesh(n) if n else None
                tag = f"{grad}/{opt_name}/{n}"

                # Single steps; with a mesh the batches arrive split over devices.
                state = start
                if mesh is not None:
                    state = parallel.replicate(state, mesh)
                step = train.make_train_step(NET, optimizer, grad=grad, mesh=mesh)
                losses = []
                for i in range(STEPS):
                    batch = (xs[i], ys[i])
                    if mesh is not None:
                        batch = parallel.global_batch(batch, mesh)
                    state, metrics = step(state, batch)
                    losses.append(metrics["loss"])
                results[f"step/{tag}/loss"] = np.asarray(losses)
                _save(results, f"step/{tag}/params", state.params)
                if n == 2 and grad == "manual" and opt_name == "sgd":
                    hlo = step.lower(state, batch).compile().as_text()
                    results["hlo_has_all_reduce"] = np.asarray("all-reduce" in hlo)

                if opt_name == "sgd":
                    # DP-SGD steps: per-device clipped means, one noise draw.
                    dp = train.DPConfig(l2_norm_clip=0.5, noise_multiplier=0.7)
                    dp_step = train.make_train_step(
                        NET, optimizer, grad=grad, mesh=mesh, dp=dp
                    )
                    state = start
                    if mesh is not None:
                        state = parallel.replicate(state, mesh)
                    for i in range(STEPS):
                        state, _ = dp_step(state, (xs[i], ys[i]))
                    _save(results, f"dp/{tag}/params", state.params)

                if opt_name != "adam":
                    continue
                # Whole epochs (a scan that gathers each batch) with evaluation.
                state, logs, _ = train.train_epochs(
                    NET,
                    optimizer,
                    start,
                    (x, y),
                    epochs=2,
                    batch_size=BATCH,
                    grad=grad,
                    test_data=(xt, yt),
                    eval_batch_size=10,
                    mesh=mesh,
                )
                for name in ("train_loss", "test_loss", "test_accuracy"):
                    value = [getattr(log, name) for log in logs]
                    results[f"fit/{tag}/{name}"] = np.asarray(value)
                results[f"fit/{tag}/step"] = np.asarray(state.step)
                _save(results, f"fit/{tag}/params", state.params)
                _save(results, f"fit/{tag}/opt_state", state.opt_state)
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
