"""Check a hand-derived gradient of any function of any pytree, leaf by leaf.

:func:`check_grad` takes ``fun(params, *args) -> scalar`` and the user's
``grad_fun(params, *args) -> pytree like params`` and makes three comparisons:

1. ``grad_fun`` against ``jax.grad(fun)``, entry by entry, in the dtype asked for;
2. ``grad_fun`` against central finite differences (float64 by default);
3. ``jax.grad(fun)`` against the same finite differences;

and, where the function has kinks in two or more of the coordinates probed, two more:

4. ``grad_fun`` against finite differences along directions that mix two kinked
   coordinates;
5. ``jax.grad(fun)`` against the same.

Each comparison is a table with one row per leaf (:mod:`jaxbp.gradcheck.report`, which
also states the rule of comparison 1). Before any of them, the options, ``params``
(finite floating-point leaves) and ``fun``'s value at ``params`` (a finite real scalar)
are checked (:mod:`jaxbp.gradcheck.inputs`), so that a bad point is never blamed on
``grad_fun``.

**The rounding of a gradient in its dtype.** Leaves of mixed dtypes are judged at the
tolerance of the least precise (where they meet, the function computes in it). And a
gradient computed in a dtype less precise than ``fd_dtype`` carries rounding that no
fixed rtol bounds: where terms cancel (``1 - tanh^2`` near saturation) ``jax.grad`` in
float16 is 30% off the true gradient. So ``jax.grad`` is also computed in ``fd_dtype``,
and the difference, entry by entry, is allowed on top of every tolerance below (it is
zero when the dtypes agree).

**Gradient against finite differences** (comparisons 2 to 5): every probe (a
coordinate, or a direction ``v`` compared as ``v . g``) has an error budget from
:mod:`jaxbp.finite_differences`: rounding ``delta_f / h`` plus truncation. A smooth
probe passes when

.. math::

   |u - c_h| \\le S \\cdot \\text{rounding} + 3 \\cdot \\text{truncation}
   + \\text{rtol} \\cdot \\max(|u|, \\text{tiny}),

with ``u`` the gradient's value, ``S = fd_safety`` (10) and the last term the rounding
of ``u`` itself in its dtype (plus that of ``jax.grad`` in it, above).

**Kinks.** A *kink* is a point where the function is continuous but not
differentiable: the corner of ``relu``, ``abs`` or ``maximum``, where the derivative
from the left and from the right differ. There a hand-derived gradient is right when it
is a *subgradient*, and different choices (``relu'(0) = 0`` or ``1``) are all right.
Where a probe is not smooth within ``2h``, it passes as a ``kink`` when ``u`` lies
inside the bracket of the one-sided quotients, that is between the one-sided
derivatives ``f'(p; v)`` and ``-f'(p; -v)`` along that probe, widened by their rounding
(``5 S`` times ``delta_f / h``) and by the rtol term; outside it fails.

One coordinate at a time is not enough: the kink of ``max(w0 - w1, 0)`` at
``w0 = w1`` runs across both coordinates, and ``(1, 0)`` lies inside each one's bracket
although along ``(1, 1)``, where the function is flat, its ``g . v`` is 1. So where two
or more coordinates are kinks, pairs of them (all pairs, or a chain through all of them
in random order when there are more than :data:`KINK_PAIRS`) are probed together along
``v = e_i / |J_i| +- e_k / |J_k|``, with ``J`` each coordinate's jump in slope. When the
pair lies across one kink (``c relu(a . p)``: ``J_i = c |a_i|``), one of the two runs
along the kink, where the function is differentiable and ``g . v`` must equal its
slope, and the other across it with the jump of that kink; such pairs are recognised
by the function being smooth along one and by the jump across the other
(:data:`KINK_TANGENT`), and ``g . v`` must lie between the one-sided derivatives along
both. This catches every subgradient that mixes two choices across one kink (``(1, 0)``
above, or ``relu'(0) = 1`` for a unit's weights with ``0`` for its bias).

**What a passing check certifies at a kink** is exactly that: ``g`` lies between the
one-sided derivatives along each probed coordinate and each probed pair direction.
That is what every subgradient of a convex or concave function, and every Clarke
subgradient of a function with a single kink through the point, satisfies. It samples
finitely many directions, so it is not a proof that ``g`` is in the Clarke
subdifferential. Pairs whose coordinates jump with opposite signs, or which do not lie
across a single kink, are not probed: for ``relu(w0) - relu(w1)`` at 0 the function is
linear along ``(1, -1)``, yet ``jax.grad``'s ``(0, 0)`` is a Clarke subgradient, and
demanding ``g . v`` between the one-sided derivatives there would reject it. The same
can happen along one coordinate that kinks of opposite curvature cross at once:
``relu(x + y) - relu(x - y)`` is flat along ``x`` at 0, and ``relu'(0)`` taken as 1 in
the first and 0 in the second gives ``(1, 1)``, a Clarke subgradient that fails. There
the check errs towards FAIL.
In ``fd="directions"`` there are no coordinates and no pairs: each random direction of
a leaf is judged between its one-sided derivatives, which a Clarke subgradient can
fail where one direction crosses kinks of opposite curvature.

A failure says how many times its budget the error is.
"""

import dataclasses
import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxbp import finite_differences as fdiff
from jaxbp.gradcheck.inputs import (
    as_float64,
    cast_floats,
    check_options,
    check_params,
    dtype_of,
    grads_of,
    resolve_dtype,
    value_of,
)
from jaxbp.gradcheck.report import (
    AUTO_NAME,
    FD_NAME,
    Comparison,
    GradCheckReport,
    column_name,
    default_tiny,
    elementwise_errors,
    format_where,
    grad_rtol,
    leaf_error,
)

Array = jax.Array

#: The safety factor ``S`` on the rounding budget of a difference quotient.
FD_SAFETY = 10.0
#: Finite-difference modes (``fd=``): every coordinate, a random sample of coordinates
#: per leaf, random directions per leaf, or ``auto`` (every coordinate when there are
#: at most :data:`AUTO_ALL_LIMIT` of them, a sample otherwise).
FD_MODES = ("auto", "all", "sample", "directions")
#: ``fd="auto"`` checks every coordinate up to this many parameters.
AUTO_ALL_LIMIT = 4096
#: A failure whose error is more than this many times its budget is "far beyond what
#: finite differences can explain".
_FAR_BEYOND = 100.0
#: At most this many pairs of kinked coordinates are probed together (two directions
#: each); all pairs when there are few kinks, else a chain through them all.
KINK_PAIRS = 256
#: A pair lies across a single kink ``c relu(a . p)`` when the function is smooth along
#: one of its two directions and, along the other, its jump in slope is that of the
#: kink, ``J_i |v_i| + J_k |v_k|``, to within this fraction (two kinks of the same
#: curvature give equal jumps along both; nested kinks, one along and twice across).
KINK_TANGENT = 0.25

_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _call(transform, f, params, args):
    """``transform(f)(params, *args)``; run eagerly if ``f`` cannot be traced."""
    try:
        return transform(f)(params, *args)
    except _TRACER_ERRORS:
        return f(params, *args)


def _value(fun, has_aux, params, *args):
    """``fun``'s real scalar value (without its aux), checked (:func:`value_of`)."""
    return value_of(fun(params, *args), has_aux)


@dataclasses.dataclass(frozen=True)
class _Probes:
    """The finite-difference probes of one leaf and their quotients."""

    unit: str
    positions: np.ndarray  # flat indices, or direction numbers
    q: fdiff.Quotients
    effective: np.ndarray | None  # (m, size) directions actually taken


@dataclasses.dataclass(frozen=True)
class _KinkPairs:
    """Directions that move two kinked coordinates at once, and their quotients.

    Direction ``j`` moves the flat entries ``idx[j]`` of the leaves ``ids[j]`` by
    ``effective[j]`` per unit step; directions ``2m`` and ``2m + 1`` are the two of
    pair ``m``, and ``tested`` marks those of the pairs that lie across a single kink.
    """

    ids: np.ndarray  # (n, 2)
    idx: np.ndarray  # (n, 2)
    effective: np.ndarray  # (n, 2)
    q: fdiff.Quotients
    tested: np.ndarray  # (n,) bool
    kinked: int  # coordinates found to be kinks
    pairs: int  # pairs probed


def _plan(mode: str, sizes: list[int], samples: int, auto_limit: int) -> str:
    if mode == "auto":
        return "all" if sum(sizes) <= auto_limit else "sample"
    return mode


def _coverage(mode: str, sizes: list[int], counts: list[int], fd_dtype: str) -> str:
    total, done = sum(sizes), sum(counts)
    if mode == "directions":
        what = f"{counts[0] if counts else 0} random directions per leaf"
        what += f" ({done} directions over {len(sizes)} leaves, {total:,} coordinates)"
    elif mode == "all":
        what = f"every coordinate ({done:,} of {total:,})"
    else:
        what = f"random sample of {done:,} of {total:,} coordinates"
    return f"central differences in {fd_dtype}, {what}"


def _index(flat, shape) -> tuple[int, ...]:
    """The index into a leaf of ``shape`` of its flat entry ``flat``."""
    return tuple(int(i) for i in np.unravel_index(int(flat), shape))


def _coordinate_point(path, idx, offsets, shape, j) -> str:
    """The ``j``-th perturbed point of a leaf's coordinate probes, in words."""
    return f"{path} {_index(idx[j // 4], shape)} moved by {offsets[j // 4, j % 4]:+.3g}"


def _direction_point(path, offsets, j) -> str:
    """The ``j``-th perturbed point of a leaf's direction probes, in words."""
    return (
        f"{path} moved along random direction {j // 4} by {offsets[j // 4, j % 4]:+g} "
        "steps"
    )


def _step_words(step) -> str:
    return "the default step" if step is None else f"fd_step={step!r}"


def _check_values(values, where, path: str, fd_dtype: str, step) -> None:
    """Raises ``ValueError`` if ``fun`` is not finite at the point or next to it.

    ``values`` are those of ``1 + 4n`` probes (``f(p)`` first); ``where(j)`` names the
    point of the ``j``-th perturbed one.
    """
    if not math.isfinite(values[0]):
        raise ValueError(
            f"fun's value at params is {values[0]} in {fd_dtype}: the gradient is "
            "only defined where fun is finite"
        )
    bad = np.flatnonzero(~np.isfinite(values[1:]))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"fun is not finite at {bad.size} of the {values.size - 1} points next to "
            f"params that the finite differences of {path} take (the first: {where(j)}"
            f", where fun is {values[1 + j]}); params may sit at the edge of fun's "
            f"domain (sqrt or log at 0): check at another point, or with an fd_step "
            f"smaller than {_step_words(step)}"
        )


def _fd_probes(fun, params, args, paths, *, mode, fd_dtype, step, samples_per_leaf,
               directions, seed, chunk, coordinate_evaluator):  # fmt: skip
    """Runs the finite differences of every leaf (inside the ``fd_dtype`` context).

    Returns:
      ``(probes, noise)``: one :class:`_Probes` per leaf and the noise ``delta_f``.

    Raises:
      ValueError: if a step does not move ``params``, or ``fun`` is not finite at
        ``params`` or at a perturbed point.
    """
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    plans, evaluators, inputs, names = [], [], [], []
    for k, leaf in enumerate(leaves):
        host = np.asarray(leaf)
        if mode == "directions":
            dirs = fdiff.random_directions(host, directions, rng, fd_dtype)
            x, offsets, eff = fdiff.direction_probes(host, dirs, fd_dtype, step=step)
            if not np.all(np.any(eff != 0, axis=1)):
                raise ValueError(
                    f"{_step_words(step)} does not move params leaf {paths[k]} in "
                    f"{fd_dtype} along a random direction: use a larger fd_step, or "
                    "None for a step per entry"
                )
            plans.append(("directions", np.arange(directions), offsets, eff))
            evaluators.append(fdiff.leaf_evaluator(fun, treedef, k, chunk))
            inputs.append(x)
            names.append((paths[k], partial(_direction_point, paths[k], offsets)))
            continue
        if mode == "all" or host.size <= samples_per_leaf:
            idx = np.arange(host.size)
        else:
            idx = np.sort(rng.choice(host.size, samples_per_leaf, replace=False))
        if idx.size == 0:
            plans.append(("coordinates", idx, np.ones((0, 4)), None))
            continue
        x, offsets = fdiff.coordinate_probes(host, idx, fd_dtype, step=step)
        if np.any(offsets == 0):
            j = int(np.argwhere(offsets == 0)[0][0])
            raise ValueError(
                f"{_step_words(step)} does not move params leaf {paths[k]} at "
                f"{_index(idx[j], host.shape)} (= {float(host.ravel()[idx[j]]):g}) in "
                f"{fd_dtype}: use a larger fd_step, or None for a step per entry"
            )
        plans.append(("coordinates", idx, offsets, None))
        make = coordinate_evaluator or fdiff.coordinate_evaluator
        evaluators.append(make(fun, treedef, k, chunk))
        inputs.append(x)
        names.append(
            (paths[k], partial(_coordinate_point, paths[k], idx, offsets, host.shape))
        )
    evaluated = fdiff.evaluate_all(evaluators, leaves, args, inputs)
    for values, (path, where) in zip(evaluated, names, strict=True):
        _check_values(values, where, path, fd_dtype, step)
    values = iter(evaluated)
    samples = [
        fdiff.samples_from(next(values), offsets)
        if positions.size
        else fdiff.Samples(0.0, np.zeros((0, 4)), offsets)
        for _, positions, offsets, _ in plans
    ]
    inputs = [
        np.abs(np.asarray(leaf, np.float64).ravel()[positions])
        if unit == "coordinates"
        else None
        for leaf, (unit, positions, _, _) in zip(leaves, plans, strict=True)
    ]
    noise = fdiff.noise_level(samples, fdiff.machine_eps(fd_dtype), inputs)
    probes = [
        _Probes(unit, positions, fdiff.quotients(sample, noise), eff)
        for (unit, positions, _, eff), sample in zip(plans, samples, strict=True)
    ]
    return probes, noise


def _kink_pairs(fun, params, args, paths, probes, *, fd_dtype, noise, seed, chunk,
                safety) -> _KinkPairs | None:  # fmt: skip
    """Probes pairs of kinked coordinates together (inside the ``fd_dtype`` context).

    A coordinate is a kink when its probe is not smooth and its jump in slope ``J``
    is above the rounding of the bracket. Pairs of kinks whose jumps have the same sign
    are probed along ``v = h (e_i / |J_i| +- e_k / |J_k|)``, ``h = min(h_i |J_i|,
    h_k |J_k|)`` (so that no entry moves by more than its own step). Across a single
    kink ``c relu(a . p)`` (``J_i = c |a_i|``) one of the two runs along the kink, where
    the function is smooth, and the other across it with the jump
    ``J_i |v_i| + J_k |v_k| = 2 h sign(c)``; a pair is tested when both hold (to
    within :data:`KINK_TANGENT`), so that kinks of other shapes (nested ReLUs, several
    kinks through the pair) are left alone.

    Returns:
      The :class:`_KinkPairs`, or ``None`` when fewer than two coordinates are kinks
      or no pair of them has jumps of the same sign.
    """
    kinked = []  # (leaf, flat index, jump, step)
    for k, p in enumerate(probes):
        if p.unit != "coordinates" or not p.positions.size:
            continue
        jump = p.q.jump
        with np.errstate(invalid="ignore"):
            clear = ~p.q.smooth & (np.abs(jump) > 5 * safety * p.q.rounding)
        for j in np.flatnonzero(clear):
            kinked.append((k, int(p.positions[j]), float(jump[j]), abs(p.q.step[j])))
    n = len(kinked)
    if n < 2:
        return None
    if n * (n - 1) // 2 <= KINK_PAIRS:
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    else:  # a chain through every kink, in random order
        order = np.random.default_rng([seed, n]).permutation(n)
        pairs = list(zip(order[:-1].tolist(), order[1:].tolist(), strict=True))
    pairs = [(a, b) for a, b in pairs if kinked[a][2] * kinked[b][2] > 0][:KINK_PAIRS]
    if not pairs:
        return None
    ids, idx, moves = [], [], []
    for a, b in pairs:
        (ka, ia, ja, ha), (kb, ib, jb, hb) = kinked[a], kinked[b]
        h = min(ha * abs(ja), hb * abs(jb))
        for sign in (1.0, -1.0):  # v = h (e_i / |J_i| +- e_k / |J_k|)
            ids.append((ka, kb))
            idx.append((ia, ib))
            moves.append((h / abs(ja), sign * h / abs(jb)))
    ids, idx, moves = np.array(ids), np.array(idx), np.array(moves)
    leaves, treedef = jax.tree.flatten(params)
    x, offsets, effective = fdiff.entries_probes(leaves, ids, idx, moves, fd_dtype)
    # Each probe under vmap holds a copy of every leaf: at most 2^22 entries at once.
    total = sum(np.size(leaf) for leaf in leaves)
    evaluator = fdiff.entries_evaluator(
        fun, treedef, max(1, min(chunk, 2**22 // total))
    )
    (values,) = fdiff.evaluate_all([evaluator], leaves, args, [x])

    def where(j):
        m = j // 4
        return (
            f"{paths[ids[m, 0]]} and {paths[ids[m, 1]]} moved together by "
            f"{offsets[m, j % 4]:+g} steps along a direction mixing two kinks"
        )

    _check_values(values, where, " and ".join(sorted({paths[k] for k in ids.ravel()})),
                  fd_dtype, None)  # fmt: skip
    q = fdiff.quotients(fdiff.samples_from(values, offsets), noise)
    jump = q.jump.reshape(-1, 2)
    smooth = q.smooth.reshape(-1, 2)
    rows = np.arange(len(pairs))
    along = np.argmin(np.abs(jump), axis=1)  # the direction that runs along the kink
    across = 1 - along
    # the jump across one kink: J_i |v_i| + J_k |v_k|, as the coordinates measured it
    jumps = np.array([[kinked[a][2], kinked[b][2]] for a, b in pairs])
    expected = np.sum(jumps * np.abs(moves[::2]), axis=1)
    with np.errstate(invalid="ignore"):
        single = (
            smooth[rows, along]
            & ~smooth[rows, across]
            & (np.abs(jump[rows, across] - expected) <= KINK_TANGENT * np.abs(expected))
            & (np.abs(jump[rows, along]) <= KINK_TANGENT * np.abs(expected))
        )
    return _KinkPairs(ids, idx, effective, q, np.repeat(single, 2), n, len(pairs))


def _rounding_of_jax_grad(value_fun, params, args, auto_np, working, fd_dtype):
    """``|jax.grad - jax.grad in fd_dtype|`` per entry, flat per leaf: the rounding of
    the reference itself, where ``fd_dtype`` is the more precise (zeros otherwise).

    Where terms cancel (``1 - tanh^2`` near saturation), ``jax.grad`` in float16 can be
    30% off the true gradient, far beyond GRAD_RTOL; comparison 1 allows that much
    more, and finite differences still judge ``grad_fun`` against the truth.
    """
    zeros = [np.zeros(np.size(t)) for t in auto_np]
    if fdiff.machine_eps(fd_dtype) >= fdiff.machine_eps(working):
        return zeros
    with jax.enable_x64(fd_dtype == "float64" or jax.config.jax_enable_x64):
        p, a = cast_floats(params, fd_dtype), cast_floats(args, fd_dtype)
        precise = _call(jax.jit, jax.grad(value_fun), p, a)
        precise = [as_float64(t).ravel() for t in jax.tree.leaves(precise)]
    with np.errstate(invalid="ignore"):  # inf - inf where both are infinite
        return [
            np.nan_to_num(np.abs(g - t.ravel()), nan=0.0, posinf=0.0)
            for g, t in zip(precise, auto_np, strict=True)
        ]


def _judge(u, allow, q: fdiff.Quotients, safety):
    """Per probe: ``|u - c_h|``, its tolerance, and whether it passes as a kink."""
    c = q.central
    err = np.abs(u - c)
    smooth_tol = safety * q.rounding + 3 * q.truncation + allow
    lo, hi = q.bracket
    # The extrapolated one-sided quotients carry up to 5 delta_f / h of rounding.
    margin = 5 * safety * q.rounding + allow
    inside = (u >= lo - margin) & (u <= hi + margin)
    kink = ~q.smooth & inside
    # Not smooth: the distance allowed from c towards u is to the bracket's edge, so
    # that err <= tol exactly when u is inside the widened bracket.
    toward = np.where(u >= c, hi + margin - c, c - (lo - margin))
    return err, np.where(q.smooth, smooth_tol, toward), kink


def _relative(err, u, c, floor):
    with np.errstate(invalid="ignore"):
        return err / np.maximum(np.maximum(np.abs(u), np.abs(c)), floor)


def _against_fd(path, shape, grad, probes: _Probes, dtype, rtol, safety, rounding,
                tree_scale):  # fmt: skip
    """One row of a gradient against finite differences, and the kink mask.

    ``rounding``: the rounding a gradient of this leaf can carry in its dtype, per
    entry (:func:`_rounding_of_jax_grad`), allowed on top of the rtol term;
    ``tree_scale``: the largest gradient entry of the tree (:func:`default_tiny`).
    """
    g = as_float64(grad).ravel()
    q = probes.q
    floor = default_tiny(dtype, float(np.max(np.abs(g))) if g.size else 0.0, tree_scale)
    r = grad_rtol(dtype, rtol)
    if probes.unit == "directions":
        u = probes.effective @ g
        allow = r * (np.abs(probes.effective) @ np.maximum(np.abs(g), floor))
        allow = allow + np.abs(probes.effective) @ rounding
    else:
        u = g[probes.positions]
        allow = r * np.maximum(np.abs(u), floor) + rounding[probes.positions]
    err, tol, kink = _judge(u, allow, q, safety)
    rel = _relative(err, u, q.central, floor)
    row = leaf_error(
        path, shape, probes.unit, err, tol, rel, u, q.central, kink, probes.positions, r
    )
    return row, kink


def _along_kinks(paths, shapes, grads, dtype, kp: _KinkPairs, rtol, safety,
                 rounding, tree_scale):  # fmt: skip
    """Rows of a gradient against the tested pair directions, one per leaf, all
    judged in ``dtype``.

    A direction counts in the rows of both leaves it moves.
    """
    floors = [
        default_tiny(dtype, float(np.max(np.abs(g), initial=0.0)), tree_scale)
        for g in grads
    ]
    r = grad_rtol(dtype, rtol)
    g = np.array([[grads[k].ravel()[i] for k, i in zip(*pair, strict=True)]
                  for pair in zip(kp.ids, kp.idx, strict=True)])  # fmt: skip
    u = np.sum(kp.effective * g, axis=1)
    floor = np.asarray(floors)[kp.ids]
    allow = np.sum(r * np.abs(kp.effective) * np.maximum(np.abs(g), floor), axis=1)
    eps = np.array([[rounding[k][i] for k, i in zip(*pair, strict=True)]
                    for pair in zip(kp.ids, kp.idx, strict=True)])  # fmt: skip
    allow = allow + np.sum(np.abs(kp.effective) * eps, axis=1)
    err, tol, kink = _judge(u, allow, kp.q, safety)
    rel = _relative(err, u, kp.q.central, np.max(np.abs(kp.effective) * floor, axis=1))
    tested = np.flatnonzero(kp.tested)
    rows, probes = [], []
    for k, path in enumerate(paths):
        mine = tested[np.any(kp.ids[tested] == k, axis=1)]
        rows.append(leaf_error(path, shapes[k], "directions", err[mine], tol[mine],
                               rel[mine], u[mine], kp.q.central[mine], kink[mine],
                               mine, r))  # fmt: skip
        probes.append(_Probes("directions", mine, kp.q, None))
    return rows, probes


def _explain(comparison: Comparison, probes: list[_Probes] | None) -> list[str]:
    """One sentence per failing leaf of a comparison."""
    notes = []
    for k, leaf in enumerate(comparison.leaves):
        if leaf.passed:
            continue
        where = format_where(leaf.worst)
        if math.isnan(leaf.max_abs):
            notes.append(f"{leaf.path}: NaN in {comparison.left} or {comparison.right}")
            continue
        err = abs(leaf.left_value - leaf.right_value)
        head = (
            f"{leaf.path}: {leaf.failures} of {leaf.checked} {leaf.unit} fail; worst "
            f"at "
            f"{where}: {column_name(comparison.left)} {leaf.left_value:+.6e}, "
            f"{column_name(comparison.right)} {leaf.right_value:+.6e}"
        )
        if probes is None:
            notes.append(
                f"{head}, error {err:.1e} = {leaf.ratio:.2g} x the tolerance "
                f"(rtol {leaf.rtol:g})"
            )
            continue
        p = probes[k]
        if leaf.unit == "directions":
            j = int(leaf.worst)
        else:
            flat = np.ravel_multi_index(leaf.worst, leaf.shape)
            j = int(np.flatnonzero(p.positions == flat)[0])
        budget = float(p.q.rounding[j] + p.q.truncation[j])
        times = err / budget if budget > 0 else math.inf
        kind = "" if p.q.smooth[j] else " (not smooth there: outside the bracket "
        if not p.q.smooth[j]:
            lo, hi = (float(b[j]) for b in p.q.bracket)
            kind += f"[{lo:+.6e}, {hi:+.6e}] of the one-sided quotients)"
        verdict = (
            "far beyond what finite differences can explain"
            if times > _FAR_BEYOND
            else "close to what finite differences can resolve; try another fd_step"
        )
        notes.append(
            f"{head}{kind}; error {err:.1e} is {times:.2g} x the finite-difference "
            f"error budget {budget:.1e} (rounding {p.q.rounding[j]:.1e}, truncation "
            f"{p.q.truncation[j]:.1e}): {verdict}"
        )
    return notes


def _explain_pairs(comparison: Comparison, kp: _KinkPairs, paths, shapes) -> list[str]:
    """What each failing leaf's worst pair direction is, and what its failure means."""
    notes = []
    for leaf in comparison.leaves:
        if leaf.passed or math.isnan(leaf.max_abs):
            continue
        j = int(leaf.worst)
        moved = " and ".join(
            f"{paths[k]} {_index(i, shapes[k])} by {e:+.2e}"
            for k, i, e in zip(kp.ids[j], kp.idx[j], kp.effective[j], strict=True)
        )
        lo, hi = (float(b[j]) for b in kp.q.bracket)
        way = "along" if kp.q.smooth[j] else "across"
        notes.append(
            f"{leaf.path}: dir {j} moves {moved} per step, {way} the kink they share; "
            f"there {column_name(comparison.left)} . dir = {leaf.left_value:+.6e} is "
            f"not between the one-sided derivatives [{lo:+.6e}, {hi:+.6e}], so "
            f"{comparison.left} is not a subgradient at params (each of its entries "
            "may still be inside its own bracket)"
        )
    return notes


def _kink_note(name, kinks, kp: _KinkPairs | None) -> str:
    """The note on kinks: how many, and what was checked across them."""
    note = (
        f"{kinks} entries of {name} sit where the function is not smooth within 2h "
        "(a kink: the one-sided derivatives differ) and lie inside the bracket of the "
        "one-sided quotients: accepted as subgradients (result 'kink')"
    )
    if kp is None:
        return note
    tested = int(kp.tested.sum()) // 2
    note += (
        f"; {_plural(kp.pairs, 'pair')} of the {kp.kinked} kinked coordinates probed "
        f"together, {tested} across a single kink"
    )
    if tested:
        note += (
            f", whose {2 * tested} directions (the 'along the kinks' tables) need "
            f"{name} . dir between the one-sided derivatives: a necessary condition "
            "for a subgradient, checked along these directions only"
        )
    return note


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """The options both checkers take, spelled and meaning the same in both.

    :func:`check_grad` and :func:`jaxbp.gradcheck.check_network_grad` take these as
    keyword arguments, with the same defaults except ``chunk`` (see there); the one
    engine behind both, :func:`run_check`, takes them as one object. They are checked
    by :func:`run_check`, all at once, before any comparison.

    Attributes:
      dtype: dtype of comparison 1 (the user's gradient and ``jax.grad``); ``None``:
        each leaf's own.
      fd: finite-difference mode: ``"all"``, ``"sample"``, ``"directions"``,
        ``"auto"`` (every coordinate up to the checker's limit, else a sample of
        ``fd_samples`` per leaf), or ``None`` (no finite differences).
      fd_dtype: dtype of the finite differences.
      fd_step: a fixed step ``h > 0``, or ``None`` for one per entry.
      fd_samples: coordinates per leaf whenever coordinates are sampled (``"sample"``,
        and ``"auto"`` above its limit); never changes ``fd``.
      fd_directions: directions per leaf for ``fd="directions"``.
      fd_safety: the factor ``S`` on the rounding budget of a difference quotient.
      rtol: relative tolerance of the gradients; ``None``: by dtype.
      seed: seed of the sampled coordinates, directions and pairs of kinks.
      chunk: perturbed points evaluated at once (one ``vmap``).
    """

    dtype: object = None
    fd: str | None = "auto"
    fd_dtype: object = "float64"
    fd_step: float | None = None
    fd_samples: int = 64
    fd_directions: int = 16
    fd_safety: float = FD_SAFETY
    rtol: float | None = None
    seed: int = 0
    chunk: int = 128


@dataclasses.dataclass(frozen=True)
class _Leaves:
    """The leaves of ``params`` as every comparison judges them.

    Attributes:
      paths, shapes: each leaf's name and shape.
      dtype: the dtype every leaf is judged in, the least precise of the leaves' dtypes
        (where leaves of mixed dtypes meet, the function computes in it).
      rounding: ``jax.grad``'s own rounding in its dtype, per entry, flat
        (:func:`_rounding_of_jax_grad`).
      tree_scale: the largest gradient entry of the tree (:func:`default_tiny`).
    """

    paths: list
    shapes: list
    dtype: str
    rounding: list
    tree_scale: float


def _fd_rows(grads, leaves: _Leaves, probes: list[_Probes], rtol, safety):
    """One gradient against the finite-difference probes: its rows, and per leaf the
    probes that lie on a kink."""
    rows, kinks = [], []
    for k, path in enumerate(leaves.paths):
        row, kink = _against_fd(path, leaves.shapes[k], grads[k], probes[k],
                                leaves.dtype, rtol, safety, leaves.rounding[k],
                                leaves.tree_scale)  # fmt: skip
        rows.append(row)
        kinks.append(kink)
    return rows, kinks


def _against_autodiff(user, auto, leaves: _Leaves, excused, rtol):
    """Comparison 1's rows: ``grad_fun`` against ``jax.grad``, every coordinate, with
    ``jax.grad``'s own rounding allowed on top of the tolerance."""
    dtype = leaves.dtype
    floor = default_tiny(dtype, 0.0, leaves.tree_scale)
    rows = []
    for k, path in enumerate(leaves.paths):
        a64, b64 = user[k].ravel(), auto[k].ravel()
        err, tol, rel = elementwise_errors(a64, b64, dtype, rtol, floor)
        tol = tol + leaves.rounding[k]
        rows.append(leaf_error(path, leaves.shapes[k], "coordinates", err, tol, rel,
                               a64, b64, excused[k], np.arange(err.size),
                               grad_rtol(dtype, rtol)))  # fmt: skip
    return rows


def _along_kink_comparisons(name, user, auto, leaves: _Leaves, pairs: _KinkPairs,
                            fd_dtype, rtol, safety):  # fmt: skip
    """Comparisons 4 and 5: both gradients along the pairs of kinks, and their notes."""
    along = (
        f"central differences in {fd_dtype}, {int(pairs.tested.sum())} "
        "directions along the kinks (each moves two kinked coordinates)"
    )
    comparisons, notes = [], []
    for left, grads in ((name, user), (AUTO_NAME, auto)):
        rows, pair_probes = _along_kinks(
            leaves.paths,
            leaves.shapes,
            grads,
            leaves.dtype,
            pairs,
            rtol,
            safety,
            leaves.rounding,
            leaves.tree_scale,
        )
        comparisons.append(Comparison(left, FD_NAME, fd_dtype, tuple(rows), along))
        notes += _explain(comparisons[-1], pair_probes)
        notes += _explain_pairs(comparisons[-1], pairs, leaves.paths, leaves.shapes)
    return comparisons, notes


def _checked_options(o: CheckOptions, name: str) -> tuple:
    """The options checked all at once; returns ``dtype`` and ``fd_dtype`` resolved."""
    check_options(fd_samples=o.fd_samples, fd_directions=o.fd_directions,
                  chunk=o.chunk, fd_safety=o.fd_safety, fd_step=o.fd_step,
                  rtol=o.rtol, seed=o.seed, name=name)  # fmt: skip
    dtype = resolve_dtype(o.dtype, "dtype")
    fd_dtype = resolve_dtype(o.fd_dtype, "fd_dtype")
    if o.fd not in (*FD_MODES, None):
        raise ValueError(
            f"fd must be one of {FD_MODES} or None (no finite differences), "
            f"got {o.fd!r}"
        )
    return dtype, fd_dtype


def run_check(fun, grad_fun, params, args, options: CheckOptions, *, name,
              auto_limit, has_aux=False, coordinate_evaluator=None, title="",
              label=None):  # fmt: skip
    """The one checker behind :func:`check_grad` and
    :func:`jaxbp.gradcheck.check_network_grad`.

    Args:
      fun, grad_fun, params: as for :func:`check_grad`.
      args: the further arguments of both, a tuple.
      options: the :class:`CheckOptions`.
      name, has_aux: as for :func:`check_grad`.
      auto_limit: ``fd="auto"`` checks every coordinate up to this many parameters.
      coordinate_evaluator: ``make(fun, treedef, k, chunk)``, a faster evaluator
        of perturbed points for coordinate probes; default
        ``jaxbp.finite_differences.coordinate_evaluator``.
      title: the report's title, before its summary; default ``check_grad of fun``.
      label: optionally, ``path -> words`` naming a leaf in an error message.

    Returns:
      The :class:`GradCheckReport`, with the notes that explain failures and kinks
      but no localisation.
    """
    o = options
    dtype, fd_dtype = _checked_options(o, name)
    paths = check_params(params, label)
    shapes = [np.shape(t) for t in jax.tree.leaves(params)]
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) == 0:
        raise ValueError("every leaf of params is empty: there is nothing to check")
    leaf_dtypes = [dtype or jnp.asarray(t).dtype.name for t in jax.tree.leaves(params)]
    working = max(leaf_dtypes, key=fdiff.machine_eps)
    dtype_name = dtype or dtype_of(jax.tree.leaves(params))
    needs64 = "float64" in leaf_dtypes or jax.config.jax_enable_x64
    value_fun = partial(_value, fun, has_aux)
    # --- 1. grad_fun against jax.grad, in the dtype asked for -------------------

    def both(q, *b):
        value, auto = jax.value_and_grad(value_fun)(q, *b)
        return value, grads_of(grad_fun(q, *b), q, has_aux, name, label), auto

    with jax.enable_x64(needs64):
        p, a = cast_floats(params, dtype), cast_floats(args, dtype)
        value, user, auto = _call(jax.jit, both, p, a)
        if not math.isfinite(float(value)):
            raise ValueError(
                f"fun's value at params is {float(value)} in {dtype_name}: the "
                "gradient is only defined where fun is finite"
            )
        user_np = [as_float64(t) for t in jax.tree.leaves(user)]
        auto_np = [as_float64(t) for t in jax.tree.leaves(auto)]
    leaves = _Leaves(
        paths,
        shapes,
        working,
        _rounding_of_jax_grad(value_fun, params, args, auto_np, working, fd_dtype),
        # The scale of rounding in a leaf whose exact gradient cancels to zero.
        max(float(np.max(np.abs(g), initial=0.0)) for g in auto_np),
    )
    # --- 2, 3. both against finite differences; 4, 5. along kinks ----------------
    probes = pairs = None
    excused = [np.zeros(n, bool) for n in sizes]
    if o.fd:
        mode = _plan(o.fd, sizes, o.fd_samples, auto_limit)
        with jax.enable_x64(fd_dtype == "float64" or jax.config.jax_enable_x64):
            p, a = cast_floats(params, fd_dtype), cast_floats(args, fd_dtype)
            probes, noise = _fd_probes(
                value_fun, p, a, paths, mode=mode, fd_dtype=fd_dtype, step=o.fd_step,
                samples_per_leaf=o.fd_samples, directions=o.fd_directions,
                seed=o.seed, chunk=o.chunk, coordinate_evaluator=coordinate_evaluator,
            )  # fmt: skip
            pairs = _kink_pairs(value_fun, p, a, paths, probes, fd_dtype=fd_dtype,
                                noise=noise, seed=o.seed, chunk=o.chunk,
                                safety=o.fd_safety)  # fmt: skip
        user_fd, kinks = _fd_rows(user_np, leaves, probes, o.rtol, o.fd_safety)
        auto_fd, _ = _fd_rows(auto_np, leaves, probes, o.rtol, o.fd_safety)
        # Where the function has a kink, grad_fun and jax.grad may pick different
        # subgradients: an entry inside the finite-difference bracket is a kink.
        for k, probe in enumerate(probes):
            if probe.unit == "coordinates":
                excused[k][probe.positions] = kinks[k]
    rows = _against_autodiff(user_np, auto_np, leaves, excused, o.rtol)
    comparisons = [
        Comparison(name, AUTO_NAME, dtype_name, tuple(rows), "every coordinate")
    ]
    notes = _explain(comparisons[0], None)
    if probes is not None:
        counts = [p.positions.size for p in probes]
        coverage = _coverage(mode, sizes, counts, fd_dtype)
        for left, rows in ((name, user_fd), (AUTO_NAME, auto_fd)):
            comparisons.append(
                Comparison(left, FD_NAME, fd_dtype, tuple(rows), coverage)
            )
            notes += _explain(comparisons[-1], probes)
        if pairs is not None and pairs.tested.any():
            more, more_notes = _along_kink_comparisons(
                name, user_np, auto_np, leaves, pairs, fd_dtype, o.rtol, o.fd_safety
            )
            comparisons += more
            notes += more_notes
        kinks = comparisons[1].kinks
        if kinks:
            notes.append(_kink_note(name, kinks, pairs))
    head = title or f"check_grad of {getattr(fun, '__name__', 'fun')}"
    head += (
        f": {len(paths)} leaves, {sum(sizes):,} coordinates; {name} and jax.grad in "
        f"{dtype_name}"
    )
    if probes is not None:
        head += f"; {comparisons[1].coverage}"
    return GradCheckReport(head, tuple(comparisons), tuple(notes))


def check_grad(
    fun: Callable,
    grad_fun: Callable,
    params,
    *args,
    has_aux: bool = False,
    dtype=None,
    fd: str | None = "auto",
    fd_dtype="float64",
    fd_step: float | None = None,
    fd_samples: int = 64,
    fd_directions: int = 16,
    fd_safety: float = FD_SAFETY,
    rtol: float | None = None,
    seed: int = 0,
    chunk: int = 128,
    name: str = "grad_fun",
) -> GradCheckReport:
    """Checks a hand-derived gradient of any function of any pytree.

    Where the function has a *kink* (a point where it is continuous but its
    derivative jumps: the corner of ``relu``, ``abs`` or ``maximum``), every
    subgradient is right and the check accepts a value between the one-sided
    derivatives along each coordinate probed and, for kinks that run across several
    coordinates, along directions that mix pairs of them (see
    :mod:`jaxbp.gradcheck.check` for exactly what that certifies).

    Args:
      fun: ``fun(params, *args) -> scalar``, written in ``jax.numpy``; a real
        floating-point scalar (not complex, not an integer).
      grad_fun: ``grad_fun(params, *args)``: the gradient of ``fun`` with respect to
        ``params``, a pytree of the same structure and shapes.
      params: any pytree of finite floating-point arrays (dicts, lists, tuples,
        ``NamedTuple``, registered dataclasses; ``None`` leaves are empty subtrees);
        a single array is a tree of one leaf, named ``params`` in the report.
      *args: further arguments of both, held fixed (their floating leaves are cast
        with ``params``).
      has_aux: as for ``jax.grad``: ``fun`` returns ``(value, aux)`` and
        ``grad_fun`` returns ``(grads, aux)``; the aux parts are ignored.
      dtype: dtype of comparison 1 (``grad_fun`` and ``jax.grad``); default each
        leaf's own. ``float64`` is enabled locally as needed. Leaves of mixed dtypes
        are all judged at the tolerance of the least precise of them (where they
        meet, the function computes in it).
      fd: finite-difference mode: ``"all"`` coordinates, a ``"sample"`` of
        ``fd_samples`` coordinates per leaf, ``fd_directions`` random
        ``"directions"`` per leaf (``v . g`` against the quotient along ``v``), or
        ``"auto"`` (all up to :data:`AUTO_ALL_LIMIT` parameters, else a sample of
        ``fd_samples`` per leaf); ``None`` skips them.
      fd_dtype: dtype of the finite differences, float64 by default.
      fd_step: a fixed step ``h > 0``; default
        ``eps^(1/3) max(|p_i|, rms(leaf), eps^(1/3))`` per entry (see
        :mod:`jaxbp.finite_differences`).
      fd_samples: coordinates per leaf whenever coordinates are sampled
        (``fd="sample"``, and ``fd="auto"`` above its limit), at least 1; passing it
        never changes ``fd``.
      fd_directions: directions per leaf for ``fd="directions"``, at least 1.
      fd_safety: the factor ``S > 0`` on the rounding budget of a difference
        quotient.
      rtol: relative tolerance of the gradients, ``>= 0`` (0: gradient against
        gradient must agree exactly; finite differences keep their own error
        budget). Default by the dtype the gradients are computed in:
        ``jaxbp.gradcheck.report.GRAD_RTOL``,
        1e-10 for float64, 1e-4 for float32, 5e-2 for bfloat16 and float16.
      seed: seed of the sampled coordinates, directions and pairs of kinks, ``>= 0``.
      chunk: perturbed points evaluated at once (one ``vmap``), at least 1; 128
        here, where each point evaluates the whole ``fun`` (the network checker's
        default is larger, its points being cheaper).
      name: what to call ``grad_fun`` in the report.

    Returns:
      A :class:`GradCheckReport`; ``print`` it for the tables, ``.passed`` is the
      verdict.

    Raises:
      ValueError: before any comparison: on a bad option (naming it, its value and
        the values allowed); naming the leaf, when ``params`` holds a NaN or an
        infinity; when ``fun`` is not finite at ``params`` (or at the points next to
        it that finite differences take, or a fixed ``fd_step`` does not move
        ``params``); when ``fun`` does not return a real scalar (naming what it
        returned: a tuple or dict calls for ``has_aux=True``); naming the leaf, when
        ``grad_fun`` returns a pytree of another structure or shape.
      TypeError: naming the leaf, when a leaf of ``params`` is not floating point.

    Examples:
      >>> import jax.numpy as jnp
      >>> def fun(p, x):  # 0.5 |w x + b|^2
      ...     return 0.5 * jnp.sum((p["w"] @ x + p["b"]) ** 2)
      >>> def grad_fun(p, x):
      ...     r = p["w"] @ x + p["b"]
      ...     return {"w": jnp.outer(r, x), "b": r}
      >>> p = {"w": jnp.ones((2, 3)), "b": jnp.zeros(2)}
      >>> check_grad(fun, grad_fun, p, jnp.arange(3.0)).passed
      True
      >>> wrong = lambda p, x: {"w": jnp.outer(x[:2], x), "b": grad_fun(p, x)["b"]}
      >>> report = check_grad(fun, wrong, p, jnp.arange(3.0))
      >>> [leaf.verdict for leaf in report.comparisons[0].leaves]
      ['PASS', 'FAIL']

      At a kink, a subgradient passes and a mix of two choices does not:

      >>> hinge = lambda p: jnp.maximum(p[0] - p[1], 0.0)
      >>> w = jnp.array([1.0, 1.0])
      >>> check_grad(hinge, lambda p: jnp.array([0.5, -0.5]), w).passed
      True
      >>> check_grad(hinge, lambda p: jnp.array([1.0, 0.0]), w).passed
      False
    """
    options = CheckOptions(
        dtype=dtype, fd=fd, fd_dtype=fd_dtype, fd_step=fd_step,
        fd_samples=fd_samples, fd_directions=fd_directions, fd_safety=fd_safety,
        rtol=rtol, seed=seed, chunk=chunk,
    )  # fmt: skip
    report = run_check(
        fun, grad_fun, params, args, options, name=name, auto_limit=AUTO_ALL_LIMIT,
        has_aux=has_aux,
    )  # fmt: skip
    failing = failing_paths(report, name)
    if failing:
        notes = (*report.notes, f"leaves where {name} is wrong: {', '.join(failing)}")
        report = dataclasses.replace(report, notes=notes)
    return report


def assert_grad_matches(fun: Callable, grad_fun: Callable, params, *args, **options):
    """One-line assertion for a test suite: :func:`check_grad` must pass.

    Args:
      fun, grad_fun, params, *args: as for :func:`check_grad`.
      **options: keyword options of :func:`check_grad`.

    Raises:
      AssertionError: whose message is the full report, when any comparison fails.
    """
    check_grad(fun, grad_fun, params, *args, **options).assert_passed()


def failing_paths(report: GradCheckReport, name: str) -> list[str]:
    """Key paths of the leaves where the user's gradient fails, in tree order."""
    failing = []
    for comparison in report.comparisons:
        if comparison.left != name:
            continue
        for leaf in comparison.leaves:
            if not leaf.passed and leaf.path not in failing:
                failing.append(leaf.path)
    return failing


def finite_difference_grad(
    loss_fn,
    params,
    *,
    step: float | None = None,
    indices: np.ndarray | None = None,
    chunk: int = 512,
) -> Array:
    """Plain central finite differences of ``loss_fn`` along coordinate directions.

    ``g_i = (L(p + h e_i) - L(p - h e_i)) / (2 h)``: two evaluations per coordinate,
    ``chunk`` at a time with ``jax.lax.map`` in one compiled program. A bare helper
    (no error budget): :func:`check_grad` is the checker.

    Args:
      loss_fn: ``params -> scalar``.
      params: the point to differentiate at, any pytree.
      step: ``h``; default ``eps^(1/3)`` of the parameters' dtype.
      indices: positions in the flattened parameter vector
        (``jax.flatten_util.ravel_pytree`` order); default all.
      chunk: how many coordinates to evaluate at once.

    Returns:
      The difference quotients, a flat array of ``len(indices)`` (or of all
      parameters: ``unravel`` it with ``ravel_pytree``'s inverse).
    """
    flat, unravel = ravel_pytree(params)
    if step is None:
        step = fdiff.machine_eps(flat.dtype) ** (1 / 3)
    h = jnp.asarray(step, flat.dtype)
    if indices is None:
        indices = np.arange(flat.size)

    def coordinate(i):
        plus = loss_fn(unravel(flat.at[i].add(h)))
        minus = loss_fn(unravel(flat.at[i].add(-h)))
        return (plus - minus) / (2 * h)

    run = jax.jit(lambda idx: jax.lax.map(coordinate, idx, batch_size=chunk))
    return run(jnp.asarray(indices))
