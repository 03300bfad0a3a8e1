"""The gradient check of a network spec (``MLP`` or ``Sequential``), per layer.

:func:`check_network_grad` is :func:`jaxbp.gradcheck.check_grad` of a network spec's
loss (an :class:`~jaxbp.MLP` or a :class:`~jaxbp.Sequential`), with the same options,
with the network's own delta rule as ``grad_fun`` by default, a faster evaluation of
perturbed points (only the layers above the perturbed one are recomputed) and one more
diagnosis: the hand-derived error signals ``delta_l = dL/dz_l`` of every layer against
autodiff ones, naming the first layer from the output down whose delta disagrees.
"""

import dataclasses
import warnings
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from jaxbp import finite_differences as fdiff
from jaxbp.gradcheck import sequential as seq_check
from jaxbp.gradcheck.check import FD_SAFETY, CheckOptions, run_check
from jaxbp.gradcheck.inputs import cast_floats, resolve_dtype
from jaxbp.gradcheck.report import GradCheckReport, compare_grads
from jaxbp.losses import prepare_targets
from jaxbp.mlp import MLP, Params
from jaxbp.sequential import Sequential

Array = jax.Array

#: ``fd="auto"`` in :func:`check_network_grad` (whose perturbed points are cheap) checks
#: every coordinate up to this many parameters.
NETWORK_AUTO_ALL_LIMIT = 200_000
#: The name of the library's delta rule in a report.
MANUAL_NAME = "manual (delta rule)"


def _mlp_coordinate_evaluator(net: MLP):
    """Perturbed MLP losses that recompute only the layers above the perturbed leaf.

    Setting ``W_l[r, c]`` to ``W_l[r, c] + d`` changes ``z_l`` by ``d * a_{l-1}[:, r]``
    in column ``c`` only (and ``b_l[c]`` by ``d``); the loss is then evaluated from
    layer ``l`` up. A real evaluation of the loss at the perturbed point, arranged so
    that a probe of the first layer of 784-100-10 costs a second layer, not a network.
    """

    def make(fun, treedef, k, chunk):
        del fun
        l, name = divmod(k, 2)
        name = ("b", "w")[name]  # jax flattens {"w", "b"} in sorted key order
        last = net.depth - 1

        def one(params, targets, a, zs, i, delta):
            z = zs[0]
            n_out = z.shape[1]
            # The probe moves column c of z_l by dz: d * a_{l-1}[:, r] for W_l[r, c],
            # d for b_l[c].
            if name == "w":
                r, c = i // n_out, i % n_out
                dz = delta * a[:, r]
            else:
                c, dz = i, jnp.full((z.shape[0],), delta, z.dtype)
            mask = (jnp.arange(n_out) == c)[None, :]
            if l == last:
                z = z + dz[:, None] * mask
                return net.loss_fn.value(net.output.fn(z), targets)
            # Only column c of a_l moves, so z_{l+1} moves by da_c W_{l+1}[c, :].
            col = z[:, c]
            da = net.hidden.fn(col + dz) - net.hidden.fn(col)
            z = zs[1] + da[:, None] * params[l + 1]["w"][c][None, :]
            out = (net.output if l + 1 == last else net.hidden).fn(z)
            for m in range(l + 2, net.depth):
                z = out @ params[m]["w"] + params[m]["b"][None, :]
                out = (net.output if m == last else net.hidden).fn(z)
            return net.loss_fn.value(out, targets)

        def run(leaves, args, idx, values, deltas):
            del values
            params = jax.tree.unflatten(treedef, leaves)
            x, y = args
            targets = prepare_targets(y, net.sizes[-1], x.dtype)
            a = x  # the input of layer l, z_l and z_{l+1}: once for all probes
            for m in range(l):
                a = net.hidden.fn(a @ params[m]["w"] + params[m]["b"][None, :])
            zs = [a @ params[l]["w"] + params[l]["b"][None, :]]
            if l < last:
                a_l = net.hidden.fn(zs[0])
                zs.append(a_l @ params[l + 1]["w"] + params[l + 1]["b"][None, :])
            return fdiff.chunked_map(
                lambda iv: one(params, targets, a, zs, *iv), (idx, deltas), chunk
            )

        return run

    return make


def _autodiff_deltas(net: MLP, params: Params, x: Array, targets: Array) -> list:
    """``dL/dz_l`` of every layer: ``jax.grad`` of zero offsets added to ``z_l``."""

    def loss(offsets):
        a, last = x, net.depth - 1
        for l, layer in enumerate(params):
            z = a @ layer["w"] + layer["b"][None, :] + offsets[l]
            a = (net.output if l == last else net.hidden).fn(z)
        return net.loss_fn.value(a, targets)

    zeros = [jnp.zeros((x.shape[0], n), x.dtype) for n in net.sizes[1:]]
    return jax.grad(loss)(zeros)


def _localise_deltas(net: MLP, params, x, y, dtype, rtol) -> tuple[int | None, str]:
    """The first layer, from the output down, whose hand-derived delta is wrong."""
    leaf_dtype = dtype or jnp.asarray(params[0]["w"]).dtype.name
    with jax.enable_x64(leaf_dtype == "float64" or jax.config.jax_enable_x64):
        p = cast_floats(params, dtype)
        xb, targets = net.check_batch(p, *cast_floats((x, y), dtype))
        manual, auto = jax.jit(
            lambda p, xb, t: (
                net.deltas(p, xb, t, batch_mean=True)[1],
                _autodiff_deltas(net, p, xb, t),
            )
        )(p, xb, targets)
        comp = compare_grads(
            {f"delta_{l + 1}": d for l, d in enumerate(manual)},
            {f"delta_{l + 1}": d for l, d in enumerate(auto)},
            names=("hand-derived", "autodiff"),
            rtol=rtol,
        )
    by_layer = {int(leaf.path.split("_")[1].rstrip("']")): leaf for leaf in comp.leaves}
    for l in range(net.depth, 0, -1):
        leaf = by_layer[l]
        if not leaf.passed:
            return l, (
                f"localisation: delta_l = dL/dz_l, hand-derived vs autodiff: "
                f"{_agree_list(by_layer, net.depth, l)}; the first layer from the "
                f"output down whose delta disagrees is layer {l} of {net.depth} "
                f"(params[{l - 1}]): max rel error {leaf.max_rel:.1e}"
            )
    return None, (
        "localisation: delta_l = dL/dz_l, hand-derived vs autodiff, agree in every "
        f"layer (worst max rel {comp.max_rel:.1e})"
    )


def _agree_list(by_layer, depth, stop) -> str:
    """The layers above ``stop`` whose deltas agree, in words."""
    agree = [f"layer {m}" for m in range(depth, stop, -1)]
    return (", ".join(agree) + " agree") if agree else "the output layer disagrees"


def _localise_paths(report: GradCheckReport, name: str, depth: int):
    """The first layer from the output down with a failing leaf of ``grad_fun``."""
    return seq_check.localise_paths(report, name, lambda l: f"layer {l} of {depth}")


def check_network_grad(
    net: MLP | Sequential,
    params: Params,
    x: Array,
    y: Array,
    *,
    grad_fun: Callable | None = None,
    key: Array | None = None,
    dtype=None,
    fd: str | None = "auto",
    fd_dtype="float64",
    fd_step: float | None = None,
    fd_samples: int = 64,
    fd_directions: int = 16,
    fd_safety: float = FD_SAFETY,
    rtol: float | None = None,
    seed: int = 0,
    chunk: int = 1024,
) -> GradCheckReport:
    """Checks a network spec's hand-derived gradient: :func:`check_grad` of
    ``net.loss``, with the layer that goes wrong named.

    The options are those of :func:`check_grad` (:class:`CheckOptions`), spelled and
    meaning the same; only two defaults differ, for a stated reason.

    Args:
      net: the network spec, an :class:`~jaxbp.MLP` or a :class:`~jaxbp.Sequential`.
      params: parameters to check at (for an MLP ``[{"w": (n_{l-1}, n_l), "b":
        (n_l,)}, ...]``).
      x: inputs ``(B, *input_shape)``.
      y: labels ``(B,)`` or targets ``(B, K)``.
      grad_fun: your own ``grad_fun(params, x, y)`` for this network; default the
        library's delta rule (``net.manual_grad``).
      key: for a :class:`~jaxbp.Sequential` with Dropout, the key of its masks (the
        training loss is checked, with the masks held fixed).
      dtype: as for :func:`check_grad`.
      fd: as for :func:`check_grad` (``None`` skips finite differences), except that
        ``"auto"`` checks every coordinate up to :data:`NETWORK_AUTO_ALL_LIMIT`
        parameters (a network's perturbed points are cheap), else a sample of
        ``fd_samples`` per leaf.
      fd_dtype, fd_step, fd_samples, fd_directions, fd_safety, rtol, seed: as for
        :func:`check_grad`; ``fd_samples`` never changes ``fd``.
      chunk: as for :func:`check_grad`; 1024 by default, since an MLP's perturbed
        points recompute only the layers above the perturbed one.

    Returns:
      A :class:`GradCheckReport` with the comparisons ``manual (delta rule)`` (or
      ``grad_fun``) vs ``jax.grad`` and, with finite differences, each of them vs
      ``finite differences``; its ``first_failing_layer`` names the first wrong layer
      from the output down: from the deltas ``dL/dz_l`` (for a Sequential, the
      cotangent of each layer's output) for the library's rule, from the failing
      leaves for a ``grad_fun``.

    Raises:
      ValueError, TypeError: as for :func:`check_grad`; on a ``key`` for an MLP.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = MLP((3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> check_network_grad(net, params, x, y).passed
      True
    """
    options = CheckOptions(
        dtype=dtype, fd=fd, fd_dtype=fd_dtype, fd_step=fd_step,
        fd_samples=fd_samples, fd_directions=fd_directions, fd_safety=fd_safety,
        rtol=rtol, seed=seed, chunk=chunk,
    )  # fmt: skip
    net.check_params(params)
    if isinstance(net, Sequential):
        return _check_sequential(net, params, x, y, grad_fun, key, options)
    if key is not None:
        raise ValueError("key is for Sequential networks with Dropout; an MLP has none")
    name = "grad_fun" if grad_fun is not None else MANUAL_NAME
    report = run_check(
        net.loss, grad_fun or net.manual_grad, params, (x, y), options, name=name,
        auto_limit=NETWORK_AUTO_ALL_LIMIT,
        coordinate_evaluator=_mlp_coordinate_evaluator(net),
        title=f"check_network_grad of {net}, batch {int(jnp.shape(x)[0])}",
        label=lambda path: f"{path} (layer {int(path[1:path.index(']')]) + 1} of "
        f"{net.depth})",
    )  # fmt: skip
    if grad_fun is None:
        layer, note = _localise_deltas(
            net, params, x, y, resolve_dtype(dtype, "dtype"), rtol
        )
        if layer is None and not report.passed:
            failing_layer, path_note = _localise_paths(report, name, net.depth)
            note += "; the error is in the parameter gradients computed from them" + (
                f" ({path_note.split(': ', 1)[1]})" if path_note else ""
            )
            layer = failing_layer
    else:
        layer, note = _localise_paths(report, name, net.depth)
        if note is None:
            note = f"localisation: every layer of {name} passes"
    return dataclasses.replace(
        report, notes=(*report.notes, note), first_failing_layer=layer
    )


def _check_sequential(net: Sequential, params, x, y, grad_fun, key,
                      options: CheckOptions) -> GradCheckReport:  # fmt: skip
    """:func:`check_network_grad` of a Sequential: the general checker, then
    localisation by the cotangent of every layer's output."""
    name = "grad_fun" if grad_fun is not None else MANUAL_NAME
    report = run_check(
        partial(net.loss, key=key), grad_fun or partial(net.manual_grad, key=key),
        params, (x, y), options, name=name, auto_limit=NETWORK_AUTO_ALL_LIMIT,
        title=f"check_network_grad of {net}, batch {int(jnp.shape(x)[0])}",
        label=partial(seq_check.layer_label, net),
    )  # fmt: skip
    dtype, rtol = resolve_dtype(options.dtype, "dtype"), options.rtol
    if grad_fun is None:
        layer, note = seq_check.localise_deltas(net, params, x, y, dtype, rtol, key)
        if layer is None and not report.passed:
            layer, path_note = seq_check.localise_paths(
                report, name, net.describe_layer
            )
            if path_note:
                note += "; " + path_note.split(": ", 1)[1]
    else:
        layer, note = seq_check.localise_paths(report, name, net.describe_layer)
        if note is None:
            note = f"localisation: every layer of {name} passes"
    return dataclasses.replace(
        report, notes=(*report.notes, note), first_failing_layer=layer
    )


def assert_network_grad_matches(
    net: MLP | Sequential, params: Params, x: Array, y: Array, **options
) -> None:
    """One-line assertion for a test suite: :func:`check_network_grad` must pass.

    Args:
      net, params, x, y: as for :func:`check_network_grad`.
      **options: keyword options of :func:`check_network_grad`.

    Raises:
      AssertionError: whose message is the full report, when any comparison fails.
    """
    check_network_grad(net, params, x, y, **options).assert_passed()


# --- deprecated names, kept for one release ------------------------------------


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"jaxbp.{old} is deprecated and will be removed in the next release; use "
        f"jaxbp.{new} (the same check, with the options of check_grad)",
        DeprecationWarning,
        stacklevel=3,
    )


def _legacy_options(options: dict) -> dict:
    """The old keywords of :func:`check_gradients` as :func:`check_network_grad`'s:
    ``finite_differences=False`` is ``fd=None``, and ``fd_samples`` given with
    ``fd="auto"`` meant ``fd="sample"`` (``fd_samples=None``: the default)."""
    options = dict(options)
    if not options.pop("finite_differences", True):
        options["fd"] = None
    if "fd_samples" in options:
        if options["fd_samples"] is None:
            del options["fd_samples"]
        elif options.get("fd", "auto") == "auto":
            options["fd"] = "sample"
    return options


def check_gradients(net, params, x, y, **options) -> GradCheckReport:
    """Deprecated: :func:`check_network_grad` (removed in the next release).

    Takes the old keywords too: ``finite_differences=False`` (now ``fd=None``), and
    ``fd_samples`` with ``fd="auto"``, which here still means ``fd="sample"``.
    """
    _deprecated("check_gradients", "check_network_grad")
    return check_network_grad(net, params, x, y, **_legacy_options(options))


def assert_gradients_agree(net, params, x, y, **options) -> None:
    """Deprecated: :func:`assert_network_grad_matches` (removed in the next release);
    takes the old keywords of :func:`check_gradients`."""
    _deprecated("assert_gradients_agree", "assert_network_grad_matches")
    check_network_grad(net, params, x, y, **_legacy_options(options)).assert_passed()
