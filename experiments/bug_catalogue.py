"""Bug catalogue: the classic mistakes of a hand-written backward pass, and whether
jaxbp's gradient checker catches each one and names where it is.

Every bug is written as a user's own ``grad_fun`` for two functions, in float32 and in
float64:

* ``mlp``: a 6-5-5-3 tanh network with softmax cross-entropy (the mean over a batch of
  4), checked with ``jaxbp.check_network_grad(net, params, x, y, grad_fun=...)``, which
  names the first wrong layer from the output down;
* ``layernorm``: a LayerNorm classifier over a dict of parameters,
  ``{"embed": {"w"}, "norm": {"gain", "bias"}, "head": {"w", "b"}}``: ``h = x We``,
  ``z = gain * (h - mean h) / std h + bias``, ``a = tanh z``, logits ``a Wh + bh``,
  softmax cross-entropy plus ``lam/2 (|We|^2 + |Wh|^2)``, checked with
  ``jaxbp.check_grad``, which names the failing leaves by key path.

The bugs: activation derivative missing; weights not transposed (the layers are not
square, so the gradient has the wrong shape); the 1/B of the mean missing; bias summed
over the wrong axis; a sign flipped; the activation derivative taken at the wrong
layer's z; the softmax cross-entropy delta without the one-hot subtracted; a layer
skipped in the backward loop; accumulation one precision down (float32 where float64
was asked, bfloat16 where float32 was). The correct ``grad_fun`` must pass.

A bug is *caught* when the check fails (or stops with an error naming the leaf whose
shape is wrong) and *named* when the leaves (and, for the MLP, the layer) it reports
are exactly those the bug breaks. Writes bug_catalogue.json and bug_catalogue.md.

Example:
  python experiments/bug_catalogue.py
"""

import itertools
import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

import jaxbp

BUGS = {
    "none": "correct backward pass",
    "no_activation_derivative": "activation derivative missing",
    "weights_not_transposed": "weights not transposed (non-square layer)",
    "no_batch_mean": "1/B of the mean missing",
    "bias_wrong_axis": "bias summed over the wrong axis",
    "sign_flipped": "sign flipped",
    "derivative_at_wrong_z": "derivative at the wrong layer's z",
    "no_onehot_subtracted": "softmax-CE delta without the one-hot subtracted",
    "layer_skipped": "a layer skipped in the backward loop",
    "low_precision_accumulation": "accumulation one precision down",
}
QUICK_BUGS = ("none", "no_batch_mean", "weights_not_transposed")
DTYPES = ("float32", "float64")
#: One precision down from the dtype asked for.
LOWER = {"float64": jnp.float32, "float32": jnp.bfloat16}

MLP_SIZES = (6, 5, 5, 3)
BATCH = 4
LN_SIZES = {"in": 6, "hidden": 5, "out": 3}
LN_EPS = 1e-5
LN_L2 = 0.01


# --------------------------------------------------------------------- MLP
def mlp_case(dtype: str, seed: int = 0):
    """The network, parameters and batch of the MLP case."""
    net = jaxbp.MLP(MLP_SIZES, activation="tanh")
    rng = np.random.default_rng(seed)
    params = [
        {
            "w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=n), dtype),
        }
        for m, n in zip(MLP_SIZES[:-1], MLP_SIZES[1:], strict=True)
    ]
    x = jnp.asarray(rng.normal(size=(BATCH, MLP_SIZES[0])), dtype)
    y = jnp.asarray(rng.integers(0, MLP_SIZES[-1], size=BATCH), jnp.int32)
    return net, params, x, y


def mlp_grad(params, x, y, *, bug: str = "none"):
    """A user's hand-written backward pass of the tanh MLP's mean softmax CE.

    ``z_l = a_{l-1} W_l + b_l``, ``a_l = tanh(z_l)`` (identity at the output);
    ``delta_L = (softmax(z_L) - onehot(y)) / B``,
    ``delta_{l-1} = (delta_l W_l^T) * (1 - a_{l-1}^2)``,
    ``dW_l = a_{l-1}^T delta_l``, ``db_l = sum_batch delta_l``; ``bug`` breaks one step.
    """
    depth = len(params)
    a, zs, acts = x, [], [x]
    for l, layer in enumerate(params):
        z = a @ layer["w"] + layer["b"][None, :]
        a = z if l == depth - 1 else jnp.tanh(z)
        zs.append(z)
        acts.append(a)
    n_out = params[-1]["w"].shape[1]
    onehot = jax.nn.one_hot(y, n_out, dtype=x.dtype)
    probs = jax.nn.softmax(zs[-1], axis=-1)
    if bug == "no_onehot_subtracted":
        delta = probs
    elif bug == "sign_flipped":
        delta = onehot - probs
    else:
        delta = probs - onehot
    if bug != "no_batch_mean":
        delta = delta / x.shape[0]
    grads = [None] * depth
    stop = 1 if bug == "layer_skipped" else 0
    for l in range(depth - 1, stop - 1, -1):
        a_prev = acts[l]
        if bug == "low_precision_accumulation":
            low = LOWER[jnp.dtype(x.dtype).name]
            dw = (a_prev.astype(low).T @ delta.astype(low)).astype(x.dtype)
        elif bug == "weights_not_transposed":
            dw = delta.T @ a_prev
        else:
            dw = a_prev.T @ delta
        db = jnp.sum(delta, axis=1 if bug == "bias_wrong_axis" else 0)
        grads[l] = {"w": dw, "b": db}
        if l == 0:
            break
        back = delta @ params[l]["w"].T
        if bug == "no_activation_derivative":
            delta = back
        elif bug == "derivative_at_wrong_z" and l == 1:
            # tanh'(z_2) where tanh'(z_1) belongs (the two hidden layers are 5 wide)
            delta = back * (1 - jnp.tanh(zs[1]) ** 2)
        else:
            delta = back * (1 - acts[l] ** 2)
    for l in range(stop):
        grads[l] = jax.tree.map(jnp.zeros_like, params[l])
    return grads


#: The layers (1-based) each bug breaks in the MLP, and so the first from the output.
MLP_BROKEN_LAYERS = {
    "none": set(),
    "no_activation_derivative": {1, 2},
    "weights_not_transposed": {1, 2, 3},
    "no_batch_mean": {1, 2, 3},
    "bias_wrong_axis": {1, 2, 3},
    "sign_flipped": {1, 2, 3},
    "derivative_at_wrong_z": {1},
    "no_onehot_subtracted": {1, 2, 3},
    "layer_skipped": {1},
    "low_precision_accumulation": {1, 2, 3},
}


#: Bugs that break only the weights' gradients of the layers they touch in the MLP.
MLP_WEIGHTS_ONLY = {"low_precision_accumulation"}


# --------------------------------------------------------------------- LayerNorm
def layernorm_case(dtype: str, seed: int = 0):
    """Parameters and batch of the LayerNorm classifier."""
    rng = np.random.default_rng(seed)
    i, h, o = LN_SIZES["in"], LN_SIZES["hidden"], LN_SIZES["out"]
    params = {
        "embed": {"w": jnp.asarray(rng.normal(size=(i, h)) / np.sqrt(i), dtype)},
        "norm": {
            "gain": jnp.asarray(1 + 0.1 * rng.normal(size=h), dtype),
            "bias": jnp.asarray(0.1 * rng.normal(size=h), dtype),
        },
        "head": {
            "w": jnp.asarray(rng.normal(size=(h, o)) / np.sqrt(h), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=o), dtype),
        },
    }
    x = jnp.asarray(rng.normal(size=(BATCH, i)), dtype)
    y = jnp.asarray(rng.integers(0, o, size=BATCH), jnp.int32)
    return params, x, y


def layernorm_loss(params, x, y):
    """Mean softmax CE of ``tanh(LayerNorm(x We)) Wh + bh`` plus L2 on the weights."""
    h = x @ params["embed"]["w"]
    mu = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean((h - mu) ** 2, axis=-1, keepdims=True)
    xhat = (h - mu) / jnp.sqrt(var + LN_EPS)
    z = params["norm"]["gain"][None, :] * xhat + params["norm"]["bias"][None, :]
    logits = jnp.tanh(z) @ params["head"]["w"] + params["head"]["b"][None, :]
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))
    l2 = jnp.sum(params["embed"]["w"] ** 2) + jnp.sum(params["head"]["w"] ** 2)
    return ce + 0.5 * LN_L2 * l2


def layernorm_grad(params, x, y, *, bug: str = "none"):
    """A user's hand-derived gradient of :func:`layernorm_loss`.

    ``dlogits = (softmax - onehot) / B``; ``dWh = a^T dlogits + lam Wh``;
    ``dbh = sum dlogits``; ``dz = (dlogits Wh^T) * (1 - a^2)``;
    ``dgain = sum dz * xhat``, ``dbias = sum dz``; ``dxhat = dz * gain``;
    ``dh = (dxhat - mean dxhat - xhat mean(dxhat * xhat)) / std``;
    ``dWe = x^T dh + lam We``.
    """
    we, wh = params["embed"]["w"], params["head"]["w"]
    gain, beta = params["norm"]["gain"], params["norm"]["bias"]
    low = LOWER[jnp.dtype(x.dtype).name]

    def matmul(p, q):
        if bug == "low_precision_accumulation":
            return (p.astype(low) @ q.astype(low)).astype(x.dtype)
        return p @ q

    h = matmul(x, we)
    mu = jnp.mean(h, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.mean((h - mu) ** 2, axis=-1, keepdims=True) + LN_EPS)
    xhat = (h - mu) / std
    z = gain[None, :] * xhat + beta[None, :]
    a = jnp.tanh(z)
    logits = matmul(a, wh) + params["head"]["b"][None, :]
    probs = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(y, wh.shape[1], dtype=x.dtype)
    dlogits = probs if bug == "no_onehot_subtracted" else probs - onehot
    if bug != "no_batch_mean":
        dlogits = dlogits / x.shape[0]
    reg = -LN_L2 if bug == "sign_flipped" else LN_L2
    dwh = (
        matmul(dlogits.T, a)
        if bug == "weights_not_transposed"
        else matmul(a.T, dlogits)
    )
    dwh = dwh + reg * (wh.T if bug == "weights_not_transposed" else wh)
    dbh = jnp.sum(dlogits, axis=1 if bug == "bias_wrong_axis" else 0)
    da = matmul(dlogits, wh.T)
    if bug == "no_activation_derivative":
        dz = da
    elif bug == "derivative_at_wrong_z":
        dz = da * (1 - jnp.tanh(h) ** 2)  # tanh' at the embedding, not at z
    else:
        dz = da * (1 - a**2)
    dgain = jnp.sum(dz * xhat, axis=0)
    dbias = jnp.sum(dz, axis=0)
    dxhat = dz * gain[None, :]
    if bug == "layer_skipped":
        dh = dxhat  # the LayerNorm's own backward step left out
    else:
        dh = (
            dxhat
            - jnp.mean(dxhat, axis=-1, keepdims=True)
            - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True)
        ) / std
    dwe = matmul(x.T, dh) + reg * we
    return {
        "embed": {"w": dwe},
        "norm": {"gain": dgain, "bias": dbias},
        "head": {"w": dwh, "b": dbh},
    }


_ALL_LN = {
    "['embed']['w']",
    "['head']['b']",
    "['head']['w']",
    "['norm']['bias']",
    "['norm']['gain']",
}
_BELOW_HEAD = {"['embed']['w']", "['norm']['bias']", "['norm']['gain']"}
#: The leaves each bug breaks in the LayerNorm classifier.
LN_BROKEN_LEAVES = {
    "none": set(),
    "no_activation_derivative": _BELOW_HEAD,
    "weights_not_transposed": {"['head']['w']"},
    "no_batch_mean": _ALL_LN,
    "bias_wrong_axis": {"['head']['b']"},
    "sign_flipped": {"['embed']['w']", "['head']['w']"},
    "derivative_at_wrong_z": _BELOW_HEAD,
    "no_onehot_subtracted": _ALL_LN,
    "layer_skipped": {"['embed']['w']"},
    "low_precision_accumulation": _ALL_LN,
}


# --------------------------------------------------------------------- checks
def _mlp_leaves(layers: set[int], bug: str) -> set[str]:
    names = ("w",) if bug in MLP_WEIGHTS_ONLY else ("w", "b")
    return {f"[{l - 1}]['{name}']" for l in layers for name in names}


def run_case(model: str, bug: str, dtype: str) -> dict:
    """Checks one buggy grad_fun; returns what the checker said and whether it is right.

    Returns:
      A dict: ``caught`` (the check failed or refused the gradient's shape),
      ``how`` (``"report"`` or ``"shape error"``), ``named`` (the failing leaves, or
      those the error message names), ``layer`` (MLP: first wrong layer from the
      output), ``expected_*`` and ``correct`` (named exactly what the bug breaks),
      ``message`` (the error or the report's notes) and ``seconds``.
    """
    t0 = time.perf_counter()
    with jax.enable_x64(dtype == "float64"):
        if model == "mlp":
            net, params, x, y = mlp_case(dtype)
            paths = [f"[{l}]['{n}']" for l in range(net.depth) for n in ("b", "w")]

            def check():
                return jaxbp.check_network_grad(
                    net,
                    params,
                    x,
                    y,
                    grad_fun=lambda p, x, y: mlp_grad(p, x, y, bug=bug),
                )

            expected_layers = MLP_BROKEN_LAYERS[bug]
            expected = _mlp_leaves(expected_layers, bug)
        else:
            params, x, y = layernorm_case(dtype)
            paths = sorted(_ALL_LN)

            def check():
                return jaxbp.check_grad(
                    layernorm_loss,
                    lambda p, x, y: layernorm_grad(p, x, y, bug=bug),
                    params,
                    x,
                    y,
                )

            expected_layers = None
            expected = LN_BROKEN_LEAVES[bug]
        try:
            report = check()
        except ValueError as error:
            message = str(error)
            named = {p for p in paths if p in message}
            layer = _layer_in(message)
            how, caught = "shape error", True
        else:
            message = "\n".join(report.notes)
            named = {
                leaf.path
                for c in report.comparisons[:2]
                for leaf in c.leaves
                if not leaf.passed
            }
            layer = report.first_failing_layer
            how, caught = "report", not report.passed
    row = {
        "model": model,
        "bug": bug,
        "description": BUGS[bug],
        "dtype": dtype,
        "caught": caught,
        "how": how,
        "named": sorted(named),
        "expected_leaves": sorted(expected),
        "message": message,
        "seconds": time.perf_counter() - t0,
    }
    if model == "mlp":
        first = max(expected_layers) if expected_layers else None
        row |= {"layer": layer, "expected_layer": first}
        named_ok = layer == first
        if how == "report":
            named_ok = named_ok and named == expected
        else:
            # A shape error names the leaves whose shapes are wrong, the first from
            # the output down among them.
            named_ok = named_ok and bool(named) and named <= expected
    else:
        named_ok = named == expected if how == "report" else named <= expected
        named_ok = named_ok and (bool(named) or not expected)
    row["correct"] = (caught == (bug != "none")) and named_ok
    return row


def _layer_in(message: str):
    """The layer number in an error message's ``(layer N)``, if any."""
    import re

    found = re.findall(r"layer (\d+)", message)
    return max(map(int, found)) if found else None


def markdown(rows: list[dict]) -> str:
    """The README table: one row per bug, one column per model and dtype."""
    cols = [(m, d) for m in ("mlp", "layernorm") for d in DTYPES]
    seen = {(r["model"], r["dtype"]) for r in rows}
    cols = [c for c in cols if c in seen]
    head = "| bug | " + " | ".join(f"{m} {d}" for m, d in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for bug in BUGS:
        cells = []
        for m, d in cols:
            match = [
                r for r in rows if (r["bug"], r["model"], r["dtype"]) == (bug, m, d)
            ]
            if not match:
                cells.append("")
                continue
            r = match[0]
            verdict = ("PASS" if not r["caught"] else "FAIL") + (
                " (shape)" if r["how"] == "shape error" else ""
            )
            where = (
                f"layer {r['layer']}"
                if m == "mlp"
                else "all leaves"
                if set(r["named"]) == _ALL_LN
                else ", ".join(r["named"])
            )
            mark = "✓" if r["correct"] else "✗"
            cells.append(f"{mark} {verdict}" + (f": {where}" if r["caught"] else ""))
        lines.append(f"| {BUGS[bug]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _line(row: dict) -> str:
    """A case's printed line: what the check said and whether that is right."""
    where = (
        f"layer {row['layer']}" if row["model"] == "mlp" else ", ".join(row["named"])
    )
    return (
        f"{row['model']:>9} {row['dtype']} {row['description']:<48} "
        f"{'FAIL' if row['caught'] else 'PASS'} ({row['how']}) {where}  "
        f"{'ok' if row['correct'] else 'WRONG'}"
    )


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    args = parser.parse_args(argv)
    bugs = QUICK_BUGS if args.quick else tuple(BUGS)
    dtypes = ("float32",) if args.quick else DTYPES
    cases = itertools.product(("mlp", "layernorm"), bugs, dtypes)
    rows, elapsed = _common.run_catalogue(cases, run_case, _line)
    header = {
        "quick": args.quick,
        "bugs": BUGS,
        "dtypes": dtypes,
        "mlp_sizes": MLP_SIZES,
        "layernorm_sizes": LN_SIZES,
        "batch": BATCH,
    }
    return _common.write_catalogue(
        args.out, "bug_catalogue", rows, elapsed, markdown(rows), header
    )


if __name__ == "__main__":
    sys.exit(main())
