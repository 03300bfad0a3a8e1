"""Layer bug catalogue: classic mistakes in convolution, pooling and BatchNorm backward
passes, and whether ``jaxbp.check_network_grad`` catches each one and names its layer.

Each bug is a layer whose ``backward`` is written wrongly (a subclass of the library's
layer, as a user's own layer would be), placed in a small ``jaxbp.Sequential``
network behind another layer, so that a wrong input cotangent shows in the deltas:

* conv: the kernel not flipped in the input gradient; the stride ignored in the
  backward (the cotangent of a stride-2 convolution folded back as if stride were
  1); the padding offset by one in the backward of a SAME convolution; the bias
  gradient not summed over positions (the wrong shape);
* pooling: the max-pool gradient sent to every element of the window instead of the
  maximum; the average-pool gradient not divided by the window size;
* BatchNorm (training mode): the input gradient without the path through the mean;
  without the path through the variance; and the variance's own dependence on the
  mean dropped from ``dL/dmu``, a mistake that is harmless, because that term is
  ``dL/dvar * (-2/N) sum(x - mu)`` and ``sum(x - mu) = 0``: the check must pass it.

A bug is *caught* when the check fails (or stops with an error naming the leaf whose
shape is wrong) and *named* when ``first_failing_layer`` is the buggy layer. Every
case runs in float32 and float64. Writes layer_bug_catalogue.json and .md.

Example:
  python experiments/layer_bug_catalogue.py
"""

import itertools
import sys
import time

import _common
import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp import layers as L
from jaxbp.layers import windows

BATCH = 6
DTYPES = ("float32", "float64")


# --------------------------------------------------------------------- buggy layers
def _conv_grads(layer, params, x, dy, *, stride, pads, flip=False):
    """The im2col backward of a convolution with the stride, padding and kernel
    that the caller passes: the library's rule when they are the layer's own."""
    w = params["w"][::-1, ::-1] if flip else params["w"]
    kh, kw, c, f = w.shape
    b, oh, ow, _ = dy.shape
    delta = dy.reshape(b * oh * ow, f)
    views = windows.window_views(x, layer.kernel_size, layer.stride, pads)
    patches = jnp.stack(views, axis=3).reshape(b * oh * ow, kh * kw * c)
    grads = {
        "w": (patches.T @ delta).reshape(w.shape),
        "b": jnp.sum(dy, axis=(0, 1, 2)),
    }
    d_patches = (delta @ w.reshape(kh * kw * c, f).T).reshape(b, oh, ow, kh * kw, c)
    d_views = [d_patches[:, :, :, t, :] for t in range(kh * kw)]
    dx = windows.fold_views(d_views, x.shape, layer.kernel_size, stride, pads)
    return grads, dx


def _pads(layer, x):
    return windows.resolve_padding(
        layer.padding, x.shape[1:3], layer.kernel_size, layer.stride
    )


class KernelNotFlipped(L.Conv2D):
    def backward(self, params, cache, dy):
        pads = _pads(self, cache)
        grads, _ = _conv_grads(self, params, cache, dy, stride=self.stride, pads=pads)
        _, dx = _conv_grads(
            self, params, cache, dy, stride=self.stride, pads=pads, flip=True
        )
        return grads, dx


class StrideIgnored(L.Conv2D):
    def backward(self, params, cache, dy):
        pads = _pads(self, cache)
        grads, _ = _conv_grads(self, params, cache, dy, stride=self.stride, pads=pads)
        _, dx = _conv_grads(self, params, cache, dy, stride=(1, 1), pads=pads)
        return grads, dx


class PaddingOffset(L.Conv2D):
    def backward(self, params, cache, dy):
        pads = _pads(self, cache)
        grads, _ = _conv_grads(self, params, cache, dy, stride=self.stride, pads=pads)
        (lo_h, hi_h), (lo_w, hi_w) = pads
        shifted = ((lo_h + 1, hi_h - 1), (lo_w + 1, hi_w - 1))
        _, dx = _conv_grads(self, params, cache, dy, stride=self.stride, pads=shifted)
        return grads, dx


class BiasNotSummedOverPositions(L.Conv2D):
    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {**grads, "b": jnp.sum(dy, axis=0)}, dx


class MaxPoolToEveryElement(L.MaxPool2D):
    def backward(self, params, cache, dy):
        x, _ = cache
        pads = windows.resolve_padding(
            self.padding, x.shape[1:3], self.window, self.stride
        )
        views = [dy] * (self.window[0] * self.window[1])
        return {}, windows.fold_views(views, x.shape, self.window, self.stride, pads)


class AvgPoolNotDivided(L.AvgPool2D):
    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return grads, dx * (self.window[0] * self.window[1])


def _bn_dx(params, cache, dy, *, mean_path=True, var_path=True, var_mean_term=True):
    """BatchNorm's training backward node by node, with paths that can be dropped."""
    xhat, inv_std = cache
    axes = tuple(range(dy.ndim - 1))
    n = dy.size // dy.shape[-1]
    xc = xhat / inv_std
    g = params["g"].reshape((1,) * (dy.ndim - 1) + (-1,))
    dxhat = g * dy
    dvar = -0.5 * inv_std**3 * jnp.sum(dxhat * xc, axis=axes, keepdims=True)
    dxc = dxhat * inv_std
    # dL/dmu = -sum(dxhat inv_std) + dvar * (-2/N) sum(x - mu)
    dmu = -jnp.sum(dxc, axis=axes, keepdims=True)
    if var_mean_term:
        dmu = dmu + dvar * (-2.0 / n) * jnp.sum(xc, axis=axes, keepdims=True)
    dx = dxc
    if var_path:
        dx = dx + (2.0 / n) * xc * dvar
    if mean_path:
        dx = dx + dmu / n
    return dx


class BatchNormNoMeanPath(L.BatchNorm):
    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, _bn_dx(params, cache, dy, mean_path=False)


class BatchNormNoVariancePath(L.BatchNorm):
    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, _bn_dx(params, cache, dy, var_path=False)


class BatchNormVarianceMeanTermDropped(L.BatchNorm):
    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, _bn_dx(params, cache, dy, var_mean_term=False)


class BatchNormCorrect(L.BatchNorm):
    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, _bn_dx(params, cache, dy)


# --------------------------------------------------------------------- the cases
def _conv_net(buggy):
    return [L.Conv2D(3, 3, padding="SAME"), L.Activation("tanh"), buggy,
            L.Activation("tanh"), L.Flatten(), L.Dense(3)]  # fmt: skip


def _pool_net(buggy):
    return [L.Conv2D(3, (3, 2)), L.Activation("tanh"), buggy, L.Flatten(), L.Dense(3)]


def _bn_net(buggy):
    return [L.Dense(5), L.Activation("tanh"), buggy, L.Activation("tanh"), L.Dense(3)]


#: name: (description, network of the buggy layer, its 1-based index, expected).
BUGS = {
    "conv_correct": (
        "convolution, correct backward",
        lambda: _conv_net(L.Conv2D(4, 3, stride=2)), 3, "pass"),
    "conv_kernel_not_flipped": (
        "kernel not flipped in the input gradient",
        lambda: _conv_net(KernelNotFlipped(4, 3)), 3, "fail"),
    "conv_stride_ignored": (
        "stride ignored in the backward",
        lambda: _conv_net(StrideIgnored(4, 3, stride=2)), 3, "fail"),
    "conv_padding_offset": (
        "padding offset by one in the backward",
        lambda: _conv_net(PaddingOffset(4, 3, padding="SAME")), 3, "fail"),
    "conv_bias_not_summed": (
        "bias gradient not summed over positions",
        lambda: _conv_net(BiasNotSummedOverPositions(4, 3)), 3, "fail"),
    "maxpool_correct": (
        "max pooling, correct backward",
        lambda: _pool_net(L.MaxPool2D(2)), 3, "pass"),
    "maxpool_every_element": (
        "max-pool gradient sent to every element of the window",
        lambda: _pool_net(MaxPoolToEveryElement(2)), 3, "fail"),
    "avgpool_not_divided": (
        "average-pool gradient not divided by the window size",
        lambda: _pool_net(AvgPoolNotDivided(2)), 3, "fail"),
    "batchnorm_correct": (
        "BatchNorm, correct backward (node by node)",
        lambda: _bn_net(BatchNormCorrect()), 3, "pass"),
    "batchnorm_no_mean_path": (
        "BatchNorm input gradient without the path through the mean",
        lambda: _bn_net(BatchNormNoMeanPath()), 3, "fail"),
    "batchnorm_no_variance_path": (
        "BatchNorm input gradient without the path through the variance",
        lambda: _bn_net(BatchNormNoVariancePath()), 3, "fail"),
    "batchnorm_variance_mean_term_dropped": (
        "BatchNorm dL/dmu without the variance's term (identically zero: harmless)",
        lambda: _bn_net(BatchNormVarianceMeanTermDropped()), 3, "pass"),
}  # fmt: skip
QUICK_BUGS = ("conv_correct", "conv_stride_ignored", "batchnorm_no_mean_path")
INPUT_SHAPES = {"conv": (7, 7, 2), "maxpool": (7, 7, 2), "avgpool": (7, 7, 2)}


def case(bug: str, dtype: str, seed: int = 0):
    """The network, parameters and batch of one case."""
    _, build, _, _ = BUGS[bug]
    input_shape = INPUT_SHAPES.get(bug.split("_")[0], (4,))
    net = jaxbp.Sequential(build(), input_shape=input_shape)
    rng = np.random.default_rng(seed)
    params = net.init(jax.random.key(seed), dtype=dtype)
    leaves, treedef = jax.tree.flatten(params)
    leaves = [leaf + jnp.asarray(0.1 * rng.normal(size=leaf.shape), dtype)
              for leaf in leaves]  # fmt: skip
    params = jax.tree.unflatten(treedef, leaves)
    x = jnp.asarray(rng.normal(size=(BATCH, *input_shape)), dtype)
    y = jnp.asarray(rng.integers(0, net.num_outputs, size=BATCH), jnp.int32)
    return net, params, x, y


def run_case(bug: str, dtype: str) -> dict:
    """Checks one case; returns its row."""
    description, _, index, expected = BUGS[bug]
    with jax.enable_x64(dtype == "float64"):
        net, params, x, y = case(bug, dtype)
        t0 = time.perf_counter()
        try:
            report = jaxbp.check_network_grad(net, params, x, y)
            caught, how = not report.passed, "check"
            layer = report.first_failing_layer
            note = report.notes[-1]
        except ValueError as err:  # a gradient of the wrong shape, named
            caught, how, note = True, "shape error", str(err)
            layer = index if f"[{index - 1}]" in note else None
        elapsed = time.perf_counter() - t0
    if expected == "pass":
        correct = not caught
    else:
        correct = caught and layer == index
    return {
        "bug": bug,
        "description": description,
        "dtype": dtype,
        "network": str(net),
        "buggy_layer": index,
        "expected": expected,
        "caught": caught,
        "how": how,
        "named_layer": layer,
        "correct": correct,
        "note": note,
        "seconds": elapsed,
    }


def markdown(rows: list[dict]) -> str:
    """The table of the README: one row per bug, one column per dtype."""
    lines = ["| bug | expected | float32 | float64 |", "|---|---|---|---|"]
    for bug, (description, _, index, expected) in BUGS.items():
        cells = []
        for dtype in DTYPES:
            mine = [r for r in rows if r["bug"] == bug and r["dtype"] == dtype]
            row = mine[0] if mine else None
            if row is None:
                cells.append("—")
            elif row["caught"]:
                cells.append(f"FAIL, layer {row['named_layer']} named ({row['how']})")
            else:
                cells.append("PASS")
            if row is not None and not row["correct"]:
                cells[-1] += " **unexpected**"
        want = "PASS" if expected == "pass" else f"FAIL at layer {index}"
        lines.append(f"| {description} | {want} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _line(row: dict) -> str:
    """A case's printed line: what the check said and whether that is expected."""
    return (
        f"{row['dtype']} {row['description']:<72} "
        f"{'FAIL' if row['caught'] else 'PASS'} layer {row['named_layer']} "
        f"{'ok' if row['correct'] else 'UNEXPECTED'}"
    )


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__)
    args = parser.parse_args(argv)
    bugs = QUICK_BUGS if args.quick else tuple(BUGS)
    dtypes = ("float64",) if args.quick else DTYPES
    cases = itertools.product(bugs, dtypes)
    rows, elapsed = _common.run_catalogue(cases, run_case, _line)
    header = {
        "command": _common.command_line(__file__, argv),
        "quick": args.quick,
        "batch": BATCH,
    }
    return _common.write_catalogue(
        args.out, "layer_bug_catalogue", rows, elapsed, markdown(rows), header
    )


if __name__ == "__main__":
    sys.exit(main())
