"""Check a hand-derived gradient of any function of any pytree, leaf by leaf.

:func:`check_grad` takes ``fun(params, *args) -> scalar`` and the user's
``grad_fun(params, *args) -> pytree like params`` and makes three comparisons:

1. ``grad_fun`` against ``jax.grad(fun)``, entry by entry, in the dtype asked for;
2. ``grad_fun`` against central finite differences (float64 by default);
3. ``jax.grad(fun)`` against the same finite differences.

Each comparison is a table with one row per leaf, named by its key path as
``jax.tree_util.keystr`` writes it (``['head']['w']``, ``[1]['b']``).

**Gradient against gradient** (comparison 1): entry ``i`` passes when
``|a_i - b_i| <= rtol * max(|a_i|, |b_i|, tiny)``, where ``rtol`` depends on the dtype
(:data:`GRAD_RTOL`) and ``tiny = eps^(1/3) * max|leaf|`` (:func:`default_tiny`), so that
entries that cancel to rounding noise are measured against the leaf's scale.

**Gradient against finite differences** (comparisons 2 and 3): every probe (a
coordinate, or a random direction ``v`` compared as ``v . g``) has an error budget from
:mod:`jaxbp.finite_differences`: rounding ``delta_f / h`` plus truncation
``|c_{2h} - c_h| / 3``. A smooth probe passes when

.. math::

   |u - c_h| \\le S \\cdot \\text{rounding} + 3 \\cdot \\text{truncation}
   + \\text{rtol} \\cdot \\max(|u|, \\text{tiny}),

with ``u`` the gradient's value, ``S = fd_safety`` (10) and the last term the rounding
of ``u`` itself in its dtype. Where the function is not smooth within ``2h`` (a ReLU's
corner) the probe passes as a **kink** when ``u`` lies inside the bracket of the
one-sided quotients (a valid subgradient), widened by their rounding (``5 S`` times
``delta_f / h``) and by the rtol term; outside it fails. A failure says how many
times its budget the error is.

:func:`check_gradients` is the same check for a :class:`~jaxbp.MLP`'s loss, with the
network's own delta rule as ``grad_fun`` by default, a faster evaluation of perturbed
points and one more diagnosis: the hand-derived error signals ``delta_l = dL/dz_l`` of
every layer against autodiff ones, naming the first layer from the output down whose
delta disagrees.

Use it in a test suite as a one-liner::

    jaxbp.assert_grad_matches(fun, grad_fun, params, x, y)
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
from jaxbp.losses import prepare_targets
from jaxbp.mlp import MLP, Params

Array = jax.Array

#: Relative tolerance of gradient against gradient, by the dtype they are computed in:
#: both sides do the same arithmetic in a different order, so they agree to a few ulps
#: of the largest terms summed.
GRAD_RTOL = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}
#: The safety factor ``S`` on the rounding budget of a difference quotient.
FD_SAFETY = 10.0
#: Finite-difference modes (``fd=``): every coordinate, a random sample of coordinates
#: per leaf, random directions per leaf, or ``auto`` (every coordinate when there are
#: at most :data:`AUTO_ALL_LIMIT` of them, a sample otherwise).
FD_MODES = ("auto", "all", "sample", "directions")
#: ``fd="auto"`` checks every coordinate up to this many parameters.
AUTO_ALL_LIMIT = 4096
#: ``fd="auto"`` in :func:`check_gradients` (whose perturbed points are cheap) checks
#: every coordinate up to this many parameters.
MLP_AUTO_ALL_LIMIT = 200_000
#: A failure whose error is more than this many times its budget is "far beyond what
#: finite differences can explain".
FAR_BEYOND = 100.0
_FLOATS = ("float16", "bfloat16", "float32", "float64")


# ------------------------------------------------------------------------ report
@dataclasses.dataclass(frozen=True)
class LeafError:
    """One row of a comparison: how far two gradients are apart on one leaf.

    Attributes:
      path: the leaf's key path, as ``jax.tree_util.keystr`` writes it.
      shape: the leaf's shape.
      checked: how many entries (or directions) were compared.
      size: how many entries the leaf has.
      unit: ``"coordinates"`` or ``"directions"``.
      max_abs: the largest absolute difference.
      max_rel: the largest relative difference ``|a - b| / max(|a|, |b|, tiny)``.
      worst: where the error is largest against its tolerance: an index into the leaf
        (a tuple), or a direction number.
      left_value, right_value: the two values there.
      tol: the absolute error allowed there.
      ratio: error over tolerance there (``<= 1`` passes).
      rtol: the relative tolerance of the gradients' dtype.
      kinks: entries accepted as subgradients at a kink.
      failures: entries that fail.
    """

    path: str
    shape: tuple[int, ...]
    checked: int
    size: int
    unit: str
    max_abs: float
    max_rel: float
    worst: tuple | int | None
    left_value: float
    right_value: float
    tol: float
    ratio: float
    rtol: float
    kinks: int
    failures: int

    @property
    def passed(self) -> bool:
        """Whether no entry failed (NaN fails)."""
        return self.failures == 0 and not math.isnan(self.max_abs)

    @property
    def verdict(self) -> str:
        """``PASS``, ``kink`` (passed, with kinks) or ``FAIL``."""
        if not self.passed:
            return "FAIL"
        return "kink" if self.kinks else "PASS"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A per-leaf comparison of two gradients: ``left`` against ``right``."""

    left: str
    right: str
    dtype: str
    leaves: tuple[LeafError, ...]
    coverage: str = ""

    @property
    def passed(self) -> bool:
        """Whether every leaf passed."""
        return all(leaf.passed for leaf in self.leaves)

    @property
    def max_rel(self) -> float:
        """The worst relative error over all leaves (NaN if any is NaN)."""
        values = [leaf.max_rel for leaf in self.leaves]
        return math.nan if any(map(math.isnan, values)) else max(values, default=0.0)

    @property
    def kinks(self) -> int:
        """Entries accepted as subgradients at kinks, over all leaves."""
        return sum(leaf.kinks for leaf in self.leaves)

    def table(self) -> str:
        """The comparison as a fixed-width text table."""
        title = f"{self.left} vs {self.right} [{self.dtype}]"
        if self.coverage:
            title += f": {self.coverage}"
        names = (_short(self.left), _short(self.right))
        cells = [
            (
                leaf.path,
                str(leaf.shape),
                f"{leaf.checked}" if leaf.unit == "directions" else _count(leaf),
                f"{leaf.max_abs:.1e}",
                f"{leaf.max_rel:.1e}",
                _where(leaf.worst),
                f"{leaf.left_value:+.6e}",
                f"{leaf.right_value:+.6e}",
                f"{leaf.tol:.1e}",
                f"{leaf.ratio:.2g}",
                f"{leaf.kinks}",
                leaf.verdict,
            )
            for leaf in self.leaves
        ]
        checked = (
            "dirs" if any(x.unit == "directions" for x in self.leaves) else "checked"
        )
        head = (
            "leaf", "shape", checked, "max abs", "max rel", "worst at",
            *names, "tol", "err/tol", "kinks", "result",
        )  # fmt: skip
        widths = [max(len(row[j]) for row in [head, *cells]) for j in range(len(head))]
        left_aligned = {0, 1, 5, 11}

        def line(row):
            return "  ".join(
                c.ljust(w) if j in left_aligned else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()

        rule = "-" * len(line(head))
        return "\n".join([title, line(head), rule, *map(line, cells)])

    def __str__(self) -> str:
        return self.table()


def _short(name: str) -> str:
    """The column heading for one side: the name up to its first space."""
    return "fd" if name == FD_NAME else name.split(" ")[0]


def _count(leaf: LeafError) -> str:
    return f"{leaf.checked}/{leaf.size}"


def _where(worst) -> str:
    if worst is None:
        return "-"
    if isinstance(worst, int):
        return f"dir {worst}"
    return str(tuple(worst))


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """The result of :func:`check_grad`: comparison tables and what they mean.

    Attributes:
      title: what was checked (function, leaves, dtypes, coverage).
      comparisons: the :class:`Comparison` tables.
      notes: explanations of failures and kinks, and the localisation.
      first_failing_layer: for an MLP, the first layer (1-based, from the output
        down) whose gradient or delta is wrong; ``None`` if none is (or not an MLP).
    """

    title: str
    comparisons: tuple[Comparison, ...]
    notes: tuple[str, ...] = ()
    first_failing_layer: int | None = None

    @property
    def passed(self) -> bool:
        """Whether every comparison passed."""
        return all(c.passed for c in self.comparisons)

    @property
    def kinks(self) -> int:
        """Entries of the user's gradient accepted as subgradients at kinks."""
        against_fd = [c for c in self.comparisons if c.right == FD_NAME]
        return against_fd[0].kinks if against_fd else 0

    def __str__(self) -> str:
        body = "\n\n".join(c.table() for c in self.comparisons)
        failed = sum(not c.passed for c in self.comparisons)
        verdict = (
            f"FAIL: {failed} of {len(self.comparisons)} comparisons fail"
            if failed
            else "PASS: all comparisons pass"
        )
        if self.passed and self.kinks:
            verdict += f" ({self.kinks} entries at kinks accepted as subgradients)"
        notes = "".join(f"- {n}\n" for n in self.notes)
        return f"{self.title}\n\n{body}\n\n{notes}{verdict}"

    def assert_passed(self) -> None:
        """Raises ``AssertionError`` with the full report if any comparison failed."""
        if not self.passed:
            raise AssertionError(f"gradients disagree\n{self}")


FD_NAME = "finite differences"
AUTO_NAME = "jax.grad"


# ------------------------------------------------------------------ comparisons
def default_tiny(dtype, scale: float) -> float:
    """The floor of the relative error's denominator for one leaf.

    A gradient entry is a sum of products of larger terms; where they cancel, its
    rounding error is set by the terms, not by the entry. So entries smaller than
    ``eps^(1/3)`` times the leaf's largest magnitude ``scale`` (about 5e-3 in float32,
    6e-6 in float64) are measured against that floor instead of against themselves.

    Args:
      dtype: the dtype the gradients were computed in (bfloat16 and float16 too).
      scale: the largest magnitude in the leaf.

    Returns:
      The floor, never below the smallest normal float64.

    Examples:
      >>> round(default_tiny("float32", 1.0), 4)
      0.0049
    """
    return max(
        float(np.finfo(np.float64).tiny), fdiff.machine_eps(dtype) ** (1 / 3) * scale
    )


def _grad_rtol(dtype: str, rtol: float | None) -> float:
    return rtol if rtol is not None else GRAD_RTOL.get(dtype, 1e-4)


def _row(path, shape, unit, err, tol, rel, left, right, kink, positions, rtol):
    """A :class:`LeafError` from per-entry errors and tolerances (NaN fails)."""
    size = math.prod(shape)
    n = int(err.size)
    if n == 0:
        return LeafError(path, shape, 0, size, unit, 0.0, 0.0, None, 0.0, 0.0, 0.0,
                         0.0, rtol, 0, 0)  # fmt: skip
    bad = np.isnan(err) | np.isnan(tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bad, np.inf, err / np.where(tol > 0, tol, np.inf))
    ratio = np.where((err == 0) & ~bad, 0.0, ratio)
    ratio = np.where(kink & ~bad, np.minimum(ratio, 1.0), ratio)
    fails = bad | (ratio > 1)
    j = int(np.argmax(np.where(bad, np.inf, ratio)))
    worst = (
        int(positions[j])
        if unit == "directions"
        else tuple(int(i) for i in np.unravel_index(int(positions[j]), shape))
    )
    return LeafError(
        path=path,
        shape=tuple(shape),
        checked=n,
        size=size,
        unit=unit,
        max_abs=math.nan if bad.any() else float(err.max()),
        max_rel=math.nan if bad.any() else float(rel.max()),
        worst=worst,
        left_value=float(left[j]),
        right_value=float(right[j]),
        tol=float(tol[j]),
        ratio=float(ratio[j]),
        rtol=rtol,
        kinks=int((kink & ~fails).sum()),
        failures=int(fails.sum()),
    )


def _elementwise(a: np.ndarray, b: np.ndarray, dtype: str, rtol, tiny):
    """Per-entry error, tolerance and relative error of two flat float64 arrays."""
    err = np.abs(a - b)
    both = np.maximum(np.abs(a), np.abs(b))
    scale = float(np.max(np.where(np.isnan(both), 0.0, both), initial=0.0))
    floor = default_tiny(dtype, scale)
    if tiny is not None:
        floor = max(floor, tiny)
    denom = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    with np.errstate(invalid="ignore"):
        rel = err / denom
    return err, _grad_rtol(dtype, rtol) * denom, rel


def compare_grads(
    left,
    right,
    *,
    names: tuple[str, str] = ("left", "right"),
    rtol: float | None = None,
    tiny: float | None = None,
) -> Comparison:
    """Compares two gradient pytrees of the same structure, entry by entry.

    Entry ``i`` passes when ``|a_i - b_i| <= rtol * max(|a_i|, |b_i|, tiny)``.

    Args:
      left: gradients, any pytree of arrays.
      right: gradients of the same structure and shapes (the reference).
      names: what ``left`` and ``right`` are, for the report.
      rtol: relative tolerance; default by dtype (:data:`GRAD_RTOL`).
      tiny: floor of the relative error's denominator, raised to at least
        :func:`default_tiny` of each leaf.

    Returns:
      A :class:`Comparison` with one row per leaf.

    Raises:
      ValueError: naming the leaf, if the pytrees differ in structure or shapes.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
      >>> compare_grads(g, g).passed
      True
      >>> compare_grads({"w": g["w"] * 1.01, "b": g["b"]}, g).leaves[1].verdict
      'FAIL'
    """
    paths = _check_like(right, left, names[0])
    dtype = _dtype_name(jax.tree.leaves(left))
    rows = []
    for path, a, b in zip(
        paths, jax.tree.leaves(left), jax.tree.leaves(right), strict=True
    ):
        a64, b64 = _np64(a).ravel(), _np64(b).ravel()
        err, tol, rel = _elementwise(a64, b64, _dtype_name([a]), rtol, tiny)
        rows.append(
            _row(path, np.shape(a), "coordinates", err, tol, rel, a64, b64,
                 np.zeros(err.shape, bool), np.arange(err.size),
                 _grad_rtol(dtype, rtol))
        )  # fmt: skip
    return Comparison(names[0], names[1], dtype, tuple(rows))


# ----------------------------------------------------------------- validation
def _np64(x) -> np.ndarray:
    return (
        np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)
        if jnp.asarray(x).dtype in (jnp.bfloat16, jnp.float16)
        else np.asarray(x, np.float64)
    )


def _dtype_name(leaves) -> str:
    names = sorted({jnp.asarray(t).dtype.name for t in leaves})
    return names[0] if len(names) == 1 else "mixed"


def _paths(tree) -> list[str]:
    return [
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _check_like(reference, tree, what: str, label=None) -> list[str]:
    """Checks that ``tree`` has the structure and shapes of ``reference``.

    Args:
      reference: the pytree to match (params).
      tree: what ``what`` returned.
      what: the name of the function that returned it.
      label: optionally, ``path -> words`` naming a leaf in a message.

    Returns:
      The key paths of the leaves.

    Raises:
      ValueError: naming the leaves that are missing, extra or of the wrong shape.
    """
    ref_paths, paths = _paths(reference), _paths(tree)
    if jax.tree.structure(reference) != jax.tree.structure(tree):
        missing = [p for p in ref_paths if p not in paths]
        extra = [p for p in paths if p not in ref_paths]
        detail = []
        if missing:
            detail.append(f"missing leaves {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected leaves {', '.join(extra)}")
        if not detail:
            detail.append(
                f"structure {jax.tree.structure(tree)} instead of "
                f"{jax.tree.structure(reference)}"
            )
        raise ValueError(f"{what} returned a pytree unlike params: {'; '.join(detail)}")
    wrong = [
        f"{label(path) if label else path}: {np.shape(leaf)} instead of {np.shape(ref)}"
        for path, ref, leaf in zip(
            ref_paths, jax.tree.leaves(reference), jax.tree.leaves(tree), strict=True
        )
        if np.shape(ref) != np.shape(leaf)
    ]
    if wrong:
        raise ValueError(
            f"{what} returned the wrong shape for {len(wrong)} "
            f"{'leaf' if len(wrong) == 1 else 'leaves'} of params: {'; '.join(wrong)}"
        )
    return ref_paths


def _check_params(params) -> list[str]:
    """Checks that every leaf of ``params`` is a floating-point array; returns paths."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if not flat:
        raise ValueError("params has no array leaves: there is nothing to check")
    for path, leaf in flat:
        dtype = jnp.asarray(leaf).dtype
        if dtype.name not in _FLOATS:
            raise TypeError(
                f"params leaf {jax.tree_util.keystr(path)} has dtype {dtype}; "
                f"gradients can be checked for {', '.join(_FLOATS)} leaves only"
            )
    return [jax.tree_util.keystr(p) for p, _ in flat]


def _resolve_dtype(dtype, what: str):
    if dtype is None:
        return None
    try:
        name = jnp.dtype(dtype).name
    except TypeError as e:
        raise ValueError(f"{what} {dtype!r} is not a dtype") from e
    if name not in _FLOATS:
        raise ValueError(f"{what} must be one of {', '.join(_FLOATS)}, got {name}")
    return name


def _cast(tree, dtype):
    """Casts every floating leaf of ``tree`` to ``dtype`` (others unchanged)."""
    if dtype is None:
        return jax.tree.map(jnp.asarray, tree)

    def cast(t):
        t = jnp.asarray(t)
        return t.astype(dtype) if jnp.issubdtype(t.dtype, jnp.floating) else t

    return jax.tree.map(cast, tree)


def _scalar(value, what="fun") -> None:
    if jnp.shape(value) != ():
        raise ValueError(
            f"{what} must return a scalar, got shape {jnp.shape(value)}; reduce it "
            "(e.g. with a mean over the batch) before checking its gradient"
        )


# --------------------------------------------------------------------- the check
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


@dataclasses.dataclass(frozen=True)
class _Probes:
    """The finite-difference probes of one leaf and their quotients."""

    unit: str
    positions: np.ndarray  # flat indices, or direction numbers
    q: fdiff.Quotients
    effective: np.ndarray | None  # (m, size) directions actually taken


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


def _fd_probes(fun, params, args, *, mode, fd_dtype, step, samples_per_leaf, directions,
               seed, chunk, coordinate_evaluator) -> list[_Probes]:  # fmt: skip
    """Runs the finite differences of every leaf (inside the ``fd_dtype`` context)."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    plans, evaluators, inputs = [], [], []
    for k, leaf in enumerate(leaves):
        host = np.asarray(leaf)
        if mode == "directions":
            dirs = fdiff.random_directions(host, directions, rng)
            x, offsets, eff = fdiff.direction_probes(host, dirs, fd_dtype, step=step)
            plans.append(("directions", np.arange(directions), offsets, eff))
            evaluators.append(fdiff.leaf_evaluator(fun, treedef, k, chunk))
            inputs.append(x)
            continue
        if mode == "all" or host.size <= samples_per_leaf:
            idx = np.arange(host.size)
        else:
            idx = np.sort(rng.choice(host.size, samples_per_leaf, replace=False))
        if idx.size == 0:
            plans.append(("coordinates", idx, np.ones((0, 4)), None))
            continue
        x, offsets = fdiff.coordinate_probes(host, idx, fd_dtype, step=step)
        plans.append(("coordinates", idx, offsets, None))
        make = coordinate_evaluator or fdiff.coordinate_evaluator
        evaluators.append(make(fun, treedef, k, chunk))
        inputs.append(x)
    values = iter(fdiff.evaluate_all(evaluators, leaves, args, inputs))
    samples = [
        fdiff.samples_from(next(values), offsets)
        if positions.size
        else fdiff.Samples(0.0, np.zeros((0, 4)), offsets)
        for _, positions, offsets, _ in plans
    ]
    noise = fdiff.noise_level(samples, fdiff.machine_eps(fd_dtype))
    return [
        _Probes(unit, positions, fdiff.quotients(sample, noise), eff)
        for (unit, positions, _, eff), sample in zip(plans, samples, strict=True)
    ]


def _against_fd(path, shape, grad, probes: _Probes, dtype, rtol, safety):
    """One row of a gradient against finite differences, and the kink mask."""
    g = _np64(grad).ravel()
    q = probes.q
    floor = default_tiny(dtype, float(np.max(np.abs(g))) if g.size else 0.0)
    r = _grad_rtol(dtype, rtol)
    if probes.unit == "directions":
        u = probes.effective @ g
        allow = r * (np.abs(probes.effective) @ np.maximum(np.abs(g), floor))
    else:
        u = g[probes.positions]
        allow = r * np.maximum(np.abs(u), floor)
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
    tol = np.where(q.smooth, smooth_tol, toward)
    with np.errstate(invalid="ignore"):
        rel = err / np.maximum(np.maximum(np.abs(u), np.abs(c)), floor)
    row = _row(path, shape, probes.unit, err, tol, rel, u, c, kink, probes.positions, r)
    return row, kink


def _explain(comparison: Comparison, probes: list[_Probes] | None) -> list[str]:
    """One sentence per failing leaf of a comparison."""
    notes = []
    for k, leaf in enumerate(comparison.leaves):
        if leaf.passed:
            continue
        where = _where(leaf.worst)
        if math.isnan(leaf.max_abs):
            notes.append(f"{leaf.path}: NaN in {comparison.left} or {comparison.right}")
            continue
        err = abs(leaf.left_value - leaf.right_value)
        head = (
            f"{leaf.path}: {leaf.failures} of {leaf.checked} {leaf.unit} fail; worst "
            f"at "
            f"{where}: {_short(comparison.left)} {leaf.left_value:+.6e}, "
            f"{_short(comparison.right)} {leaf.right_value:+.6e}"
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
            if times > FAR_BEYOND
            else "close to what finite differences can resolve; try another fd_step"
        )
        notes.append(
            f"{head}{kind}; error {err:.1e} is {times:.2g} x the finite-difference "
            f"error budget {budget:.1e} (rounding {p.q.rounding[j]:.1e}, truncation "
            f"{p.q.truncation[j]:.1e}): {verdict}"
        )
    return notes


def _run_check(fun, grad_fun, params, args, *, name, dtype, fd, fd_dtype, fd_step,
               fd_samples, fd_directions, fd_safety, rtol, seed, chunk, auto_limit,
               coordinate_evaluator=None, title="", label=None):  # fmt: skip
    """The one checker behind :func:`check_grad` and :func:`check_gradients`.

    Returns:
      ``(report, user_rows_failing)``: the report, without localisation notes.
    """
    paths = _check_params(params)
    dtype = _resolve_dtype(dtype, "dtype")
    fd_dtype = _resolve_dtype(fd_dtype, "fd_dtype")
    if fd not in (*FD_MODES, None, False):
        raise ValueError(f"fd must be one of {FD_MODES} or None, got {fd!r}")
    leaf_dtypes = [dtype or jnp.asarray(t).dtype.name for t in jax.tree.leaves(params)]
    needs64 = "float64" in leaf_dtypes or jax.config.jax_enable_x64
    # --- 1. grad_fun against jax.grad, in the dtype asked for -------------------
    with jax.enable_x64(needs64):
        p, a = _cast(params, dtype), _cast(args, dtype)
        _scalar(_call(lambda f: partial(jax.eval_shape, f), fun, p, a))
        user, auto = _call(
            jax.jit, lambda q, *b: (grad_fun(q, *b), jax.grad(fun)(q, *b)), p, a
        )
        _check_like(p, user, name, label)
        user_np = [_np64(t) for t in jax.tree.leaves(user)]
        auto_np = [_np64(t) for t in jax.tree.leaves(auto)]
    shapes = [np.shape(t) for t in jax.tree.leaves(params)]
    sizes = [math.prod(s) for s in shapes]
    # --- 2, 3. both against finite differences ---------------------------------
    probes = None
    mode = None
    if fd:
        mode = _plan(fd, sizes, fd_samples, auto_limit)
        with jax.enable_x64(fd_dtype == "float64" or jax.config.jax_enable_x64):
            probes = _fd_probes(
                fun, _cast(params, fd_dtype), _cast(args, fd_dtype), mode=mode,
                fd_dtype=fd_dtype, step=fd_step, samples_per_leaf=fd_samples,
                directions=fd_directions, seed=seed, chunk=chunk,
                coordinate_evaluator=coordinate_evaluator,
            )  # fmt: skip
    comparisons = []
    user_rows, auto_fd_rows, user_fd_rows = [], [], []
    kink_masks = []
    for k, path in enumerate(paths):
        if probes is not None:
            row, kink = _against_fd(path, shapes[k], user_np[k], probes[k],
                                    leaf_dtypes[k], rtol, fd_safety)  # fmt: skip
            user_fd_rows.append(row)
            kink_masks.append(kink)
            auto_fd_rows.append(
                _against_fd(
                    path,
                    shapes[k],
                    auto_np[k],
                    probes[k],
                    leaf_dtypes[k],
                    rtol,
                    fd_safety,
                )[0]  # fmt: skip
            )
        a64, b64 = user_np[k].ravel(), auto_np[k].ravel()
        err, tol, rel = _elementwise(a64, b64, leaf_dtypes[k], rtol, None)
        # Where the function has a kink, grad_fun and jax.grad may pick different
        # subgradients: an entry inside the finite-difference bracket is a kink.
        excused = np.zeros(err.shape, bool)
        if probes is not None and probes[k].unit == "coordinates":
            excused[probes[k].positions] = kink_masks[k]
        user_rows.append(
            _row(
                path,
                shapes[k],
                "coordinates",
                err,
                tol,
                rel,
                a64,
                b64,
                excused,
                np.arange(err.size),
                _grad_rtol(leaf_dtypes[k], rtol),
            )  # fmt: skip
        )
    dtype_name = dtype or _dtype_name(jax.tree.leaves(params))
    comparisons.append(Comparison(name, AUTO_NAME, dtype_name, tuple(user_rows),
                                  "every coordinate"))  # fmt: skip
    notes = _explain(comparisons[0], None)
    if probes is not None:
        counts = [p.positions.size for p in probes]
        coverage = _coverage(mode, sizes, counts, fd_dtype)
        for left, rows in ((name, user_fd_rows), (AUTO_NAME, auto_fd_rows)):
            comparisons.append(
                Comparison(left, FD_NAME, fd_dtype, tuple(rows), coverage)
            )
            notes += _explain(comparisons[-1], probes)
        kinks = comparisons[1].kinks
        if kinks:
            notes.append(
                f"{kinks} entries of {name} sit where the function is not smooth "
                "within 2h (one-sided quotients disagree beyond their budget) and lie "
                "inside the bracket of the one-sided quotients: accepted as "
                "subgradients (result 'kink')"
            )
    head = title or f"check_grad of {getattr(fun, '__name__', 'fun')}"
    n = sum(sizes)
    head += (
        f": {len(paths)} leaves, {n:,} coordinates; {name} and jax.grad in {dtype_name}"
    )
    if probes is not None:
        head += f"; {comparisons[1].coverage}"
    return GradCheckReport(head, tuple(comparisons), tuple(notes))


def check_grad(
    fun: Callable,
    grad_fun: Callable,
    params,
    *args,
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

    Args:
      fun: ``fun(params, *args) -> scalar``, written in ``jax.numpy``.
      grad_fun: ``grad_fun(params, *args)``: the gradient of ``fun`` with respect to
        ``params``, a pytree of the same structure and shapes.
      params: any pytree of floating-point arrays (dicts, lists, tuples,
        ``NamedTuple``, registered dataclasses; ``None`` leaves are empty subtrees).
      *args: further arguments of both, held fixed (their floating leaves are cast
        with ``params``).
      dtype: dtype of comparison 1 (``grad_fun`` and ``jax.grad``); default each
        leaf's own. ``float64`` is enabled locally as needed; ``bfloat16`` and
        ``float16`` use their own tolerances (:data:`GRAD_RTOL`).
      fd: finite-difference mode: ``"all"`` coordinates, a ``"sample"`` of
        ``fd_samples`` coordinates per leaf, ``fd_directions`` random
        ``"directions"`` per leaf (``v . g`` against the quotient along ``v``), or
        ``"auto"`` (all up to :data:`AUTO_ALL_LIMIT` parameters, else a sample);
        ``None`` skips them.
      fd_dtype: dtype of the finite differences, float64 by default.
      fd_step: a fixed step ``h``; default ``eps^(1/3) max(|p_i|, rms(leaf))`` per
        entry (see :mod:`jaxbp.finite_differences`).
      fd_samples: coordinates per leaf for ``fd="sample"``.
      fd_directions: directions per leaf for ``fd="directions"``.
      fd_safety: the factor ``S`` on the rounding budget of a difference quotient.
      rtol: relative tolerance of the gradients; default by dtype.
      seed: seed of the sampled coordinates or directions.
      chunk: perturbed points evaluated at once (one ``vmap``).
      name: what to call ``grad_fun`` in the report.

    Returns:
      A :class:`GradCheckReport`; ``print`` it for the tables, ``.passed`` is the
      verdict.

    Raises:
      ValueError: naming the leaf, when ``grad_fun`` returns a pytree of another
        structure or shape; when ``fun`` does not return a scalar; on bad options.
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
    """
    report = _run_check(
        fun, grad_fun, params, args, name=name, dtype=dtype, fd=fd,
        fd_dtype=fd_dtype, fd_step=fd_step, fd_samples=fd_samples,
        fd_directions=fd_directions, fd_safety=fd_safety, rtol=rtol, seed=seed,
        chunk=chunk, auto_limit=AUTO_ALL_LIMIT,
    )  # fmt: skip
    failing = _failing_paths(report, name)
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


def _failing_paths(report: GradCheckReport, name: str) -> list[str]:
    """Key paths of the leaves where the user's gradient fails, in tree order."""
    failing = []
    for comparison in report.comparisons:
        if comparison.left != name:
            continue
        for leaf in comparison.leaves:
            if not leaf.passed and leaf.path not in failing:
                failing.append(leaf.path)
    return failing


# ------------------------------------------------------------------------ MLP
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
        p = _cast(params, dtype)
        xb, targets = net.check_batch(p, *_cast((x, y), dtype))
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
    agree = [f"layer {m}" for m in range(depth, stop, -1)]
    return (", ".join(agree) + " agree") if agree else "the output layer disagrees"


def _localise_paths(report: GradCheckReport, name: str, depth: int):
    """The first layer from the output down with a failing leaf of ``grad_fun``."""
    failing = _failing_paths(report, name)
    layers = sorted({int(p[1 : p.index("]")]) + 1 for p in failing}, reverse=True)
    if not layers:
        return None, None
    l = layers[0]
    leaves = ", ".join(p for p in failing if p.startswith(f"[{l - 1}]"))
    return l, (
        f"localisation: the first layer from the output down where {name} is wrong "
        f"is layer {l} of {depth} (params[{l - 1}]: {leaves})"
    )


def check_gradients(
    net: MLP,
    params: Params,
    x: Array,
    y: Array,
    *,
    grad_fun: Callable | None = None,
    dtype=None,
    finite_differences: bool = True,
    fd: str = "auto",
    fd_dtype="float64",
    fd_step: float | None = None,
    fd_samples: int | None = None,
    fd_directions: int = 16,
    fd_safety: float = FD_SAFETY,
    seed: int = 0,
    rtol: float | None = None,
    chunk: int = 1024,
) -> GradCheckReport:
    """Checks an MLP's hand-derived gradient: :func:`check_grad` of ``net.loss``.

    Args:
      net: the network spec.
      params: parameters to check at, ``[{"w": (n_{l-1}, n_l), "b": (n_l,)}, ...]``.
      x: inputs ``(B, sizes[0])``.
      y: labels ``(B,)`` or targets ``(B, sizes[-1])``.
      grad_fun: your own ``grad_fun(params, x, y)`` for this network; default the
        library's delta rule (``net.manual_grad``).
      dtype: dtype of the gradients against ``jax.grad``; default the params'.
      finite_differences: also compare against finite differences.
      fd: finite-difference mode as for :func:`check_grad`; ``"auto"`` checks every
        coordinate up to :data:`MLP_AUTO_ALL_LIMIT` parameters.
      fd_dtype: dtype of the finite differences (float64 by default).
      fd_step: a fixed finite-difference step; default per entry.
      fd_samples: check this many coordinates per leaf (``fd="sample"``); ``None``
        leaves the choice to ``fd``.
      fd_directions: directions per leaf for ``fd="directions"``.
      fd_safety: the factor on the rounding budget.
      seed: seed of the sample or directions.
      rtol: relative tolerance of the gradients; default by dtype.
      chunk: perturbed points evaluated at once.

    Returns:
      A :class:`GradCheckReport` with the comparisons ``manual (delta rule)`` (or
      ``grad_fun``) vs ``jax.grad`` and, with finite differences, each of them vs
      ``finite differences``; its ``first_failing_layer`` names the first wrong layer
      from the output down: from the deltas ``dL/dz_l`` for the library's rule, from
      the failing leaves for a ``grad_fun``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = MLP((3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> check_gradients(net, params, x, y).passed
      True
    """
    net.check_params(params)
    if fd_samples is not None and fd == "auto":
        fd = "sample"
    name = "grad_fun" if grad_fun is not None else MANUAL_NAME
    report = _run_check(
        net.loss, grad_fun or net.manual_grad, params, (x, y), name=name,
        dtype=dtype, fd=fd if finite_differences else None, fd_dtype=fd_dtype,
        fd_step=fd_step, fd_samples=fd_samples or 64, fd_directions=fd_directions,
        fd_safety=fd_safety, rtol=rtol, seed=seed, chunk=chunk,
        auto_limit=MLP_AUTO_ALL_LIMIT,
        coordinate_evaluator=_mlp_coordinate_evaluator(net),
        title=f"check_gradients of {net}, batch {int(jnp.shape(x)[0])}",
        label=lambda path: f"{path} (layer {int(path[1:path.index(']')]) + 1} of "
        f"{net.depth})",
    )  # fmt: skip
    if grad_fun is None:
        layer, note = _localise_deltas(
            net, params, x, y, _resolve_dtype(dtype, "dtype"), rtol
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


def assert_gradients_agree(
    net: MLP, params: Params, x: Array, y: Array, **kwargs
) -> None:
    """One-line assertion for test suites: :func:`check_gradients` must pass.

    Args:
      net, params, x, y: as for :func:`check_gradients`.
      **kwargs: passed to :func:`check_gradients`.

    Raises:
      AssertionError: with the full report when any comparison fails.
    """
    check_gradients(net, params, x, y, **kwargs).assert_passed()


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
