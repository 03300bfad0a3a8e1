"""Curvature by hand: each quantity's matrix-product FLOPs and time over the gradient's.

For 784-100-10 and 784-512-512-10 ReLU MLPs and Caffe's LeNet, batch 128, softmax
cross-entropy, random MNIST-shaped data, in one process:

* counts the FLOPs of the matrix products and convolutions (``dot_general`` and
  ``conv_general_dilated``, ``2 M N K`` each, read off the jaxpr after dead-code
  elimination, a scan's body times its length) of each quantity and of the manual
  gradient: the ratio is the floor a quantity's time can reach as a multiple of the
  gradient's;
* times each (jitted; interleaved, median of ``--repeats`` rounds of ``--number``
  calls) as a multiple of the manual gradient's, beside its autodiff counterpart where
  one is practical: ``jax.jvp(jax.grad)`` for ``hvp``; ``jax.jvp`` of the network, the
  loss Hessian by ``jax.jvp(jax.grad)`` in the output, then ``jax.vjp`` for
  ``ggn_vp``; ``jax.vmap(jax.grad)`` of each column's per-example products, squared,
  for the GGN diagonals; for the Kronecker factors, ``G`` from ``jax.vjp`` to zero
  offsets on each layer's output, ``vmap``-ed over the factor's columns
  (:func:`autodiff_kfac`). ``diag_hessian`` is timed for the MLPs only (it is for
  MLPs) and has no autodiff twin here.

Writes bench_curvature.json (``--flops-only``: bench_curvature_flops.json, no
timing). Compare ratios within one run, never absolute times across machines.
``--quick`` runs a 784-32-10 MLP at batch 16, once.

Example:
  python experiments/bench_curvature.py --repeats 5
"""

import functools
import math
import sys

import _common
import jax
import jax.numpy as jnp
import numpy as np
from jax._src.interpreters import partial_eval as pe
from jax.extend import core as jax_core

import jaxbp
from jaxbp import losses, models
from jaxbp.curvature import network as curvature_network
from jaxbp.layers import Conv2D, Dense
from jaxbp.per_example_layers import conv_patches

BATCH = 128


# ------------------------------------------------------------------ FLOP counting
def _conv_flops(eqn) -> int:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    # 2 * (output entries) * (kernel entries per output feature)
    return 2 * math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]


def _dot_flops(eqn) -> int:
    (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    batch = math.prod(lhs[d] for d in lb)
    contract = math.prod(lhs[d] for d in lc)
    free_l = math.prod(lhs) // (batch * contract)
    free_r = math.prod(rhs) // (batch * contract)
    return 2 * batch * contract * free_l * free_r  # 2 M N K per batch entry


def _jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        inner = 0
        for value in eqn.params.values():
            subs = value if isinstance(value, tuple | list) else (value,)
            counts = [
                _jaxpr_flops(getattr(s, "jaxpr", s))
                for s in subs
                if isinstance(s, jax_core.ClosedJaxpr | jax_core.Jaxpr)
            ]
            inner += max(counts, default=0)  # the costliest branch of a cond
        total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def matmul_flops(fn, *args) -> int:
    """FLOPs of the matrix products and convolutions of ``fn(*args)``, counted after
    dead-code elimination (as XLA compiles it: a backward pass run only for its
    deltas computes no parameter gradients)."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    jaxpr, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))  # internal JAX API
    return _jaxpr_flops(jaxpr)


# ------------------------------------------------------------------ autodiff twins
def autodiff_hvp(net, params, x, y, v):
    return jax.jvp(lambda p: jax.grad(net.loss)(p, x, y), (params,), (v,))[1]


def autodiff_ggn_vp(net, params, x, y, v):
    x, targets = net.check_batch(params, x, y)
    forward = lambda p: net.forward(p, x)  # noqa: E731
    out, jv = jax.jvp(forward, (params,), (v,))
    loss = lambda o: net.loss_fn.value(o, targets)  # noqa: E731
    hjv = jax.jvp(jax.grad(loss), (out,), (jv,))[1]
    return jax.vjp(forward, params)[1](hjv)[0]


def autodiff_diag(net, params, x, y, key=None):
    """sum over columns of (vmap(grad) of <c_ik, f(x_i)>)^2 / B."""
    x, targets = net.check_batch(params, x, y)
    out = net.forward(params, x)
    if key is None:
        factor = losses.hessian_factor(net.objective, out, targets)
    else:
        factor = losses.sampled_hessian_factor(net.objective, out, targets, key, 1)

    def one(p, xi, ci):
        return jnp.vdot(net.forward(p, xi[None])[0], ci)

    def column(total, c_k):
        grads = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, c_k)
        # summed over examples by halving, as diag_ggn does: jnp.sum(axis=0) of the
        # (B, n, m) squares ran 25-30x slower on XLA's CPU (sum_leading)
        squares = jax.tree.map(lambda g: curvature_network.sum_leading(g * g), grads)
        return jax.tree.map(jnp.add, total, squares), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(column, zeros, jnp.moveaxis(factor, -1, 0))
    return jax.tree.map(lambda t: t / x.shape[0], total)


def autodiff_kfac(net, params, x, y, key=None):
    """``A`` and ``G`` of every Dense and Conv2D layer, ``G`` from ``jax.vjp``.

    Each such layer's output gets a zero offset; the pull-back of every factor column
    to the offsets gives the cotangents ``g`` (``vmap`` over the columns), and ``A``
    is ``a^T a`` of the inputs (a convolution's patches), as the tests build them.
    For chains without Residual blocks (the benchmark's networks).
    """
    chain = curvature_network.check_supported(net, "autodiff_kfac")
    x, targets = net.check_batch(params, x, y)
    cp = chain.to_chain(params)
    heavy = [isinstance(layer, (Dense, Conv2D)) for layer in chain.layers]

    def forward(offsets):
        h, inputs, outputs, it = x, [], [], iter(offsets)
        for layer, p, is_heavy in zip(chain.layers, cp, heavy, strict=True):
            inputs.append(h)
            h = layer.forward(p, h)[0]
            if is_heavy:
                h = h + next(it, 0.0)
                outputs.append(h)
        return h, (inputs, outputs)

    shapes = jax.eval_shape(lambda: forward([])[1][1])
    zeros = [jnp.zeros(t.shape, t.dtype) for t in shapes]
    out, pullback, (inputs, _) = jax.vjp(forward, zeros, has_aux=True)
    if key is None:
        factor = losses.hessian_factor(net.objective, out, targets)
    else:
        factor = losses.sampled_hessian_factor(net.objective, out, targets, key, 1)
    gs = jax.vmap(lambda c: pullback(c)[0], in_axes=-1)(factor)  # (K, B, ...) each
    b, result, k = out.shape[0], [], 0
    for layer, inp, is_heavy in zip(chain.layers, inputs, heavy, strict=True):
        if not is_heavy:
            result.append({})
            continue
        a = conv_patches(layer, inp) if isinstance(layer, Conv2D) else inp
        a = a.reshape(-1, a.shape[-1])
        a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
        g = gs[k].reshape(-1, gs[k].shape[-1])
        positions = g.shape[0] // (b * factor.shape[-1])  # T of a convolution, else 1
        result.append({"A": a.T @ a / b, "G": g.T @ g / (b * positions)})
        k += 1
    return chain.from_chain(result)


# ------------------------------------------------------------------ the benchmark
#: The goals of issue 17: each quantity within this multiple of its floor (its FLOP
#: ratio times the gradient's time), and never slower than its autodiff twin.
FLOOR_GOAL = 1.2


def check_goals(rows: list[dict]) -> list[dict]:
    """Per network and quantity (the manual ones), whether each goal is met."""
    by_label = {(r["network"], r["quantity"]): r for r in rows}
    checks = []
    for r in rows:
        if r["quantity"].endswith(" autodiff") or r["quantity"] == "gradient":
            continue
        twin = by_label.get((r["network"], f"{r['quantity']} autodiff"))
        over_twin = None if twin is None else r["median_ms"] / twin["median_ms"]
        checks.append({
            "network": r["network"],
            "quantity": r["quantity"],
            "time_over_floor": r["time_over_floor"],
            "within_floor_goal": r["time_over_floor"] <= FLOOR_GOAL,
            "time_over_autodiff": over_twin,
            "not_slower_than_autodiff": None if twin is None else over_twin <= 1.0,
        })  # fmt: skip
    return checks


def print_goals(checks: list[dict]) -> None:
    print(f"\n{'network':>15}  {'quantity':<22} {'/floor':>7}  {'/autodiff':>9}")
    for c in checks:
        twin = c["time_over_autodiff"]
        flag = "" if c["within_floor_goal"] else f"  above {FLOOR_GOAL}x its floor"
        if twin is not None and twin > 1.0:
            flag += "  slower than autodiff"
        print(f"{c['network']:>15}  {c['quantity']:<22} {c['time_over_floor']:7.2f}  "
              f"{'-' if twin is None else f'{twin:9.2f}':>9}{flag}")  # fmt: skip


def networks(quick: bool) -> dict:
    if quick:
        return {"784-32-10": jaxbp.MLP((784, 32, 10), "relu")}
    lenet = jaxbp.Sequential(models.parse(models.canonical("lenet")), (784,))
    return {
        "784-100-10": jaxbp.MLP((784, 100, 10), "relu"),
        "784-512-512-10": jaxbp.MLP((784, 512, 512, 10), "relu"),
        "LeNet": lenet,
    }


def quantities(net) -> dict:
    """``name: (fn(params, x, y, v, key), autodiff twin or None)``."""
    q = {
        "gradient": (lambda p, x, y, v, k: net.value_and_manual_grad(p, x, y),
                     lambda p, x, y, v, k: jax.value_and_grad(net.loss)(p, x, y)),
        "hvp": (lambda p, x, y, v, k: jaxbp.hvp(net, p, x, y, v),
                lambda p, x, y, v, k: autodiff_hvp(net, p, x, y, v)),
        "ggn_vp": (lambda p, x, y, v, k: jaxbp.ggn_vp(net, p, x, y, v),
                   lambda p, x, y, v, k: autodiff_ggn_vp(net, p, x, y, v)),
        "diag_ggn": (lambda p, x, y, v, k: jaxbp.diag_ggn(net, p, x, y),
                     lambda p, x, y, v, k: autodiff_diag(net, p, x, y)),
        "diag_ggn_mc": (lambda p, x, y, v, k: jaxbp.diag_ggn_mc(net, p, x, y, k),
                        lambda p, x, y, v, k: autodiff_diag(net, p, x, y, k)),
        "kfac_factors (KFLR)": (
            lambda p, x, y, v, k: jaxbp.kfac_factors(net, p, x, y),
            lambda p, x, y, v, k: autodiff_kfac(net, p, x, y)),
        "kfac_factors (MC)": (
            lambda p, x, y, v, k: jaxbp.kfac_factors(net, p, x, y, k),
            lambda p, x, y, v, k: autodiff_kfac(net, p, x, y, k)),
    }  # fmt: skip
    if isinstance(net, jaxbp.MLP):
        q["diag_hessian"] = (
            lambda p, x, y, v, k: jaxbp.diag_hessian(net, p, x, y),
            None,
        )
    return q


def bench(name, net, batch, repeats, number, flops_only=False) -> list[dict]:
    params = net.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
    v = jax.tree.map(lambda t: jnp.ones_like(t) * 1e-2, params)
    key = jax.random.key(1)
    args = (params, x, y, v, key)
    fns, flops = {}, {}
    for q, (manual, auto) in quantities(net).items():
        for label, fn in ((q, manual), (f"{q} autodiff", auto)):
            if fn is None:
                continue
            flops[label] = matmul_flops(fn, *args)
            fns[label] = functools.partial(jax.jit(fn), *args)
    if flops_only:
        nan = {"median_s": float("nan")}
        times = {label: nan for label in fns}
    else:
        times = _common.time_interleaved(fns, repeats=repeats, number=number)
    base_t, base_f = times["gradient"]["median_s"], flops["gradient"]
    rows = []
    for label in fns:
        rows.append({
            "network": name,
            "batch": batch,
            "quantity": label,
            "matmul_flops": flops[label],
            "flops_over_gradient": flops[label] / base_f,
            "median_ms": 1e3 * times[label]["median_s"],
            "time_over_gradient": times[label]["median_s"] / base_t,
            "time_over_floor": (times[label]["median_s"] / base_t)
            / (flops[label] / base_f),
        })  # fmt: skip
        r = rows[-1]
        print(
            f"{name:>15}  {label:<28} FLOPs x{r['flops_over_gradient']:5.2f}  "
            f"time x{r['time_over_gradient']:5.2f}  ({r['median_ms']:.2f} ms)",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="rounds (5)")
    parser.add_argument("--number", type=int, default=None, help="calls per round (3)")
    parser.add_argument(
        "--flops-only", action="store_true", help="count the FLOPs, time nothing"
    )
    parser.add_argument(
        "--network",
        action="append",
        choices=("784-100-10", "784-512-512-10", "LeNet"),
        help="only this network (repeatable; default all three)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    number = args.number or (1 if args.quick else 3)
    batch = 16 if args.quick else BATCH
    peak = None
    if not args.flops_only:
        peak = _common.measure_gemm_peak(
            1024 if args.quick else 2048, 3 if args.quick else 7
        )
        print(
            f"GEMM peak: JAX {peak['jax_gflops']:.1f}, "
            f"NumPy {peak['numpy_gflops']:.1f} GFLOP/s (float32 {peak['n']}^2)"
        )
    rows = []
    with _common.OtherLoad() as load:
        for name, net in networks(args.quick).items():
            if args.network and not args.quick and name not in args.network:
                continue
            rows += bench(name, net, batch, repeats, number, args.flops_only)
    goals = None
    if not args.flops_only:
        goals = check_goals(rows)
        print_goals(goals)
    path = _common.write_json(
        args.out
        / ("bench_curvature_flops.json" if args.flops_only else "bench_curvature.json"),
        {
            "command": _common.command_line(__file__, argv),
            "quick": args.quick,
            "flops_only": args.flops_only,
            "environment": _common.environment(
                repeats=repeats,
                number=number,
                gemm_peak=peak,
                other_load_cores=None if args.flops_only else load.cores,
            ),
            "rows": rows,
            "goals": goals,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
