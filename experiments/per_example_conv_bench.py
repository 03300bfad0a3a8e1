"""Per-example gradient norms of LeNet's convolutions: Gram form against materialising.

DP-SGD needs the norm of each example's gradient. For a convolution with unfolded
input patches ``P_i`` (``T`` output positions by ``K = kh kw C``) and output
cotangents ``D_i`` (``T`` by ``F``), example ``i``'s weight gradient is
``P_i^T D_i`` and its squared norm can be taken two ways
(:func:`jaxbp.per_example_layers.conv_weight_sq_norms`):

* ``gram``: ``sum((P_i P_i^T) * (D_i D_i^T))``, two ``T x T`` matrices per example
  and no ``K x F`` one (``T^2 (K + F)`` multiply-adds);
* ``materialise``: ``P_i^T D_i`` formed, ``(B, K, F)``, then squared (``T K F``).

For Caffe's LeNet (conv 5x5x20, max-pool 2, conv 5x5x50, max-pool 2, dense 500, ReLU,
dense 10) on 28x28x1 inputs, at each batch size this times:

1. each convolution's norms alone, from the real ``P`` and ``D`` of one manual
   backward pass (``T = 576, K = 25, F = 20`` and ``T = 64, K = 500, F = 50``);
2. the whole DP-SGD clipped gradient (``per_example.clipped_grad``, manual) with
   both convolutions' norms by ``gram``, by ``materialise`` and by ``auto`` (the
   library's default, which picks per layer: ``gram`` iff ``2 T^2 < K F``), beside
   ``per_example_grad_norms`` (auto), the ordinary batch gradient
   (``value_and_manual_grad``) and ``clipped_grad(method="autodiff")``
   (``vmap(grad)``, materialised).

Every function is compiled first, then all are timed interleaved (one call of each per
round, ``number`` calls per sample), and the median is reported; the cores other
processes kept busy during the timing are recorded (``other_load_cores``). The
compiled programs' scratch memory (``memory_analysis().temp_size_in_bytes``) is
recorded for the whole-step variants. With ``--quick`` the whole step is only the
default clipped gradient and the batch gradient.

Examples:
  python experiments/per_example_conv_bench.py          # batch 64 and 128
  python experiments/per_example_conv_bench.py --quick  # seconds, smoke test
"""

import sys

import _common
import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import per_example, per_example_layers
from jaxbp.layers import Activation, Conv2D, Dense, Flatten, MaxPool2D
from jaxbp.sequential import Sequential

LENET = (
    Conv2D(20, 5),
    MaxPool2D(2),
    Conv2D(50, 5),
    MaxPool2D(2),
    Flatten(),
    Dense(500),
    Activation("relu"),
    Dense(10),
)
CONV_INDICES = (0, 2)
METHODS = ("gram", "materialise")
L2_NORM_CLIP = 1.0


def parse_args(argv=None):
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--batches",
        default=None,
        help="comma list of batch sizes (default 64,128; 8 with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds after the warm-up (default 15; 2 with --quick)",
    )
    parser.add_argument(
        "--number",
        type=int,
        default=None,
        help="calls per timed sample (default 3; 1 with --quick)",
    )
    args = parser.parse_args(argv)
    default = "8" if args.quick else "64,128"
    try:
        args.batches = tuple(int(b) for b in (args.batches or default).split(","))
    except ValueError:
        parser.error(f"--batches must be integers, got {args.batches!r}")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 15
    if args.number is None:
        args.number = 1 if args.quick else 3
    if min(args.batches) < 1 or args.repeats < 1 or args.number < 1:
        parser.error("--batches, --repeats and --number must be positive")
    return args


def lenet_batch(batch: int, seed: int = 0):
    """LeNet, its parameters, and synthetic pixels in [0, 1] with random labels."""
    net = Sequential(LENET, input_shape=(28, 28, 1))
    params = net.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(batch, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    return net, params, x, y


def conv_operands(net, params, x, y) -> list[tuple]:
    """``(P, D)`` of each convolution: patches and per-example output cotangents."""
    x, targets = net.check_batch(params, x, y)
    (_, caches, _), deltas = net.deltas(params, x, targets, batch_mean=False)
    operands = []
    for i in CONV_INDICES:
        patches = per_example_layers.conv_patches(net.layers[i], caches[i])
        d = deltas[i]
        operands.append((patches, d.reshape(d.shape[0], -1, d.shape[-1])))
    return operands


def compiled(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` (traced now, under the rules in force)."""
    return jax.jit(fn).lower(*args).compile()


def whole_step_functions(net, params, x, y, quick: bool) -> tuple[dict, dict]:
    """Compiled whole-network functions, and their scratch bytes, by name (with
    ``quick``, only the default clipped gradient and the batch gradient)."""
    fns = {}
    for method in ("auto",) if quick else ("auto", *METHODS):
        # The rule is looked up while tracing: compile fresh functions (JAX caches
        # the trace of a function it has seen) under the rule in force.
        per_example_layers.register_rule(Conv2D, per_example_layers.conv2d_rule(method))
        try:
            fns[f"clipped_{method}"] = compiled(
                lambda p, x, y: per_example.clipped_grad(
                    net, p, x, y, l2_norm_clip=L2_NORM_CLIP
                ),
                params,
                x,
                y,
            )
            if method == "auto" and not quick:
                fns["norms_auto"] = compiled(
                    lambda p, x, y: per_example.per_example_grad_norms(net, p, x, y),
                    params,
                    x,
                    y,
                )
        finally:
            per_example_layers.register_rule(Conv2D, per_example_layers.conv2d_rule())
    fns["batch_manual_grad"] = compiled(net.value_and_manual_grad, params, x, y)
    if quick:
        return fns, {}
    fns["clipped_autodiff"] = compiled(
        lambda p, x, y: per_example.clipped_grad(
            net, p, x, y, l2_norm_clip=L2_NORM_CLIP, method="autodiff"
        ),
        params,
        x,
        y,
    )
    temp = {
        name: fn.memory_analysis().temp_size_in_bytes
        for name, fn in fns.items()
        if fn.memory_analysis() is not None
    }
    return fns, temp


def bench_conv(name: str, patches, delta, repeats: int, number: int) -> dict:
    """Times both ways of one convolution's per-example weight norms."""
    _, t, k = patches.shape
    f = delta.shape[-1]
    fns = {
        m: compiled(
            lambda p, d, m=m: per_example_layers.conv_weight_sq_norms(p, d, method=m),
            patches,
            delta,
        )
        for m in METHODS
    }
    check = {m: np.asarray(fn(patches, delta)) for m, fn in fns.items()}
    rel = float(
        np.max(np.abs(check["gram"] - check["materialise"]))
        / np.max(np.abs(check["materialise"]))
    )
    with _common.OtherLoad() as load:
        times = _common.time_interleaved(
            {m: (lambda fn=fn: fn(patches, delta)) for m, fn in fns.items()},
            repeats=repeats,
            number=number,
        )
    return {
        "layer": name,
        "positions_T": t,
        "patch_K": k,
        "features_F": f,
        "gram_madds_per_example": t * t * (k + f),
        "materialise_madds_per_example": t * k * f,
        "auto_picks": per_example_layers.conv_norm_method(t, k, f),
        "median_ms": {m: 1e3 * v["median_s"] for m, v in times.items()},
        "min_ms": {m: 1e3 * v["min_s"] for m, v in times.items()},
        "gram_vs_materialise_max_rel_diff": rel,
        "other_load_cores": load.cores,
    }


def bench_batch(batch: int, repeats: int, number: int, quick: bool) -> dict:
    net, params, x, y = lenet_batch(batch)
    # 1. each convolution's norms alone
    record = {
        "batch": batch,
        "convs": [
            bench_conv(
                f"layer {i + 1} {net.layers[i]}", patches, delta, repeats, number
            )
            for i, (patches, delta) in zip(
                CONV_INDICES, conv_operands(net, params, x, y), strict=True
            )
        ],
    }
    # 2. the whole clipped gradient
    fns, temp = whole_step_functions(net, params, x, y, quick)
    with _common.OtherLoad() as load:
        times = _common.time_interleaved(
            {name: (lambda fn=fn: fn(params, x, y)) for name, fn in fns.items()},
            repeats=repeats,
            number=number,
        )
    record["whole_step"] = {
        "median_ms": {name: 1e3 * v["median_s"] for name, v in times.items()},
        "min_ms": {name: 1e3 * v["min_s"] for name, v in times.items()},
        "temp_bytes": temp,
        "other_load_cores": load.cores,
    }
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    results = []
    for batch in args.batches:
        results.append(bench_batch(batch, args.repeats, args.number, args.quick))
        r = results[-1]
        for conv in r["convs"]:
            ms = conv["median_ms"]
            print(
                f"batch {batch} {conv['layer']} (T={conv['positions_T']}, "
                f"K={conv['patch_K']}, F={conv['features_F']}): gram "
                f"{ms['gram']:.2f} ms, materialise {ms['materialise']:.2f} ms; auto "
                f"picks {conv['auto_picks']}"
            )
        whole = ", ".join(
            f"{k} {v:.1f}" for k, v in r["whole_step"]["median_ms"].items()
        )
        print(f"batch {batch} whole step (ms): {whole}")
    record = {
        "command": _common.command_line(__file__, argv),
        "environment": _common.environment(),
        "quick": args.quick,
        "repeats": args.repeats,
        "number": args.number,
        "l2_norm_clip": L2_NORM_CLIP,
        "results": results,
    }
    path = _common.write_json(args.out / "per_example_conv_bench.json", record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
