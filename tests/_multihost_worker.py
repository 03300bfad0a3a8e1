"""One process of a multi-process training run; run by ``tests/test_multihost.py``.

Usage::

    python tests/_multihost_worker.py OUT.npz --process-id I --num-processes P \\
        --coordinator 127.0.0.1:PORT --local-devices 2

With ``--num-processes 1`` (and no coordinator) it is the single-process reference:
one device, no mesh, the whole global batch each step. Otherwise every process joins
the job through ``jax.distributed.initialize``, builds a mesh over all global devices
and feeds only its own rows of each global batch
(``jax.make_array_from_process_local_data``). For each gradient (manual, autodiff) it
takes ``STEPS`` Adam steps on the same deterministic synthetic batches, then trains
two epochs with :func:`jaxbp.train.train_epochs` on a small dataset every process
holds whole, and saves the losses and final parameters to ``OUT``.
"""

import argparse

import jax

STEPS = 4
GLOBAL_BATCH = 16


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--local-devices", type=int, default=1)
    args = parser.parse_args()

    # Before JAX starts: CPU only, this many devices, gloo for cross-process
    # collectives on CPU.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.local_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")

    import numpy as np

    from jaxbp import optim, parallel, train
    from jaxbp.mlp import MLP

    multi = args.num_processes > 1
    if multi:
        parallel.initialize_distributed(
            args.coordinator, args.num_processes, args.process_id
        )
        assert jax.process_count() == args.num_processes
        assert jax.local_device_count() == args.local_devices
    mesh = parallel.make_data_mesh() if multi else None

    net = MLP((12, 16, 8, 5), activation="tanh")
    rng = np.random.default_rng(0)
    xs = rng.random((STEPS, GLOBAL_BATCH, net.sizes[0]), dtype=np.float32)
    ys = rng.integers(0, net.sizes[-1], size=(STEPS, GLOBAL_BATCH), dtype=np.int32)
    rows = GLOBAL_BATCH // args.num_processes
    mine = slice(args.process_id * rows, (args.process_id + 1) * rows)

    results = {}
    for grad in train.GRAD_KINDS:
        optimizer = optim.make_optimizer("adam", 0.01)
        state = train.init_train_state(net, optimizer, jax.random.key(0))
        if multi:
            state = parallel.replicate(state, mesh)
        step = train.make_train_step(net, optimizer, grad=grad, mesh=mesh)
        losses = []
        for i in range(STEPS):
            if multi:
                # Only this process's rows; JAX assembles the global batch.
                batch = parallel.global_batch((xs[i, mine], ys[i, mine]), mesh)
                assert batch[0].shape == (GLOBAL_BATCH, net.sizes[0])
            else:
                batch = (xs[i], ys[i])
            state, metrics = step(state, batch)
            losses.append(np.asarray(metrics["loss"].addressable_data(0)))
        results[f"{grad}/loss"] = np.asarray(losses)
        for l, layer in enumerate(state.params):
            for name, leaf in layer.items():
                assert leaf.is_fully_replicated
                results[f"{grad}/params/{l}/{name}"] = np.asarray(
                    leaf.addressable_data(0)
                )

    # Whole epochs with train_epochs: every process holds the whole (small)
    # dataset, which train_epochs replicates; each device gathers its rows of every
    # batch.
    x = rng.integers(0, 256, size=(72, net.sizes[0]), dtype=np.uint8)
    y = rng.integers(0, net.sizes[-1], size=(72,), dtype=np.int32)
    optimizer = optim.make_optimizer("adam", 0.01)
    state, logs, _ = train.train_epochs(
        net,
        optimizer,
        train.init_train_state(net, optimizer, jax.random.key(1)),
        (x, y),
        epochs=2,
        batch_size=GLOBAL_BATCH,
        test_data=(x[:30], y[:30]),
        mesh=mesh,
    )
    results["fit/test_loss"] = np.asarray([log.test_loss for log in logs])
    for l, layer in enumerate(state.params):
        for name, leaf in layer.items():
            results[f"fit/params/{l}/{name}"] = np.asarray(leaf.addressable_data(0))
    np.savez(args.out, **results)
    if multi:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
