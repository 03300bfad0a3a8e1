"""The report of a gradient check, and the rule that compares gradient with gradient.

A check is a :class:`GradCheckReport`: one or more :class:`Comparison` tables of two
gradients, with one :class:`LeafError` row per leaf, named by its key path as
``jax.tree_util.keystr`` writes it (``['head']['w']``, ``[1]['b']``).

**Gradient against gradient** (:func:`compare_grads`): entry ``i`` passes when
``|a_i - b_i| <= rtol * max(|a_i|, |b_i|, tiny)``, where ``rtol`` depends on the dtype
(:data:`GRAD_RTOL`) and ``tiny = eps^(1/3) * max|leaf|`` (:func:`default_tiny`), so that
entries that cancel to rounding noise are measured against the leaf's scale.
"""

import dataclasses
import math

import jax
import numpy as np

from jaxbp import finite_differences as fdiff
from jaxbp.gradcheck.inputs import as_float64, check_like, check_rtol, dtype_of

#: Relative tolerance of gradient against gradient, by the dtype they are computed in:
#: both sides do the same arithmetic in a different order, so they agree to a few ulps
#: of the largest terms summed.
GRAD_RTOL = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}
#: The name of the finite differences in a report (the right side of comparisons 2, 3).
FD_NAME = "finite differences"
#: The name of ``jax.grad`` in a report.
AUTO_NAME = "jax.grad"


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
        names = (column_name(self.left), column_name(self.right))
        cells = [
            (
                leaf.path,
                str(leaf.shape),
                f"{leaf.checked}" if leaf.unit == "directions" else _count(leaf),
                f"{leaf.max_abs:.1e}",
                f"{leaf.max_rel:.1e}",
                format_where(leaf.worst),
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


def column_name(name: str) -> str:
    """The column heading for one side: the name up to its first space."""
    return "fd" if name == FD_NAME else name.split(" ")[0]


def _count(leaf: LeafError) -> str:
    return f"{leaf.checked}/{leaf.size}"


def format_where(worst) -> str:
    """Where the worst error is, for a table: an index tuple or ``dir k``."""
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


def default_tiny(dtype, scale: float, tree_scale: float = 0.0) -> float:
    """The floor of the relative error's denominator for one leaf.

    A gradient entry is a sum of products of larger terms; where they cancel, its
    rounding error is set by the terms, not by the entry. So entries smaller than
    ``eps^(1/3)`` times the leaf's largest magnitude ``scale`` (about 5e-3 in float32,
    6e-6 in float64) are measured against that floor instead of against themselves.
    A whole leaf can cancel: the bias of a layer before a BatchNorm has gradient
    exactly zero (the normalisation removes any shift), and what a computation
    returns for it is the rounding of terms as large as the gradients around it. So
    the floor is also at least ``eps^(1/4)`` times ``tree_scale``, the largest
    magnitude in the whole gradient (1.9e-2 in float32, 1.2e-4 in float64): with
    the default ``rtol``, differences below ``1.9e-6`` (float32) or ``1.2e-14``
    (float64) times the largest gradient entry count as rounding.

    Args:
      dtype: the dtype the gradients were computed in (bfloat16 and float16 too).
      scale: the largest magnitude in the leaf.
      tree_scale: the largest magnitude of the reference gradient over every leaf.

    Returns:
      The floor, never below the smallest normal float64.

    Examples:
      >>> round(default_tiny("float32", 1.0), 4)
      0.0049
      >>> round(default_tiny("float32", 1e-9, tree_scale=1.0), 4)
      0.0186
    """
    eps = fdiff.machine_eps(dtype)
    return max(
        float(np.finfo(np.float64).tiny),
        eps ** (1 / 3) * scale,
        eps ** (1 / 4) * tree_scale,
    )


def grad_rtol(dtype: str, rtol: float | None) -> float:
    """``rtol`` if given, else the default for ``dtype`` (:data:`GRAD_RTOL`)."""
    return rtol if rtol is not None else GRAD_RTOL.get(dtype, 1e-4)


def leaf_error(path, shape, unit, err, tol, rel, left, right, kink, positions, rtol):
    """A :class:`LeafError` from per-entry errors and tolerances (NaN fails)."""
    size = math.prod(shape)
    n = int(err.size)
    if n == 0:
        return LeafError(path, shape, 0, size, unit, 0.0, 0.0, None, 0.0, 0.0, 0.0,
                         0.0, rtol, 0, 0)  # fmt: skip
    bad = np.isnan(err) | np.isnan(tol)
    # A tolerance of 0 (rtol=0) is an exact comparison: any error fails.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tol > 0, err / tol, np.where(err > 0, np.inf, 0.0))
    ratio = np.where(bad, np.inf, ratio)
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


def elementwise_errors(a: np.ndarray, b: np.ndarray, dtype: str, rtol, tiny):
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
    return err, grad_rtol(dtype, rtol) * denom, rel


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
      rtol: relative tolerance, ``>= 0`` (0: exact); default by dtype
        (:data:`GRAD_RTOL`).
      tiny: floor of the relative error's denominator, ``>= 0``, raised to at least
        :func:`default_tiny` of each leaf.

    Returns:
      A :class:`Comparison` with one row per leaf.

    Raises:
      ValueError: naming the leaf, if the pytrees differ in structure or shapes; on
        a negative or non-finite ``rtol`` or ``tiny``.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
      >>> compare_grads(g, g).passed
      True
      >>> compare_grads({"w": g["w"] * 1.01, "b": g["b"]}, g).leaves[1].verdict
      'FAIL'
    """
    check_rtol(rtol)
    check_rtol(tiny, "tiny")
    paths = check_like(right, left, names[0])
    dtype = dtype_of(jax.tree.leaves(left))
    rows = []
    for path, a, b in zip(
        paths, jax.tree.leaves(left), jax.tree.leaves(right), strict=True
    ):
        a64, b64 = as_float64(a).ravel(), as_float64(b).ravel()
        err, tol, rel = elementwise_errors(a64, b64, dtype_of([a]), rtol, tiny)
        rows.append(
            leaf_error(path, np.shape(a), "coordinates", err, tol, rel, a64, b64,
                       np.zeros(err.shape, bool), np.arange(err.size),
                       grad_rtol(dtype, rtol))
        )  # fmt: skip
    return Comparison(names[0], names[1], dtype, tuple(rows))
