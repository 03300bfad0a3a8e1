"""Per-example gradients, norms and DP-SGD clipping: time and memory against vmap(grad).

For each network and batch size, every method below is compiled with ``jax.jit``,
warmed up, then timed round-robin (one call of each method per round, so machine noise
hits all of them alike) with ``block_until_ready``; the median over the rounds is
reported. Inputs are synthetic pixels in ``[0, 1]`` with random labels (the timing
does not depend on the values).

Methods (``jaxbp.per_example`` unless said otherwise):

* ``autodiff_vmap_grad``: ``jax.vmap(jax.grad(loss_i))``, materialised;
* ``manual_materialised``: per-example outer products ``a_i (x) delta_i`` of the
  hand-derived deltas (``per_example_grads(method="manual")``);
* ``manual_vmap_backward``: ``jax.vmap`` of the hand-derived backward of one example;
* ``norms_materialised``: the norms of the manual materialised gradients
  (``vmap(optax.tree.norm)``), the reference for the next line;
* ``norms``: ``per_example_grad_norms``, ``||a_i||^2 ||delta_i||^2`` (Goodfellow
  2015), nothing materialised;
* ``clipped``: ``clipped_grad`` with zero noise, nothing materialised;
* ``clipped_noise``: ``clipped_grad`` with ``noise_multiplier=1``;
* ``optax_dp_vmap_grad``: ``optax.contrib.differentially_private_aggregate`` (with
  ``noise_multiplier=1``) applied to ``vmap(grad)`` per-example gradients;
* ``batch_manual_grad``: the ordinary batch gradient ``net.value_and_manual_grad``,
  for scale.

Memory: the bytes of the materialised per-example gradient (``B x num_params``
floats), the largest arrays of the non-materialised path (activations and deltas,
``B x sum(n_l)``, and one gradient, ``num_params``), and the compiled programs' own
accounting from ``jax.jit(f).lower(...).compile().memory_analysis()``
(``temp_size_in_bytes``: scratch XLA allocates; ``output_size_in_bytes``).

Targets (issue 5, at batch 128): materialised per-example gradients in at most 15 ms
(784-100-10) and 110 ms (784-512-512-10); norms and clipping without materialising at
least 5x faster than the materialised per-example gradients. PyTorch
(``torch.func.vmap(grad)``) is timed only when ``import torch`` works.

Materialised arrays are dominated by writing fresh memory: XLA allocates each call's
output anew and glibc ``malloc`` serves allocations over 32 MiB with ``mmap``, so every
call pays a page fault per 4 KiB of output (slow in a VM). ``--hugepages`` reruns the
script with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` so that ``malloc`` asks for
transparent huge pages, and writes ``*_hugepages.json``/``.png`` beside the default run.

Examples:
  python experiments/per_example_bench.py            # both nets, batch 128 and 256
  python experiments/per_example_bench.py --hugepages  # the same, huge-page malloc
  python experiments/per_example_bench.py --quick    # seconds, smoke test
"""

import argparse
import os
import pathlib
import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

import jaxbp
from jaxbp import per_example

NETS = {
    "small": ((784, 100, 10), "sigmoid"),
    "large": ((784, 512, 512, 10), "relu"),
}
#: (net, batch) configurations of a full run; batch 256 is the issue's memory check.
FULL_CONFIGS = (("small", 128), ("large", 128), ("large", 256))
QUICK_CONFIGS = (("small", 16),)
#: Materialised per-example gradients at batch 128: at most this many ms.
MATERIALISED_MAX_MS = {"small": 15.0, "large": 110.0}
#: Norms and clipping without materialising: at least this much faster.
NON_MATERIALISED_MIN_SPEEDUP = 5.0
#: The issue's reference timings on "this machine" at batch 128, in ms.
ISSUE_REFERENCE_MS = {
    "small": {"jax vmap(grad)": 35, "torch.func vmap(grad)": 19, "vmap manual": 14.5},
    "large": {"jax vmap(grad)": 240, "torch.func vmap(grad)": 128, "vmap manual": 100},
}
L2_NORM_CLIP = 1.0
NOISE_MULTIPLIER = 1.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds after the warm-up (default 9; 3 with --quick)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="comma list of net:batch, nets small (784-100-10 sigmoid) and large "
        "(784-512-512-10 ReLU) (default small:128,large:128,large:256; small:16 "
        "with --quick)",
    )
    parser.add_argument(
        "--hugepages",
        action="store_true",
        help="rerun this script under GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc "
        ">= 2.35), so that malloc asks for transparent huge pages: the materialised "
        "arrays then cost far fewer page faults; results go to *_hugepages.json",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only, write no result files"
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 9
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.configs is None:
        configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    else:
        configs = []
        for item in args.configs.split(","):
            name, _, batch = item.strip().partition(":")
            if name not in NETS or not batch.isdigit() or int(batch) < 1:
                parser.error(f"bad config {item!r}; use e.g. large:256")
            configs.append((name, int(batch)))
    args.configs = tuple(configs)
    return args


# --------------------------------------------------------------------------- methods
def make_methods(net: jaxbp.MLP) -> dict:
    """The jitted ``(params, x, y) -> result`` of every method, by name."""
    key = jax.random.key(0)
    tx = optax.contrib.differentially_private_aggregate(
        L2_NORM_CLIP, NOISE_MULTIPLIER, key
    )

    def autodiff_vmap_grad(params, x, y):
        return per_example.per_example_grads(net, params, x, y, method="autodiff")

    def manual_materialised(params, x, y):
        return per_example.per_example_grads(net, params, x, y, method="manual")

    def manual_vmap_backward(params, x, y):
        def one(x_i, y_i):
            return net.manual_grad(params, x_i[None], y_i[None])

        return jax.vmap(one)(x, y)

    def norms_materialised(params, x, y):
        return jax.vmap(optax.tree.norm)(manual_materialised(params, x, y))

    def norms(params, x, y):
        return per_example.per_example_grad_norms(net, params, x, y)

    def clipped(params, x, y):
        return per_example.clipped_grad(net, params, x, y, l2_norm_clip=L2_NORM_CLIP)

    def clipped_noise(params, x, y):
        return per_example.clipped_grad(
            net,
            params,
            x,
            y,
            l2_norm_clip=L2_NORM_CLIP,
            noise_multiplier=NOISE_MULTIPLIER,
            key=key,
        )

    def optax_dp_vmap_grad(params, x, y):
        updates, _ = tx.update(autodiff_vmap_grad(params, x, y), tx.init(params))
        return updates

    def batch_manual_grad(params, x, y):
        return net.value_and_manual_grad(params, x, y)

    methods = {
        f.__name__: jax.jit(f)
        for f in (
            autodiff_vmap_grad,
            manual_materialised,
            manual_vmap_backward,
            norms_materialised,
            norms,
            clipped,
            clipped_noise,
            optax_dp_vmap_grad,
            batch_manual_grad,
        )
    }
    return methods


def make_torch_method(sizes, activation, batch):
    """``torch.func.vmap(grad)`` per-example gradients, or None without torch."""
    try:
        import torch
        from torch.func import functional_call, grad, vmap
    except ImportError:
        return None
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    if activation == "sigmoid":
        layers = [torch.nn.Sigmoid() if isinstance(m, torch.nn.ReLU) else m
                  for m in layers]  # fmt: skip
    model = torch.nn.Sequential(*layers[:-1])
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.rand(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))

    def loss(p, x_i, y_i):
        out = functional_call(model, p, (x_i[None],))
        return torch.nn.functional.cross_entropy(out, y_i[None])

    per_example_grad = vmap(grad(loss), in_dims=(None, 0, 0))
    return lambda: per_example_grad(params, x, y)


# --------------------------------------------------------------------------- measuring
def memory_of(compiled) -> dict | None:
    """The compiled program's memory accounting in bytes, or None where unsupported."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    fields = (
        "temp_size_in_bytes",
        "output_size_in_bytes",
        "argument_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    return {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}


def bench_config(name: str, batch: int, repeats: int) -> dict:
    """Times and sizes every method on one network at one batch size."""
    sizes, activation = NETS[name]
    net = jaxbp.MLP(sizes=sizes, activation=activation)
    params = net.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, sizes[-1], size=batch), jnp.int32)

    methods = make_methods(net)
    compiled, compile_s, memory = {}, {}, {}
    for method, fn in methods.items():
        t0 = time.perf_counter()
        compiled[method] = fn.lower(params, x, y).compile()
        compile_s[method] = time.perf_counter() - t0
        memory[method] = memory_of(compiled[method])
    calls = {
        method: (lambda fn=fn: fn(params, x, y)) for method, fn in compiled.items()
    }
    torch_fn = make_torch_method(sizes, activation, batch)
    if torch_fn is not None:
        calls["torch_func_vmap_grad"] = torch_fn
    # One call of each method per round, so that machine noise hits all alike.
    with _common.OtherLoad() as load:
        times = _common.time_interleaved(calls, repeats=repeats, number=1)

    itemsize = jnp.dtype(jnp.float32).itemsize
    materialised_bytes = batch * net.num_params * itemsize
    # Largest arrays of the non-materialised path: every a_l and z_l and delta_l of the
    # batch, plus one parameter-sized gradient.
    cache_bytes = batch * (2 * sum(sizes) + sum(sizes[1:])) * itemsize
    grad_bytes = net.num_params * itemsize
    return {
        "net": name,
        "sizes": list(sizes),
        "activation": activation,
        "objective": net.objective,
        "batch": batch,
        "num_params": net.num_params,
        "repeats": repeats,
        "median_ms": {m: 1e3 * t["median_s"] for m, t in times.items()},
        "min_ms": {m: 1e3 * t["min_s"] for m, t in times.items()},
        "compile_s": compile_s,
        "other_processes_cores": load.cores,
        "memory": {
            "materialised_per_example_bytes": materialised_bytes,
            "non_materialised_cache_bytes": cache_bytes,
            "gradient_bytes": grad_bytes,
            "compiled": memory,
        },
    }


# --------------------------------------------------------------------------- report
def check_targets(results: list[dict]) -> list[dict]:
    """The issue's targets, each MET or NOT MET, at batch 128."""
    checks = []
    for r in results:
        if r["batch"] != 128:
            continue
        ms = r["median_ms"]
        limit = MATERIALISED_MAX_MS[r["net"]]
        materialised = ms["manual_materialised"]
        # The same time rescaled by how much slower vmap(grad) ran here than in the
        # issue's reference: a rough correction for a loaded or slower machine.
        scale = (
            ISSUE_REFERENCE_MS[r["net"]]["jax vmap(grad)"] / ms["autodiff_vmap_grad"]
        )
        checks.append({
            "target": f"{r['net']} b128 materialised per-example grads <= {limit} ms",
            "value": f"{materialised:.2f} ms (rescaled to the issue's vmap(grad): "
            f"{materialised * scale:.1f} ms)",
            "met": materialised <= limit,
        })  # fmt: skip
        for method in ("norms", "clipped"):
            speedup = materialised / ms[method]
            checks.append({
                "target": f"{r['net']} b128 {method} >= "
                f"{NON_MATERIALISED_MIN_SPEEDUP:g}x faster than materialised",
                "value": f"{speedup:.1f}x ({ms[method]:.2f} ms)",
                "met": speedup >= NON_MATERIALISED_MIN_SPEEDUP,
            })  # fmt: skip
    return checks


def print_report(results: list[dict], checks: list[dict]) -> None:
    for r in results:
        mem = r["memory"]
        print(
            f"\n{r['net']} {'-'.join(map(str, r['sizes']))} {r['activation']}, "
            f"batch {r['batch']}, {r['num_params']:,} params, median of "
            f"{r['repeats']} (other processes used "
            + (
                f"{r['other_processes_cores']:.2f} cores)"
                if r["other_processes_cores"] is not None
                else "? cores)"
            )
        )
        auto = r["median_ms"]["autodiff_vmap_grad"]
        print(f"  {'method':24s} {'median ms':>10s} {'vs vmap(grad)':>14s} "
              f"{'XLA temp MB':>12s} {'output MB':>10s}")  # fmt: skip
        for method, t in r["median_ms"].items():
            compiled = mem["compiled"].get(method) or {}
            temp = compiled.get("temp_size_in_bytes")
            out = compiled.get("output_size_in_bytes")
            temp_s = f"{temp / 1e6:12.1f}" if temp is not None else f"{'-':>12s}"
            out_s = f"{out / 1e6:10.2f}" if out is not None else f"{'-':>10s}"
            print(f"  {method:24s} {t:10.2f} {auto / t:13.1f}x {temp_s} {out_s}")
        materialised = mem["materialised_per_example_bytes"] / 1e6
        cache = mem["non_materialised_cache_bytes"] / 1e6
        print(
            f"  materialised per-example gradient: {materialised:.1f} MB; "
            f"non-materialised path's largest arrays: cache {cache:.2f} MB + "
            f"gradient {mem['gradient_bytes'] / 1e6:.2f} MB"
        )
    if checks:
        print("\ntargets (batch 128)")
        for c in checks:
            status = "MET" if c["met"] else "NOT MET"
            print(f"  {status:8s} {c['target']}: {c['value']}")


def plot(results: list[dict], path: pathlib.Path) -> bool:
    """Bar chart of the median times per configuration; False without matplotlib."""
    try:
        plt = _common.pyplot()
    except ImportError:
        return False
    fig, axes = plt.subplots(
        1, len(results), figsize=(5 * len(results), 4.5), squeeze=False
    )
    for ax, r in zip(axes[0], results, strict=True):
        names = list(r["median_ms"])
        values = [r["median_ms"][n] for n in names]
        colors = [
            "tab:green" if n in ("norms", "clipped", "clipped_noise") else "tab:blue"
            for n in names
        ]
        ax.barh(names, values, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("median ms per batch (log)")
        ax.set_title(f"{'-'.join(map(str, r['sizes']))}, batch {r['batch']}")
        if r["batch"] == 128:
            ax.axvline(MATERIALISED_MAX_MS[r["net"]], color="gray", ls="--", lw=1)
    fig.suptitle("per-example gradients on CPU (green: nothing materialised)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _read(path: str) -> str | None:
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return None


HUGEPAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def _reexec_with_hugepages() -> None:
    """Replaces this process by itself with malloc's huge-page tunable set."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if HUGEPAGES_TUNABLE in tunables.split(":"):
        return  # already set: glibc read it at start-up
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, HUGEPAGES_TUNABLE]))
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.hugepages:
        _reexec_with_hugepages()
    env = _common.environment(
        GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES"),
        transparent_hugepage=_read("/sys/kernel/mm/transparent_hugepage/enabled"),
    )
    if env["torch_version"] is None:
        print("torch is not importable: torch.func.vmap(grad) is skipped")
    results = []
    for name, batch in args.configs:
        print(f"benchmarking {name} at batch {batch} ...", flush=True)
        results.append(bench_config(name, batch, args.repeats))
    checks = check_targets(results)
    print_report(results, checks)
    if args.no_write:
        return 0
    stem = "per_example_bench" + ("_hugepages" if args.hugepages else "")
    result = {
        "command": _common.command_line(__file__, argv),
        "environment": env,
        "quick": args.quick,
        "l2_norm_clip": L2_NORM_CLIP,
        "noise_multiplier": NOISE_MULTIPLIER,
        "issue_reference_ms_batch128": ISSUE_REFERENCE_MS,
        "results": results,
        "targets": checks,
    }
    _common.write_json(args.out / f"{stem}.json", result)
    written = [f"{stem}.json"]
    if plot(results, args.out / f"{stem}.png"):
        written.append(f"{stem}.png")
    print(f"\nwrote {', '.join(str(args.out / w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
