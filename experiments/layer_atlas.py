"""Layer atlas: every layer's hand-derived backward against jax.vjp and finite
differences, over the shapes that break backward passes.

For each layer configuration (odd sizes, batch 1, stride 2 and (2, 1), SAME, VALID and
explicit padding, non-square kernels and windows, overlapping pools, training and
evaluation modes), at fixed seeds:

* the relative error ``max |manual - vjp| / max |vjp|`` over the parameter and input
  cotangents, of ``layer.backward`` against ``jax.vjp`` of ``layer.forward``, in
  float32 and in float64;
* in float64, ``jaxbp.check_grad`` of ``sum(dy * layer(params, x))`` against finite
  differences, with its verdict (PASS, or PASS with kinks at max-pool ties).

Writes layer_atlas.csv, layer_atlas.json and layer_atlas.md (the README's table).

Example:
  python experiments/layer_atlas.py
"""

import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp import layers as L

#: name: (layer, batched input shape, training mode).
CASES = {
    "Dense(7)": (L.Dense(7), (5, 9), False),
    "Dense(3), batch 1": (L.Dense(3), (1, 4), False),
    "Conv2D(4, 3x3)": (L.Conv2D(4, 3), (3, 7, 7, 2), False),
    "Conv2D(3, 3x2, stride 2)": (L.Conv2D(3, (3, 2), stride=2), (2, 9, 8, 3), False),
    "Conv2D(2, 5x5, SAME), batch 1": (
        L.Conv2D(2, 5, padding="SAME"), (1, 7, 6, 1), False),
    "Conv2D(3, 3x3, stride (2,1), pad ((1,0),(2,1)))": (
        L.Conv2D(3, 3, stride=(2, 1), padding=((1, 0), (2, 1))), (2, 8, 7, 2), False),
    "Conv2D(4, 2x2, stride 2, SAME)": (
        L.Conv2D(4, 2, stride=2, padding="SAME"), (2, 7, 7, 3), False),
    "MaxPool2D(2)": (L.MaxPool2D(2), (3, 8, 6, 2), False),
    "MaxPool2D(3, stride 2) overlapping": (
        L.MaxPool2D(3, stride=2), (2, 9, 7, 2), False),
    "MaxPool2D(2x3, SAME)": (L.MaxPool2D((2, 3), padding="SAME"), (2, 7, 7, 1), False),
    "AvgPool2D(2)": (L.AvgPool2D(2), (3, 8, 6, 2), False),
    "AvgPool2D(3, stride 2, SAME)": (
        L.AvgPool2D(3, stride=2, padding="SAME"), (2, 7, 9, 2), False),
    "LayerNorm (B, n)": (L.LayerNorm(), (4, 7), False),
    "LayerNorm (B, H, W, C), batch 1": (L.LayerNorm(), (1, 3, 5, 4), False),
    "BatchNorm (B, n), train": (L.BatchNorm(), (6, 5), True),
    "BatchNorm (B, H, W, C), train": (L.BatchNorm(), (3, 4, 5, 3), True),
    "BatchNorm (B, H, W, C), batch 1, train": (L.BatchNorm(), (1, 3, 3, 2), True),
    "BatchNorm (B, n), eval": (L.BatchNorm(), (6, 5), False),
    "Dropout(0.3), train": (L.Dropout(0.3), (4, 3, 3, 2), True),
    "Residual(Conv2D(3, 3x3, SAME), relu)": (
        L.Residual([L.Conv2D(3, 3, padding="SAME"), L.Activation("relu")]),
        (2, 6, 5, 3), False),
    "Residual(Dense, BatchNorm, tanh), train": (
        L.Residual([L.Dense(6), L.BatchNorm(), L.Activation("tanh")]), (5, 6), True),
    "Flatten": (L.Flatten(), (3, 2, 3, 4), False),
    **{f"Activation({name})": (L.Activation(name), (4, 3, 2), False)
       for name in jaxbp.ACTIVATIONS},
}  # fmt: skip
QUICK_CASES = ("Conv2D(3, 3x2, stride 2)", "MaxPool2D(2)", "BatchNorm (B, n), train")
KEY = jax.random.key(7)


def _random(shape, dtype, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def setup(layer, shape, dtype, seed=0):
    """Parameters (initialised, then moved off their initial values), state, x, dy."""
    params = layer.init(jax.random.key(seed), shape[1:], dtype)
    leaves, treedef = jax.tree.flatten(params)
    leaves = [leaf + 0.1 * _random(leaf.shape, dtype, seed + 10 + i)
              for i, leaf in enumerate(leaves)]  # fmt: skip
    params = jax.tree.unflatten(treedef, leaves)
    state = layer.init_state(shape[1:], dtype)
    if state:  # evaluation with statistics that are not the initial ones
        state = jax.tree.map(lambda s: s + 0.5 * jnp.abs(_random(s.shape, dtype, 3)),
                             state)  # fmt: skip
    x = _random(shape, dtype, seed + 1)
    dy = _random((shape[0], *layer.output_shape(shape[1:])), dtype, seed + 2)
    return params, state, x, dy


def vjp_error(layer, shape, train, dtype) -> float:
    """``max |manual - vjp| / max |vjp|`` over parameter and input cotangents."""
    params, state, x, dy = setup(layer, shape, dtype)

    def forward(p, x):
        return layer.forward(p, x, state=state, key=KEY, train=train)[0]

    _, cache, _ = layer.forward(params, x, state=state, key=KEY, train=train)
    manual = jax.tree.leaves(layer.backward(params, cache, dy))
    reference = jax.tree.leaves(jax.vjp(forward, params, x)[1](dy))
    err = max(float(jnp.max(jnp.abs(a - b)))
              for a, b in zip(manual, reference, strict=True))  # fmt: skip
    scale = max(float(jnp.max(jnp.abs(b))) for b in reference)
    return err / scale


def fd_check(layer, shape, train):
    """``jaxbp.check_grad`` of ``sum(dy * layer(params, x))`` in float64."""
    params, state, x, dy = setup(layer, shape, jnp.float64)

    def fun(p):
        y = layer.forward(p["params"], p["x"], state=state, key=KEY, train=train)[0]
        return jnp.sum(dy * y)

    def grad_fun(p):
        _, cache, _ = layer.forward(
            p["params"], p["x"], state=state, key=KEY, train=train
        )
        grads, dx = layer.backward(p["params"], cache, dy)
        return {"params": grads, "x": dx}

    return jaxbp.check_grad(fun, grad_fun, {"params": params, "x": x})


def run_case(name: str) -> dict:
    layer, shape, train = CASES[name]
    t0 = time.perf_counter()
    err32 = vjp_error(layer, shape, train, jnp.float32)
    with jax.enable_x64(True):
        err64 = vjp_error(layer, shape, train, jnp.float64)
        report = fd_check(layer, shape, train)
    return {
        "case": name,
        "layer": str(layer),
        "input_shape": list(shape),
        "train": train,
        "vjp_rel_error_float32": err32,
        "vjp_rel_error_float64": err64,
        "fd_passed": report.passed,
        "fd_kinks": report.kinks,
        "seconds": time.perf_counter() - t0,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| layer and input | vs `jax.vjp`, float32 | float64 | finite differences |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        shape = "×".join(map(str, r["input_shape"]))
        fd = "PASS" if r["fd_passed"] else "**FAIL**"
        if r["fd_kinks"]:
            fd += f" ({r['fd_kinks']} kinks)"
        lines.append(
            f"| {r['case']}, {shape} | {r['vjp_rel_error_float32']:.1e} | "
            f"{r['vjp_rel_error_float64']:.1e} | {fd} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    args = parser.parse_args(argv)
    names = QUICK_CASES if args.quick else tuple(CASES)
    t0 = time.perf_counter()
    rows = []
    for name in names:
        row = run_case(name)
        rows.append(row)
        print(f"{name:<52} f32 {row['vjp_rel_error_float32']:.1e}  "
              f"f64 {row['vjp_rel_error_float64']:.1e}  "
              f"FD {'PASS' if row['fd_passed'] else 'FAIL'}", flush=True)  # fmt: skip
    elapsed = time.perf_counter() - t0
    worst32 = max(r["vjp_rel_error_float32"] for r in rows)
    worst64 = max(r["vjp_rel_error_float64"] for r in rows)
    failed = [r["case"] for r in rows if not r["fd_passed"]]
    ok = worst64 <= 1e-10 and worst32 <= 1e-5 and not failed
    table = markdown(rows)
    print(f"\n{table}\n\nworst vs jax.vjp: float32 {worst32:.1e}, float64 "
          f"{worst64:.1e}; finite-difference failures: {len(failed)}; "
          f"{elapsed:.0f} s")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_csv(args.out / "layer_atlas.csv", rows)
    json_path = _common.write_json(
        args.out / "layer_atlas.json",
        {
            "command": _common.command_line(__file__, argv),
            "quick": args.quick,
            "rows": rows,
            "worst_vjp_rel_error_float32": worst32,
            "worst_vjp_rel_error_float64": worst64,
            "fd_failures": failed,
            "elapsed_s": elapsed,
            "environment": _common.environment(),
        },
    )
    (args.out / "layer_atlas.md").write_text(table + "\n")
    print(f"wrote {json_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
