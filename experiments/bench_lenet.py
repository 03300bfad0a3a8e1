"""LeNet speed: the hand-derived backward against jax.grad, a step and an epoch.

For Caffe's LeNet (``jaxbp train --model lenet``) at batch 64 and 128, on random
MNIST-shaped data, measures in one process, interleaved (manual, autodiff, manual, ...)
with the median of ``--repeats`` rounds:

* ``step``: one jitted training step (gradient and Adam update), called alone;
* ``scan``: ``--steps`` training steps inside one compiled ``lax.scan``, the way
  ``jaxbp.train.make_train_epoch`` runs an epoch, per step;
* the peak memory XLA plans for one compiled step (``compiled.memory_analysis()``:
  arguments, outputs and temporaries).

It records the machine (CPU model, cores, load average) beside the results; compare
ratios within one run, never absolute times across machines.

Writes bench_lenet.json.

Example:
  python experiments/bench_lenet.py
"""

import functools
import platform
import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from jaxbp import models

GRADS = ("manual", "autodiff")


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def value_and_grad(net, grad):
    if grad == "manual":
        return net.value_and_manual_grad
    return jax.value_and_grad(net.loss)


def make_step(net, optimizer, grad):
    vg = value_and_grad(net, grad)

    def step(carry, batch):
        params, opt_state = carry
        loss, grads = vg(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def data(batch: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(steps, batch, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=(steps, batch)), jnp.int32)
    return x, y


def bench(batch: int, steps: int, repeats: int) -> dict:
    net = jaxbp.Sequential(models.parse(models.canonical("lenet")), (784,))
    optimizer = optax.adam(1e-3)
    params = net.init(jax.random.key(0))
    carry = (params, optimizer.init(params))
    x, y = data(batch, steps)
    fns, memory = {}, {}
    for grad in GRADS:
        step = make_step(net, optimizer, grad)
        one = jax.jit(step)
        compiled = one.lower(carry, (x[0], y[0])).compile()
        mem = compiled.memory_analysis()
        memory[grad] = (
            None
            if mem is None
            else int(
                mem.argument_size_in_bytes
                + mem.output_size_in_bytes
                + mem.temp_size_in_bytes
            )
        )
        scan = jax.jit(functools.partial(jax.lax.scan, step))
        jax.block_until_ready(one(carry, (x[0], y[0])))
        jax.block_until_ready(scan(carry, (x, y)))
        fns[f"step {grad}"] = functools.partial(one, carry, (x[0], y[0]))
        fns[f"scan {grad}"] = functools.partial(scan, carry, (x, y))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    row = {"batch": batch, "steps": steps, "repeats": repeats}
    for grad in GRADS:
        row[f"step_ms_{grad}"] = 1e3 * med[f"step {grad}"]
        row[f"scan_ms_per_step_{grad}"] = 1e3 * med[f"scan {grad}"] / steps
        row[f"step_memory_bytes_{grad}"] = memory[grad]
    row["step_ratio_manual_over_autodiff"] = med["step manual"] / med["step autodiff"]
    row["scan_ratio_manual_over_autodiff"] = med["scan manual"] / med["scan autodiff"]
    return row


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="rounds (5)")
    parser.add_argument("--steps", type=int, default=None, help="steps per scan (20)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    steps = args.steps or (3 if args.quick else 20)
    batches = (64,) if args.quick else (64, 128)
    rows = []
    for batch in batches:
        row = bench(batch, steps, repeats)
        rows.append(row)
        print(
            f"batch {batch}: step manual {row['step_ms_manual']:.1f} ms, autodiff "
            f"{row['step_ms_autodiff']:.1f} ms (ratio "
            f"{row['step_ratio_manual_over_autodiff']:.2f}); in a scan, per step: "
            f"manual {row['scan_ms_per_step_manual']:.1f} ms, autodiff "
            f"{row['scan_ms_per_step_autodiff']:.1f} ms (ratio "
            f"{row['scan_ratio_manual_over_autodiff']:.3f}); planned memory of a "
            f"step: manual {row['step_memory_bytes_manual']}, autodiff "
            f"{row['step_memory_bytes_autodiff']} bytes",
            flush=True,
        )
    path = _common.write_json(
        args.out / "bench_lenet.json",
        {
            "command": _common.command_line(__file__, argv),
            "quick": args.quick,
            "cpu_model": _cpu_model(),
            "environment": _common.environment(),
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
