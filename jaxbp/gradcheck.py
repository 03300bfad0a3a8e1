"""Manual gradients against ``jax.grad`` and central finite differences, leaf by leaf.

:func:`check_gradients` computes the gradient of an :class:`~jaxbp.MLP`'s loss three
ways:

* **manual**: the hand-derived delta rule (:meth:`~jaxbp.MLP.manual_grad`);
* **autodiff**: ``jax.grad(net.loss)``;
* **finite differences**: ``(L(p + h e_i) - L(p - h e_i)) / 2h`` for each coordinate.

and returns a :class:`GradCheckReport` of :class:`Comparison` tables, one row per
parameter leaf (layer, ``w``/``b``) with the max absolute and max relative error
``|a - b| / max(|a|, |b|, tiny)`` and a pass/fail against dtype-aware tolerances. Each
comparison names which side is which. Manual vs autodiff runs in the dtype asked for;
the finite-difference part runs in float64 by default, because in float32 the rounding
error of a difference quotient (about ``eps_32 / h``) swamps the comparison.

Use it in a test suite as a one-liner::

    jaxbp.assert_gradients_agree(net, params, x, y)
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxbp.mlp import MLP, Params

Array = jax.Array

#: Relative-error tolerances (max over a leaf) by dtype for manual vs autodiff. Both
#: sides do the same arithmetic in a different order, so they agree to a few ulps of
#: the largest terms summed.
GRAD_RTOL = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}
#: Relative-error tolerances against central finite differences by dtype.
FD_RTOL = {"float64": 1e-5, "float32": 1e-2}
#: Default finite-difference steps by dtype (about the cube root of machine epsilon).
FD_STEP = {"float64": 1e-6, "float32": 1e-3}


@dataclasses.dataclass(frozen=True)
class LeafError:
    """How far two gradients are apart on one parameter leaf."""

    layer: int
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    rtol: float
    checked: int

    @property
    def passed(self) -> bool:
        """Whether the max relative error is within tolerance (NaN fails)."""
        return bool(self.max_rel <= self.rtol)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A per-leaf comparison of two gradients: ``left`` against ``right``."""

    left: str
    right: str
    dtype: str
    leaves: tuple[LeafError, ...]
    note: str = ""

    @property
    def passed(self) -> bool:
        """Whether every leaf passed."""
        return all(leaf.passed for leaf in self.leaves)

    @property
    def max_rel(self) -> float:
        """The worst relative error over all leaves."""
        return max(leaf.max_rel for leaf in self.leaves)

    def table(self) -> str:
        """The comparison as a fixed-width text table."""
        title = f"{self.left} vs {self.right} [{self.dtype}]"
        if self.note:
            title += f"  ({self.note})"
        head = (
            f"{'layer':>5}  {'leaf':<4}  {'shape':<12}  {'max abs err':>11}  "
            f"{'max rel err':>11}  {'tol':>7}  {'checked':>7}  result"
        )
        rows = [title, head, "-" * len(head)]
        for leaf in self.leaves:
            rows.append(
                f"{leaf.layer:>5}  {leaf.name:<4}  {str(leaf.shape):<12}  "
                f"{leaf.max_abs:>11.3e}  {leaf.max_rel:>11.3e}  {leaf.rtol:>7.0e}  "
                f"{leaf.checked:>7}  {'PASS' if leaf.passed else 'FAIL'}"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """The result of :func:`check_gradients`: several :class:`Comparison` tables."""

    network: str
    batch_size: int
    comparisons: tuple[Comparison, ...]

    @property
    def passed(self) -> bool:
        """Whether every comparison passed."""
        return all(c.passed for c in self.comparisons)

    def __str__(self) -> str:
        head = f"gradcheck: {self.network}, batch {self.batch_size}"
        body = "\n\n".join(c.table() for c in self.comparisons)
        verdict = "all checks PASS" if self.passed else "some checks FAIL"
        return f"{head}\n\n{body}\n\n{verdict}"

    def assert_passed(self) -> None:
        """Raises ``AssertionError`` with the full table if any leaf failed."""
        if not self.passed:
            raise AssertionError(f"gradients disagree\n{self}")


def compare_grads(
    left: Params,
    right: Params,
    *,
    names: tuple[str, str] = ("left", "right"),
    rtol: float | None = None,
    tiny: float | None = None,
    note: str = "",
    subset: list[dict[str, np.ndarray]] | None = None,
) -> Comparison:
    """Compares two gradient pytrees of the MLP's structure, leaf by leaf.

    Args:
      left: gradients, a list of ``{"w", "b"}`` dicts.
      right: gradients of the same structure (the reference).
      names: what ``left`` and ``right`` are, for the report.
      rtol: max relative error allowed per leaf; default by dtype (:data:`GRAD_RTOL`).
      tiny: floor of the denominator of the relative error, raised to at least
        :func:`default_tiny` (``eps ** (1/3)`` times the leaf's largest magnitude), so
        that entries that are zero up to rounding of larger terms do not count as
        large relative errors.
      note: extra words for the report's title.
      subset: optionally, per layer and leaf, the flat indices to compare (the rest
        is ignored), as for sampled finite differences.

    Returns:
      A :class:`Comparison`.

    Raises:
      ValueError: if the two pytrees differ in structure or shapes.
    """
    if jax.tree.structure(left) != jax.tree.structure(right):
        raise ValueError(
            f"gradient structures differ: {jax.tree.structure(left)} vs "
            f"{jax.tree.structure(right)}"
        )
    dtype = np.result_type(*(np.asarray(t).dtype for t in jax.tree.leaves(left))).name
    if rtol is None:
        rtol = GRAD_RTOL.get(dtype, 1e-4)
    leaves = []
    for l, (a_layer, b_layer) in enumerate(zip(left, right, strict=True)):
        for name in ("w", "b"):
            a = np.asarray(a_layer[name], np.float64)
            b = np.asarray(b_layer[name], np.float64)
            if a.shape != b.shape:
                raise ValueError(f"layer {l} {name}: shapes {a.shape} vs {b.shape}")
            shape = a.shape
            if subset is not None:
                a, b = a.ravel()[subset[l][name]], b.ravel()[subset[l][name]]
            leaves.append(_leaf_error(l, name, shape, a, b, rtol, tiny, dtype))
    return Comparison(names[0], names[1], dtype, tuple(leaves), note)


def _leaf_error(layer, name, shape, a, b, rtol, tiny, dtype) -> LeafError:
    """Max abs and max relative error of one leaf (NaN propagates to fail)."""
    if a.size == 0:
        return LeafError(layer, name, shape, 0.0, 0.0, rtol, 0)
    diff = np.abs(a - b)
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()))
    floor = default_tiny(dtype, scale)
    if tiny is not None:
        floor = max(floor, tiny)
    denom = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    with np.errstate(invalid="ignore"):
        rel = diff / denom
    has_nan = bool(np.isnan(diff).any())
    max_abs = math.nan if has_nan else float(diff.max())
    max_rel = math.nan if has_nan else float(rel.max())
    return LeafError(layer, name, shape, max_abs, max_rel, rtol, a.size)


def default_tiny(dtype, scale: float) -> float:
    """The default floor of the relative error's denominator for one leaf.

    A gradient entry is a sum over the batch (and over units) of products of larger
    terms; where they cancel, the entry's rounding error is set by the terms, not by
    the entry. So entries smaller than ``eps ** (1/3)`` times the leaf's largest
    magnitude ``scale`` (about 5e-3 in float32, 6e-6 in float64) are measured relative
    to that floor instead of to themselves.

    Args:
      dtype: name of the dtype the gradients were computed in.
      scale: the largest magnitude in the leaf.

    Returns:
      The floor, never below the smallest normal float64.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return max(float(np.finfo(np.float64).tiny), eps ** (1 / 3) * scale)


def finite_difference_grad(
    loss_fn,
    params: Params,
    *,
    step: float | None = None,
    indices: np.ndarray | None = None,
    chunk: int = 512,
) -> Array:
    """Central finite differences of ``loss_fn`` along coordinate directions.

    ``g_i = (L(p + h e_i) - L(p - h e_i)) / (2 h)``: two forward passes per
    coordinate, ``chunk`` coordinates at a time with ``jax.lax.map`` in one compiled
    program.

    Args:
      loss_fn: ``params -> scalar``.
      params: the point to differentiate at.
      step: ``h``; default by dtype (:data:`FD_STEP`).
      indices: positions in the flattened parameter vector
        (``jax.flatten_util.ravel_pytree`` order) to differentiate; default all.
      chunk: how many coordinates to evaluate at once.

    Returns:
      The difference quotients, a flat array of ``len(indices)`` (or of all
      parameters, in which case ``unravel`` it with ``ravel_pytree``'s inverse).
    """
    flat, unravel = ravel_pytree(params)
    if step is None:
        step = FD_STEP.get(flat.dtype.name, 1e-3)
    h = jnp.asarray(step, flat.dtype)
    if indices is None:
        indices = np.arange(flat.size)

    def coordinate(i):
        plus = loss_fn(unravel(flat.at[i].add(h)))
        minus = loss_fn(unravel(flat.at[i].add(-h)))
        return (plus - minus) / (2 * h)

    run = jax.jit(lambda idx: jax.lax.map(coordinate, idx, batch_size=chunk))
    return run(jnp.asarray(indices))


def _sample_subset(params: Params, per_leaf: int | None, seed: int):
    """Per layer and leaf, the flat indices to check: all, or ``per_leaf`` at random."""
    rng = np.random.default_rng(seed)
    subset = []
    for layer in params:
        picks = {}
        for name in ("w", "b"):
            size = int(np.size(layer[name]))
            if per_leaf is None or size <= per_leaf:
                picks[name] = np.arange(size)
            else:
                picks[name] = np.sort(rng.choice(size, per_leaf, replace=False))
        subset.append(picks)
    return subset


def _flat_positions(params: Params, subset) -> np.ndarray:
    """Positions of ``subset`` in the ``ravel_pytree`` vector of ``params``."""
    offsets, start = {}, 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        offsets[jax.tree_util.keystr(path)] = start
        start += int(np.size(leaf))
    positions = [
        offsets[f"[{l}]['{name}']"] + picks[name]
        for l, picks in enumerate(subset)
        for name in ("w", "b")
    ]
    return np.concatenate(positions)


def _scatter(params: Params, subset, values: np.ndarray) -> Params:
    """Puts flat ``values`` of ``subset`` back into zero-filled leaves."""
    out, i = [], 0
    for layer, picks in zip(params, subset, strict=True):
        new = {}
        for name in ("w", "b"):
            leaf = np.zeros(np.size(layer[name]), np.float64)
            n = picks[name].size
            leaf[picks[name]] = values[i : i + n]
            i += n
            new[name] = leaf.reshape(np.shape(layer[name]))
        out.append(new)
    return out


def _cast(tree, dtype):
    return jax.tree.map(lambda t: jnp.asarray(t, dtype), tree)


def _cast_batch(x, y, dtype):
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(dtype)
    return jnp.asarray(x, dtype), y


def check_gradients(
    net: MLP,
    params: Params,
    x: Array,
    y: Array,
    *,
    dtype=None,
    finite_differences: bool = True,
    fd_dtype="float64",
    fd_step: float | None = None,
    fd_samples: int | None = None,
    seed: int = 0,
    rtol: float | None = None,
    fd_rtol: float | None = None,
) -> GradCheckReport:
    """Checks the hand-derived gradient against ``jax.grad`` and finite differences.

    Args:
      net: the network spec.
      params: parameters to check at.
      x: inputs ``(B, sizes[0])``.
      y: labels ``(B,)`` or targets ``(B, sizes[-1])``.
      dtype: dtype for manual vs autodiff (``"float32"`` or ``"float64"``); default the
        dtype of ``params``. float64 is enabled locally as needed.
      finite_differences: also compare both against central finite differences.
      fd_dtype: dtype of the finite-difference part (float64 by default; float32 is
        shown for teaching, and is expected to fail on most networks).
      fd_step: finite-difference step; default by dtype.
      fd_samples: check at most this many coordinates per leaf against finite
        differences, drawn at random with ``seed`` (two forward passes each); default
        all of them.
      seed: seed of that draw.
      rtol: tolerance for manual vs autodiff; default by dtype.
      fd_rtol: tolerance against finite differences; default by dtype.

    Returns:
      A :class:`GradCheckReport` whose comparisons are *manual vs autodiff* and, with
      ``finite_differences``, *manual vs finite differences* and *autodiff vs finite
      differences*.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = MLP((3, 4, 2), activation="tanh")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> check_gradients(net, params, x, y).passed
      True
    """
    if dtype is None:
        dtype = np.result_type(*(np.asarray(t).dtype for t in jax.tree.leaves(params)))
    dtype = np.dtype(dtype)
    comparisons = []
    with jax.enable_x64(dtype == np.float64 or jax.config.jax_enable_x64):
        p, xb, yb = _cast(params, dtype), *_cast_batch(x, y, dtype)
        manual = net.manual_grad(p, xb, yb)
        auto = jax.grad(net.loss)(p, xb, yb)
        comparisons.append(
            compare_grads(
                manual,
                auto,
                names=("manual (delta rule)", "autodiff (jax.grad)"),
                rtol=rtol,
            )
        )
    if finite_differences:
        fd_dtype = np.dtype(fd_dtype)
        with jax.enable_x64(fd_dtype == np.float64 or jax.config.jax_enable_x64):
            p, xb, yb = _cast(params, fd_dtype), *_cast_batch(x, y, fd_dtype)
            subset = _sample_subset(p, fd_samples, seed)
            fd_flat = finite_difference_grad(
                lambda q: net.loss(q, xb, yb),
                p,
                step=fd_step,
                indices=_flat_positions(p, subset),
            )
            fd = _scatter(p, subset, np.asarray(fd_flat, np.float64))
            step = fd_step or FD_STEP.get(fd_dtype.name, 1e-3)
            note = f"central differences, h={step:g}"
            tol = fd_rtol or FD_RTOL.get(fd_dtype.name, 1e-2)
            value, manual = net.value_and_manual_grad(p, xb, yb)
            auto = jax.grad(net.loss)(p, xb, yb)
            # Entries below noise / tol cannot be resolved to tol by a difference
            # quotient: compare them in absolute terms, to the noise.
            noise = _fd_noise(value, fd_dtype, step)
            for name, grads in (
                ("manual (delta rule)", manual),
                ("autodiff (jax.grad)", auto),
            ):
                comparisons.append(
                    compare_grads(
                        grads,
                        fd,
                        names=(name, "finite differences"),
                        rtol=tol,
                        tiny=noise / tol,
                        note=note,
                        subset=subset,
                    )
                )
    return GradCheckReport(str(net), int(jnp.shape(x)[0]), tuple(comparisons))


def _fd_noise(value, dtype, step: float) -> float:
    """Absolute rounding noise of a central difference quotient.

    Evaluating the loss carries a few ulps of ``|L|`` of rounding (sums over the
    batch, a log-sum-exp), and the quotient divides it by ``h``: about
    ``10 eps |L| / h``.
    """
    return 10 * float(np.finfo(dtype).eps) * max(1.0, abs(float(value))) / step


def assert_gradients_agree(
    net: MLP, params: Params, x: Array, y: Array, **kwargs
) -> None:
    """One-line assertion for test suites: :func:`check_gradients` must pass.

    Args:
      net, params, x, y: as for :func:`check_gradients`.
      **kwargs: passed to :func:`check_gradients`.

    Raises:
      AssertionError: with the full per-leaf table when any comparison fails.
    """
    check_gradients(net, params, x, y, **kwargs).assert_passed()
