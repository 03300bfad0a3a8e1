"""Localisation in a :class:`~jaxbp.Sequential` network: whose backward is wrong.

The hand-derived cotangent of every layer's output, ``delta_i = dL/dy_i``
(:meth:`jaxbp.Sequential.deltas`), is compared with autodiff's, obtained as
``jax.grad`` of the loss with respect to zero offsets added to each ``y_i``. The chain
computes ``delta_{i-1} = backward_i(delta_i)`` from the output down, so the first
wrong delta from the output down, ``delta_{i-1}``, points at layer ``i``'s backward; if
every delta agrees but a parameter gradient fails, the layer that owns the failing leaf
turns cotangents into parameter gradients wrongly.
"""

import jax
import jax.numpy as jnp

from jaxbp.gradcheck.check import failing_paths
from jaxbp.gradcheck.inputs import cast_floats
from jaxbp.gradcheck.report import GradCheckReport, compare_grads
from jaxbp.layers.base import layer_key
from jaxbp.sequential import Sequential

Array = jax.Array


def _autodiff_deltas(net: Sequential, params, x, targets, key) -> list[Array]:
    """``dL/dy_i`` of every layer's output by ``jax.grad`` of zero offsets."""

    def loss(offsets):
        a = x
        for i, (layer, p) in enumerate(zip(net.layers, params, strict=True)):
            a = layer.forward(p, a, key=layer_key(key, i), train=True)[0] + offsets[i]
        return net.loss_fn.value(a, targets)

    zeros = [jnp.zeros((x.shape[0], *s), x.dtype) for s in net.shapes[1:]]
    return jax.grad(loss)(zeros)


def layer_label(net: Sequential, path: str) -> str:
    """A leaf's path with its layer: ``[2]['w'] (layer 3 of 8, Conv2D(50, 5x5))``."""
    return f"{path} ({net.describe_layer(int(path[1 : path.index(']')]) + 1)})"


def localise_deltas(net: Sequential, params, x, y, dtype, rtol, key):
    """``(layer, note)``: the 1-based layer whose backward first goes wrong, or
    ``None``, and a sentence saying what was compared."""
    leaf_dtype = dtype or jnp.asarray(jax.tree.leaves(params)[0]).dtype.name
    n = len(net.layers)
    with jax.enable_x64(leaf_dtype == "float64" or jax.config.jax_enable_x64):
        p = cast_floats(params, dtype)
        xb, targets = net.check_batch(p, *cast_floats((x, y), dtype))
        manual, auto = jax.jit(
            lambda p, xb, t: (
                net.deltas(p, xb, t, key=key)[1],
                _autodiff_deltas(net, p, xb, t, key),
            )
        )(p, xb, targets)
        comp = compare_grads(
            {f"y_{i + 1}": d for i, d in enumerate(manual)},
            {f"y_{i + 1}": d for i, d in enumerate(auto)},
            names=("hand-derived", "autodiff"),
            rtol=rtol,
        )
    by_output = {
        int(leaf.path.split("_")[1].rstrip("']")): leaf for leaf in comp.leaves
    }
    if not by_output[n].passed:
        return None, (
            "localisation: the cotangent of the network's output (the loss's "
            "gradient) disagrees with autodiff: max rel error "
            f"{by_output[n].max_rel:.1e}"
        )
    for i in range(n - 1, 0, -1):
        leaf = by_output[i]
        if not leaf.passed:
            return i + 1, (
                "localisation: dL/dy_i, hand-derived vs autodiff, agrees for the "
                f"outputs of layers {n} to {i + 1} and first disagrees for the output "
                f"of layer {i} (max rel error {leaf.max_rel:.1e}), which the backward "
                f"of {net.describe_layer(i + 1)} computes"
            )
    return None, (
        "localisation: dL/dy_i, hand-derived vs autodiff, agrees at the output of "
        f"every layer (worst max rel {comp.max_rel:.1e})"
    )


def localise_paths(report: GradCheckReport, name: str, describe):
    """The first layer from the output down with a failing leaf of ``name``.

    Leaves are named ``[i]...`` by layer (an MLP's or a Sequential's parameter list);
    ``describe(layer)`` words the 1-based layer in the note.
    """
    failing = failing_paths(report, name)
    found = sorted({int(p[1 : p.index("]")]) + 1 for p in failing}, reverse=True)
    if not found:
        return None, None
    i = found[0]
    leaves = ", ".join(p for p in failing if p.startswith(f"[{i - 1}]"))
    return i, (
        f"localisation: the first layer from the output down where {name} is wrong "
        f"is {describe(i)} (params[{i - 1}]: {leaves})"
    )
