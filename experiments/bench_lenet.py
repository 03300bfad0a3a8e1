"""LeNet speed: the hand-derived backward against jax.grad, a step and an epoch.

For Caffe's LeNet (``jaxbp train --model lenet``) at batch 64 and 128, on random
MNIST-shaped data, measures in one process, interleaved (manual, autodiff, manual, ...)
with the median of ``--repeats`` rounds:

* ``step``: one jitted training step (gradient and Adam update), called alone;
* ``scan``: ``--steps`` training steps inside one compiled ``lax.scan``, the way
  ``jaxbp.train.make_train_epoch`` runs an epoch, per step;
* the peak memory XLA plans for one compiled step (``compiled.memory_analysis()``:
  arguments, outputs and temporaries);
* ``epoch``: whole training epochs of ``--epoch-examples`` examples (plain SGD, lr
  0.01, a fresh shuffle each epoch), round-robin, median of ``--repeats``:
  ``jaxbp-manual`` and ``jaxbp-autodiff`` are ``jaxbp.train.make_train_epoch``, the
  path ``jaxbp train`` takes (autodiff with the loop :func:`jaxbp.train.default_loop`
  picks: on a CPU, one compiled call per step); ``torch`` and ``torch-compile`` the
  same network in PyTorch eager and ``torch.compile`` (skipped if ``import torch``
  fails); and ``bound``, only the step's own convolutions and matrix products
  scanned over the epoch (:func:`make_bound_epoch`). Each is reported as a fraction
  of the bound (bound epoch time / its epoch time).

It records the machine (CPU model, cores, load average) beside the results; compare
ratios within one run, never absolute times across machines.

Writes bench_lenet.json.

Example:
  python experiments/bench_lenet.py
"""

import functools
import sys
import time

import _baselines
import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from jaxbp import models, train

GRADS = ("manual", "autodiff")
#: Plain SGD's step size in the epoch race (every competitor).
LR = 0.01


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


def lenet() -> jaxbp.Sequential:
    return jaxbp.Sequential(models.parse(models.canonical("lenet")), (784,))


def make_jaxbp_epoch(x, y, batch: int, grad: str):
    """One epoch of ``jaxbp.train.make_train_epoch``; each call continues training."""
    net, optimizer = lenet(), optax.sgd(LR)
    state = train.init_train_state(net, optimizer, jax.random.key(0))
    epoch = train.make_train_epoch(
        net, optimizer, batch_size=batch, grad=grad, loop=train.default_loop(net, grad)
    )
    epoch = epoch.lower(state, x, y).compile()
    carry = [state]

    def run():
        carry[0], metrics = epoch(carry[0], x, y)
        jax.block_until_ready(metrics)

    return run


def make_torch_epoch(x, y, batch: int, *, compile: bool = False):
    """The same LeNet in PyTorch (NCHW), autograd and ``torch.optim.SGD``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )
    return _baselines.make_torch_model_epoch(model, x, y, batch, lr=LR, compile=compile)


def make_bound_epoch(x, batch: int):
    """Only the convolutions and matrix products of one LeNet step, over an epoch.

    Per batch (consecutive rows, no shuffle): the forward convolutions
    (``lax.conv_general_dilated``, as the layer's forward) and dense products, then
    the backward's products as the hand-derived backward writes them, on unfolded
    patches: each weight gradient ``patches^T @ delta`` and the second convolution's
    patch gradient ``delta @ W^T``, and the dense layers' weight gradients and
    deltas. Nothing else: no pooling, bias, activation, loss, unfolding or update;
    the unfolded patches are fixed arrays of the right shape, each output map stands
    in for its delta and a corner of each map for the pooled map after it. The
    weight gradients (and the patch gradient's sum) are added into the scan's carry
    so that XLA keeps every product. Its epoch time is the least these products take
    on this machine.
    """
    from jax import lax

    rng = np.random.default_rng(0)

    def normal(*shape, scale=0.1):
        return jnp.asarray(rng.normal(0, scale, shape), jnp.float32)

    w = [normal(5, 5, 1, 20), normal(5, 5, 20, 50), normal(800, 500), normal(500, 10)]
    patches1 = normal(batch * 24 * 24, 25)  # conv 1: (B*OH*OW, KH*KW*C)
    patches2 = normal(batch * 8 * 8, 500)
    num_batches = x.shape[0] // batch
    dims = ("NHWC", "HWIO", "NHWC")

    @jax.jit
    def epoch(w, x):
        def body(carry, i):
            g1, g2, g3, g4, s = carry
            xb = lax.dynamic_slice_in_dim(x, i * batch, batch).reshape(batch, 28, 28, 1)
            z1 = lax.conv_general_dilated(
                xb, w[0], (1, 1), "VALID", dimension_numbers=dims
            )
            z2 = lax.conv_general_dilated(
                z1[:, :12, :12], w[1], (1, 1), "VALID", dimension_numbers=dims
            )
            a2 = z2[:, :4, :4].reshape(batch, 800)
            h = a2 @ w[2]
            out = h @ w[3]
            g4 = g4 + h.T @ out  # dense 2: weight gradient
            dh = out @ w[3].T  # its delta
            g3 = g3 + a2.T @ dh  # dense 1
            d2 = z2.reshape(-1, 50)
            g2 = g2 + patches2.T @ d2  # conv 2: weight gradient
            s = s + jnp.sum(d2 @ w[1].reshape(500, 50).T)  # its patch gradient
            g1 = g1 + patches1.T @ z1.reshape(-1, 20)  # conv 1: weight gradient
            return (g1, g2, g3, g4, s), None

        init = (
            jnp.zeros((25, 20)),
            jnp.zeros((500, 50)),
            jnp.zeros((800, 500)),
            jnp.zeros((500, 10)),
            jnp.zeros(()),
        )
        return lax.scan(body, init, jnp.arange(num_batches))[0]

    compiled = epoch.lower(w, x).compile()
    return lambda: jax.block_until_ready(compiled(w, x))


def bench_epochs(batch: int, examples: int, repeats: int) -> dict:
    """Whole epochs, round-robin; medians and fractions of the bound."""
    x, y = data(examples, 1)
    x, y = x[0], y[0]
    runs = {
        "bound": lambda: make_bound_epoch(x, batch),
        "jaxbp-manual": lambda: make_jaxbp_epoch(x, y, batch, "manual"),
        "jaxbp-autodiff": lambda: make_jaxbp_epoch(x, y, batch, "autodiff"),
        "torch": lambda: make_torch_epoch(x, y, batch),
        "torch-compile": lambda: make_torch_epoch(x, y, batch, compile=True),
    }
    fns, first = {}, {}
    for name, make in runs.items():
        try:
            t0 = time.perf_counter()
            fns[name] = make()
            fns[name]()  # compiles (torch.compile: on its first call)
            first[name] = time.perf_counter() - t0
        except ImportError as e:
            print(f"skipping {name}: {e}", flush=True)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    steps = examples // batch
    row = {"batch": batch, "examples": examples, "steps": steps, "repeats": repeats}
    for name, epoch_s in med.items():
        row[name] = {
            "epoch_s": epoch_s,
            "ms_per_step": 1e3 * epoch_s / steps,
            "samples_per_s": steps * batch / epoch_s,
            "fraction_of_bound": med["bound"] / epoch_s,
            "first_epoch_s": first[name],
            "times_s": times[name],
        }
    row["epoch_ratio_manual_over_autodiff"] = (
        med["jaxbp-manual"] / med["jaxbp-autodiff"]
    )
    for peer in ("torch", "torch-compile"):
        if peer in med:
            row[f"speedup_over_{peer}"] = med[peer] / med["jaxbp-manual"]
    return row


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="rounds (5)")
    parser.add_argument("--steps", type=int, default=None, help="steps per scan (20)")
    parser.add_argument(
        "--epoch-examples",
        type=int,
        default=None,
        help="examples per epoch in the epoch race (12800)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    steps = args.steps or (3 if args.quick else 20)
    examples = args.epoch_examples or (256 if args.quick else 12_800)
    batches = (64,) if args.quick else (64, 128)
    rows, epochs = [], []
    for batch in batches:
        row = bench_epochs(batch, examples, repeats)
        epochs.append(row)
        print(
            f"batch {batch}, epochs of {examples} examples: "
            + ", ".join(
                f"{name} {row[name]['epoch_s']:.2f} s "
                f"({row[name]['fraction_of_bound']:.2f} of the bound)"
                for name in (
                    "bound",
                    "jaxbp-manual",
                    "jaxbp-autodiff",
                    "torch",
                    "torch-compile",
                )
                if name in row
            )
            + f"; manual/autodiff {row['epoch_ratio_manual_over_autodiff']:.3f}",
            flush=True,
        )
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
            "environment": _common.environment(),
            "rows": rows,
            "epochs": epochs,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
