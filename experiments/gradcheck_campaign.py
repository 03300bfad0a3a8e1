"""Gradient-checker campaign: random pytrees, functions, points, bugs, kinks and options
thrown at ``jaxbp.check_grad``, and whether it ever passes a wrong gradient.

Hypothesis draws every case (the strategies live here, shared with
``tests/test_gradcheck_campaign.py``, which runs a fixed-seed few of them in CI; this
script needs the ``test`` extra):

* **pytrees**: nested dicts, lists and tuples of 1 to 4 leaves of shapes ``()``,
  ``(1,)``, ``(3,)``, ``(2, 2)``, ``(2, 3)`` (a few fixed shapes: new shapes force
  recompiles), float16, bfloat16, float32 or float64 (one dtype for three trees in
  four, mixed in the fourth), entries normal, some exact zeros, or a leaf of zeros;
* **smooth functions** from a small grammar, each term with its gradient derived by
  hand (the ``grad_fun`` under test, computed in float64 and rounded to each leaf's
  dtype): ``c sum phi(a x + b)`` for ``phi`` in tanh, sin, exp, softplus and the
  square; products of two such sums over two leaves; bilinear forms ``x_i^T M x_k``
  and ``sum tanh(M x)`` (matrix products); smoothed norms ``sqrt(c + |x|^2)``;
* **bugs** injected into that gradient: a scaled leaf, a transposed square leaf, a
  dropped term, a sign flipped in one entry, one entry off by a relative ``delta``
  (``1e-3`` one time in six, else log-uniform in ``[1e-13, 1]``); and a **sweep**: one
  entry off by ``delta = 1e-13, 1e-12, ..., 1`` in a fixed tree of each dtype, since
  Hypothesis, favouring simple values, draws few of the small ones;
* **kinks** at exact points (dyadic values, so that every dtype lands on the corner):
  ``c relu(z)``, ``c |z|``, ``c max(z1, z2)`` and ``c relu(w relu(z) + z2)`` (nested)
  of affine functions ``z`` of several leaves, with a valid subgradient (one choice per
  kink) or an invalid one (two choices mixed across the coordinates of one kink, or a
  choice outside the bracket);
* **options and inputs**: every option of ``check_grad`` at good and bad values, params
  with NaN, infinities, empty or integer leaves, a ``fun`` that returns a tuple, a
  dict, a complex or integer value or a vector, a ``grad_fun`` of the wrong structure,
  shape, or with NaN.

The properties (:func:`bug_case_holds`, :func:`kink_case_holds`,
:func:`option_case_holds`):

* a correct gradient passes; a valid subgradient passes where the function is convex
  or concave near the point or no two kinks share a coordinate (elsewhere the checker
  may fail a Clarke subgradient, see :mod:`jaxbp.gradcheck.check`);
* a bug above the stated budget (an entry changed by more than twice the tolerance of
  ``grad_fun`` against ``jax.grad``, ``rtol * max(|a|, |b|, tiny)`` plus ``jax.grad``'s
  own rounding, plus the hand gradient's distance from ``jax.grad``) fails and names
  exactly the leaves it changed above the budget, never one it did not touch; with
  ``fd="all"``, one off by more than ``1e-3`` of its leaf's scale (plus four times
  that budget) fails against finite differences as well;
* an invalid subgradient of a kink that shares no coordinate with another fails
  (float32 and float64; recorded for half precision), naming only the kink's leaves;
* no option or input gives a traceback from inside JAX or NumPy (only a ``ValueError``
  or ``TypeError`` raised by jaxbp), a warning, or a PASS with nothing checked.

Writes gradcheck_campaign.json: the cases run, how many held, and per dtype the
smallest relative bug caught (relative as the checker measures it,
``|change| / max(|a|, |b|, tiny)``) and the largest that passed, in the campaign and in
the sweep.

Example:
  python experiments/gradcheck_campaign.py
"""

import dataclasses
import math
import pathlib
import random
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import jaxbp
from jaxbp.gradcheck.inputs import leaf_name
from jaxbp.gradcheck.report import GRAD_RTOL, default_tiny

DTYPES = ("float16", "bfloat16", "float32", "float64")
SHAPES = ((), (1,), (3,), (2, 2), (2, 3))
#: Dyadic values: exact in every dtype, and so are the sums of their products.
DYADIC = (-2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
COEFFS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
UNARY = {
    "tanh": (jnp.tanh, lambda u: 1 - jnp.tanh(u) ** 2),
    "sin": (jnp.sin, jnp.cos),
    "exp": (jnp.exp, jnp.exp),
    "softplus": (jax.nn.softplus, jax.nn.sigmoid),
    "square": (jnp.square, lambda u: 2 * u),
}
BUGS = ("scale", "transpose", "drop", "flip", "entry")
#: Counts of each kind of case, full run and ``--quick``.
FULL = {"bugs": 300, "kinks": 160, "options": 300}
QUICK = {"bugs": 3, "kinks": 2, "options": 4}


# ------------------------------------------------------------------ pytrees
@st.composite
def trees(draw, *, dyadic=False, max_leaves=4):
    """``(params, dtypes)``: a nested pytree of float leaves and each leaf's dtype."""
    n = draw(st.integers(1, max_leaves))
    # dtypes drawn evenly (Hypothesis favours the first of sampled_from), mostly one
    rnd = random.Random(draw(st.integers(0, 2**64 - 1)))
    same = rnd.random() < 0.75
    dtype0 = rnd.choice(DTYPES)
    leaves, dtypes = [], []
    for _ in range(n):
        dtype = dtype0 if same else rnd.choice(DTYPES)
        shape = draw(st.sampled_from(SHAPES))
        size = math.prod(shape)
        if dyadic:
            values = draw(
                st.lists(st.sampled_from(DYADIC), min_size=size, max_size=size)
            )
        else:
            zero = draw(st.sampled_from(("none", "some", "all")))
            values = draw(
                st.lists(
                    st.floats(-2, 2, allow_nan=False, width=16),
                    min_size=size,
                    max_size=size,
                )
            )
            if zero == "all":
                values = [0.0] * size
            elif zero == "some" and size:
                values[draw(st.integers(0, size - 1))] = 0.0
        leaves.append(np.asarray(values, np.float64).reshape(shape))
        dtypes.append(dtype)
    # the container: a flat dict, a list, a tuple, or one level more of nesting
    kind = draw(st.sampled_from(("dict", "list", "tuple", "nested", "single")))
    if kind == "single" and n == 1:
        structure = 0
    elif kind == "dict":
        structure = {f"p{k}": k for k in range(n)}
    elif kind == "list":
        structure = list(range(n))
    elif kind == "tuple":
        structure = tuple(range(n))
    else:
        half = max(1, n // 2)
        structure = {"a": list(range(half)), "b": {"c": tuple(range(half, n))}}
    return Tree(structure, leaves, dtypes)


@dataclasses.dataclass(frozen=True)
class Tree:
    """A pytree to check at: its structure (leaf numbers), values and dtypes."""

    structure: object
    values: list
    dtypes: list

    def params(self):
        """The pytree of jnp arrays, each leaf in its dtype."""
        return jax.tree.map(
            lambda k: jnp.asarray(self.values[k], self.dtypes[k]), self.structure
        )

    def unflatten(self, leaves):
        """A pytree like :meth:`params` of ``leaves``, in leaf order."""
        return jax.tree.unflatten(jax.tree.structure(self.structure), leaves)

    @property
    def x64(self) -> bool:
        return "float64" in self.dtypes

    def __repr__(self):  # short, for Hypothesis's falsifying examples
        return (
            f"Tree({self.structure!r}, shapes={[v.shape for v in self.values]}, "
            f"dtypes={self.dtypes}, values={[v.tolist() for v in self.values]})"
        )


# ------------------------------------------------------------------ smooth functions
@dataclasses.dataclass(frozen=True)
class Term:
    """One term of a smooth function, with its hand-derived gradient.

    ``kind`` is ``map`` (``coef sum phi(a x_k + b)``), ``product`` (two such sums over
    leaves ``k`` and ``k2``), ``bilinear`` (``coef x_k^T M x_k2``), ``tanh_matmul``
    (``coef sum tanh(M x_k)``) or ``norm`` (``coef sqrt(b + |x_k|^2)``).
    """

    kind: str
    k: int
    k2: int = 0
    phi: str = "tanh"
    phi2: str = "sin"
    a: float = 1.0
    b: float = 0.0
    a2: float = 1.0
    b2: float = 0.0
    coef: float = 1.0
    matrix: tuple = ()

    def _m(self, dtype, rows, cols):
        return jnp.asarray(np.asarray(self.matrix).reshape(rows, cols), dtype)

    def value(self, xs):
        x = xs[self.k]
        if self.kind == "map":
            return self.coef * jnp.sum(UNARY[self.phi][0](self.a * x + self.b))
        if self.kind == "product":
            s1 = jnp.sum(UNARY[self.phi][0](self.a * x + self.b))
            s2 = jnp.sum(UNARY[self.phi2][0](self.a2 * xs[self.k2] + self.b2))
            return self.coef * s1 * s2
        if self.kind == "bilinear":
            y = xs[self.k2]
            m = self._m(x.dtype, x.size, y.size)
            return self.coef * (
                x.ravel() @ m.astype(x.dtype) @ y.ravel().astype(x.dtype)
            )
        if self.kind == "tanh_matmul":
            m = self._m(x.dtype, 2, x.size)
            return self.coef * jnp.sum(jnp.tanh(m @ x.ravel()))
        return self.coef * jnp.sqrt(self.b + jnp.sum(x * x))

    def grad(self, xs) -> dict:
        """``{leaf number: dterm/dleaf}``, derived by hand."""
        x = xs[self.k]
        if self.kind == "map":
            u = self.a * x + self.b
            return {self.k: self.coef * self.a * UNARY[self.phi][1](u)}
        if self.kind == "product":
            y = xs[self.k2]
            u, v = self.a * x + self.b, self.a2 * y + self.b2
            s1 = jnp.sum(UNARY[self.phi][0](u))
            s2 = jnp.sum(UNARY[self.phi2][0](v))
            return _add(
                {self.k: self.coef * s2 * self.a * UNARY[self.phi][1](u)},
                {self.k2: self.coef * s1 * self.a2 * UNARY[self.phi2][1](v)},
            )
        if self.kind == "bilinear":
            y = xs[self.k2]
            m = self._m(x.dtype, x.size, y.size)
            yx = y.ravel().astype(x.dtype)
            gx = self.coef * (m @ yx).reshape(x.shape)  # d/dx x^T M y = M y
            gy = self.coef * (m.T @ x.ravel()).reshape(y.shape)  # d/dy = M^T x
            return _add({self.k: gx}, {self.k2: gy})
        if self.kind == "tanh_matmul":
            m = self._m(x.dtype, 2, x.size)
            t = jnp.tanh(m @ x.ravel())
            return {self.k: self.coef * (m.T @ (1 - t * t)).reshape(x.shape)}
        return {self.k: self.coef * x / jnp.sqrt(self.b + jnp.sum(x * x))}


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, g in b.items():
        out[k] = out[k] + g.astype(out[k].dtype) if k in out else g
    return out


@st.composite
def terms(draw, tree: Tree, count=(1, 3)):
    """1 to 3 smooth terms over the leaves of ``tree``."""
    n = len(tree.values)
    out = []
    for _ in range(draw(st.integers(*count))):
        kind = draw(
            st.sampled_from(("map", "product", "bilinear", "tanh_matmul", "norm"))
        )
        k, k2 = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        size = tree.values[k].size * (tree.values[k2].size if kind == "bilinear" else 2)
        out.append(
            Term(
                kind,
                k,
                k2,
                phi=draw(st.sampled_from(sorted(UNARY))),
                phi2=draw(st.sampled_from(sorted(UNARY))),
                a=draw(st.sampled_from((-1.0, -0.5, 0.5, 1.0))),
                b=draw(st.sampled_from((0.0, 0.25, 1.0))),
                a2=draw(st.sampled_from((-1.0, 0.5, 1.0))),
                b2=draw(st.sampled_from((0.0, 0.5))),
                coef=draw(st.sampled_from((-1.5, -1.0, 0.5, 1.0, 2.0))),
                matrix=tuple(
                    draw(
                        st.lists(st.sampled_from(DYADIC), min_size=size, max_size=size)
                    )
                ),
            )
        )
    return [
        t if t.kind != "norm" else dataclasses.replace(t, b=t.b + 0.25) for t in out
    ]


def smooth_value(tree: Tree, terms_: list):
    """``fun(params)``: the sum of the terms."""

    def fun(params):
        xs = jax.tree.leaves(params)
        return sum(t.value(xs) for t in terms_)

    return fun


def smooth_grads(tree: Tree, terms_: list, params) -> list:
    """The hand-derived gradient of the sum of the terms, one array per leaf.

    Computed in float64 and rounded to each leaf's dtype: the correct gradient.
    """
    leaves = jax.tree.leaves(params)
    with jax.enable_x64(True):
        xs = [jnp.asarray(_f64(x)) for x in leaves]
        total = {}
        for t in terms_:
            total = _add(total, t.grad(xs))
        return [
            jnp.asarray(total[k], x.dtype) if k in total else jnp.zeros_like(x)
            for k, x in enumerate(leaves)
        ]


def working_dtype(dtypes) -> str:
    """The least precise of ``dtypes``: the one a mixed tree is judged in."""
    return max(dtypes, key=lambda d: float(jnp.finfo(d).eps))


# ------------------------------------------------------------------ bugs
@dataclasses.dataclass(frozen=True)
class Bug:
    """A bug injected into a gradient: ``kind`` on leaf ``k`` (entry ``i``)."""

    kind: str
    k: int = 0
    i: int = 0
    delta: float = 0.0
    term: int = 0


@st.composite
def bug_cases(draw):
    """``(tree, terms, bug or None, fd mode)``."""
    tree = draw(trees())
    terms_ = draw(terms(tree))
    # the bug and its size drawn evenly: every kind, and delta log-uniform in
    # [1e-13, 1] (1e-3 itself one time in six)
    rnd = random.Random(draw(st.integers(0, 2**64 - 1)))
    kind = rnd.choice(("none", *BUGS))
    k = draw(st.integers(0, len(tree.values) - 1))
    size = max(tree.values[k].size, 1)
    delta = 1e-3 if rnd.random() < 1 / 6 else 10.0 ** rnd.uniform(-13, 0)
    delta *= rnd.choice((-1.0, 1.0))
    square = [j for j, v in enumerate(tree.values) if v.shape == (2, 2)]
    if kind == "transpose":  # a square leaf, else a scaled one
        kind, k = (
            ("transpose", draw(st.sampled_from(square))) if square else ("scale", k)
        )
    bug = None
    if kind != "none":
        bug = Bug(kind, k, draw(st.integers(0, size - 1)), delta,
                  draw(st.integers(0, len(terms_) - 1)))  # fmt: skip
    fd = draw(st.sampled_from(("auto", "all", "sample", "directions")))
    return tree, terms_, bug, fd


#: The sweep: one entry off by delta = 1e-13, 1e-12, ..., 1, in a fixed tree of each
#: dtype (Hypothesis draws few small deltas: it favours simple values).
SWEEP = tuple(10.0**e for e in range(-13, 1))


def sweep_cases(quick: bool):
    """``(tree, terms, bug, "all")``: one entry off by each delta of :data:`SWEEP`."""
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(3,)), rng.normal(size=(2, 2))]
    terms_ = [
        Term("map", 0, phi="tanh", a=1.0, b=0.25),
        Term("product", 0, 1, phi="sin", phi2="softplus", a=0.5, a2=-1.0),
        Term("tanh_matmul", 1, matrix=(0.5, -1.0, 0.25, 1.5, -0.5, 1.0, 2.0, -0.25)),
    ]
    for dtype in ("float32", "float64") if quick else DTYPES:
        tree = Tree({"v": 0, "w": 1}, values, [dtype, dtype])
        for delta in (1e-12, 1e-3) if quick else SWEEP:
            yield tree, terms_, Bug("entry", 0, 1, delta), "all"


def inject(bug: Bug | None, grads: list, tree: Tree, terms_: list, params) -> list:
    """``grads`` with ``bug`` in them (a new list)."""
    grads = list(grads)
    if bug is None:
        return grads
    g = grads[bug.k]
    if bug.kind == "scale":
        grads[bug.k] = (g * (1 + bug.delta)).astype(g.dtype)
    elif bug.kind == "transpose" and g.ndim == 2 and g.shape[0] == g.shape[1]:
        grads[bug.k] = g.T
    elif bug.kind == "drop":
        kept = [t for j, t in enumerate(terms_) if j != bug.term]
        return smooth_grads(tree, kept, params)
    elif bug.kind == "flip" and g.size:
        grads[bug.k] = g.ravel().at[bug.i].multiply(-1).reshape(g.shape)
    elif bug.kind == "entry" and g.size:
        flat = g.ravel()
        grads[bug.k] = (
            flat.at[bug.i].set(flat[bug.i] * (1 + bug.delta)).reshape(g.shape)
        )
    return grads


def _f64(x) -> np.ndarray:
    return (
        np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)
        if jnp.asarray(x).dtype in (jnp.bfloat16, jnp.float16)
        else np.asarray(x, np.float64)
    )


def _named(report, name="grad_fun") -> list[str]:
    """The leaves a report blames on ``name`` (any failing comparison of it)."""
    return jaxbp.gradcheck.check.failing_paths(report, name)


def _paths(params) -> list[str]:
    return [leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def bug_case_holds(case) -> dict:
    """Runs one bug case; the record says whether the properties held, and why not."""
    tree, terms_, bug, fd = case
    with jax.enable_x64(tree.x64):
        params = tree.params()
        fun = smooth_value(tree, terms_)
        good = smooth_grads(tree, terms_, params)
        wrong = inject(bug, good, tree, terms_, params)
        auto = jax.tree.leaves(jax.jit(jax.grad(fun))(params))
    with jax.enable_x64(True):  # jax.grad's own rounding, as the checker allows it
        p64 = jax.tree.map(lambda t: jnp.asarray(_f64(t)), params)
        auto64 = jax.tree.leaves(jax.jit(jax.grad(fun))(p64))
    report = jaxbp.check_grad(
        fun, lambda p: tree.unflatten(wrong), params, fd=fd, fd_samples=2
    )
    paths = _paths(params)
    named = _named(report)
    # The largest jax.grad entry of the tree: the checker's floor for a leaf that
    # cancels (default_tiny's tree_scale).
    tree_scale = max(float(np.max(np.abs(_f64(t)), initial=0.0)) for t in auto)
    touched, above, fd_above, rel = [], [], [], {}
    for k, path in enumerate(paths):
        a, b, c = _f64(wrong[k]).ravel(), _f64(good[k]).ravel(), _f64(auto[k]).ravel()
        rounding = np.abs(c - _f64(auto64[k]).ravel())
        change = np.abs(a - b)
        if not change.any():
            continue
        touched.append(path)
        dtype = working_dtype(tree.dtypes)
        scale = float(np.max(np.maximum(np.abs(a), np.abs(c)), initial=0.0))
        tiny = default_tiny(dtype, scale, tree_scale)
        tol = GRAD_RTOL[dtype] * np.maximum(np.maximum(np.abs(a), np.abs(c)), tiny)
        tol = tol + rounding
        rel[path] = float(
            np.max(change / np.maximum(np.maximum(np.abs(a), np.abs(b)), tiny))
        )
        if np.any(change > 2 * tol + np.abs(b - c)):
            above.append(path)
        leaf_scale = float(np.max(np.abs(b), initial=0.0))
        fd_tol = 4 * tol + 1e-3 * leaf_scale + np.abs(b - c)
        if fd == "all" and np.any(change > fd_tol) and leaf_scale > 0:
            fd_above.append(path)
    fd_failing = (
        [leaf.path for leaf in report.comparisons[1].leaves if not leaf.passed]
        if len(report.comparisons) > 1
        else []
    )
    why = []
    if bug is None and not report.passed:
        why.append("a correct gradient failed")
    if above and report.passed:
        why.append(f"a bug above the budget passed (leaves {above})")
    if not set(above) <= set(named):
        why.append(f"leaves changed above the budget {above} not all named {named}")
    if not set(named) <= set(touched):
        why.append(f"named {named} beyond the leaves touched {touched}")
    if not set(fd_above) <= set(fd_failing):
        why.append(f"finite differences missed {fd_above} (failing: {fd_failing})")
    if not set(fd_failing) <= set(touched):
        why.append(f"finite differences blame untouched leaves {fd_failing}")
    return {
        "bug": bug.kind if bug else "none",
        "dtype": working_dtype(tree.dtypes),
        "mixed": len(set(tree.dtypes)) > 1,
        "fd": fd,
        "touched": touched,
        "above": above,
        "named": named,
        "rel": rel,
        "fd_failing": fd_failing,
        "passed": report.passed,
        "ok": not why,
        "why": "; ".join(why) + ("" if not why else f"\n{report}"),
    }


# ------------------------------------------------------------------ kinks
@dataclasses.dataclass(frozen=True)
class Kink:
    """``coef * phi(z)`` with ``z = sum a_k . x_k + c`` zero at the point.

    ``phi`` is ``relu``, ``abs``, ``max`` (``max(z, z2)``, ``z2 = sum a2_k . x_k + c2``
    equal to ``z`` at the point) or ``nested`` (``relu(w relu(z) + z2)``, ``z2`` zero
    at the point: a ReLU layer above another, with ``inner`` the choice of the inner
    ``relu'(0)``). ``a``, ``a2``: one tuple of coefficients per leaf (zeros where a
    leaf is not in the kink).
    """

    phi: str
    coef: float
    a: tuple
    a2: tuple
    c: float
    c2: float
    w: float = 1.0
    inner: float = 0.0

    @property
    def curvature(self) -> float | None:
        """+1 convex, -1 concave, None neither (a nested kink with ``w < 0``)."""
        if self.phi == "nested" and self.w < 0:
            return None
        return math.copysign(1.0, self.coef)

    def z(self, xs, a, c):
        return sum(jnp.sum(jnp.asarray(np.reshape(ak, x.shape), x.dtype) * x)
                   for ak, x in zip(a, xs, strict=True)) + c  # fmt: skip

    def value(self, xs):
        z = self.z(xs, self.a, self.c)
        if self.phi == "relu":
            return self.coef * jax.nn.relu(z)
        if self.phi == "abs":
            return self.coef * jnp.abs(z)
        z2 = self.z(xs, self.a2, self.c2)
        if self.phi == "nested":
            return self.coef * jax.nn.relu(self.w * jax.nn.relu(z) + z2)
        return self.coef * jnp.maximum(z, z2)

    def direction(self) -> list[np.ndarray]:
        """The normal of the kink, per leaf: ``a`` (``a - a2`` for ``max``; both
        normals' entries for ``nested``)."""
        if self.phi == "max":
            return [np.subtract(a, b) for a, b in zip(self.a, self.a2, strict=True)]
        if self.phi == "nested":
            return [np.abs(a) + np.abs(b) for a, b in zip(self.a, self.a2, strict=True)]
        return [np.asarray(a, np.float64) for a in self.a]

    def subgradient(self, choice: list[np.ndarray]) -> list[np.ndarray]:
        """The subgradient for a per-entry choice in ``[0, 1]`` (valid if constant)."""
        out = []
        for k, lam in enumerate(choice):
            lam = np.ravel(lam)
            a = np.asarray(self.a[k], np.float64)
            if self.phi == "relu":
                out.append(self.coef * lam * a)
            elif self.phi == "abs":  # |z| = 2 relu(z) - z
                out.append(self.coef * (2 * lam - 1) * a)
            elif self.phi == "nested":  # the chain rule: lam (w inner a + a2)
                a2 = np.asarray(self.a2[k], np.float64)
                out.append(self.coef * lam * (self.w * self.inner * a + a2))
            else:  # max(z, z2) = z2 + relu(z - z2)
                a2 = np.asarray(self.a2[k], np.float64)
                out.append(self.coef * (a2 + lam * (a - a2)))
        return out


@st.composite
def kink_cases(draw):
    """``(tree, smooth terms, kinks, per-kink choices, how, broken kink)``."""
    tree = draw(trees(dyadic=True, max_leaves=3))
    xs = tree.values
    smooth = draw(terms(tree, count=(0, 2)))
    kinks, choices = [], []
    for _ in range(draw(st.integers(1, 2))):
        phi = draw(st.sampled_from(("relu", "abs", "max", "nested")))
        use = draw(
            st.lists(st.integers(0, len(xs) - 1), min_size=1, max_size=3, unique=True)
        )

        def coefficients(draw=draw, use=use):
            return tuple(
                tuple(draw(st.lists(st.sampled_from(COEFFS), min_size=x.size,
                                    max_size=x.size))) if k in use
                else (0.0,) * x.size
                for k, x in enumerate(xs)
            )  # fmt: skip

        a, a2 = coefficients(), coefficients()
        za = sum(
            float(np.dot(np.ravel(ak), x.ravel())) for ak, x in zip(a, xs, strict=True)
        )
        za2 = sum(
            float(np.dot(np.ravel(ak), x.ravel())) for ak, x in zip(a2, xs, strict=True)
        )
        level = draw(st.sampled_from((0.0, 0.5, -1.0))) if phi == "max" else 0.0
        coef = draw(st.sampled_from((-2.0, -1.0, 1.0, 2.0)))
        w = draw(st.sampled_from((-1.0, 0.5, 2.0)))
        inner = draw(st.sampled_from((0.0, 1.0)))
        kinks.append(Kink(phi, coef, a, a2, level - za, level - za2, w, inner))
        # relu'(0) of a nested kink: 0 or 1, a limiting gradient (the piece's)
        lam = (0.0, 1.0) if phi == "nested" else (0.0, 1.0, 0.5, 0.25)
        choices.append(draw(st.sampled_from(lam)))
    how = draw(st.sampled_from(("valid", "valid", "mixed", "outside")))
    broken = draw(st.integers(0, len(kinks) - 1))
    return tree, smooth, kinks, choices, how, broken


def _support(kink: Kink) -> list[np.ndarray]:
    return [np.abs(d) > 0 for d in kink.direction()]


def kink_case_holds(case) -> dict:
    """Runs one kink case; the record says whether the properties held, and why not."""
    tree, smooth, kinks, choices, how, broken = case
    with jax.enable_x64(tree.x64):
        params = tree.params()
        xs = jax.tree.leaves(params)

        def fun(params):
            leaves = jax.tree.leaves(params)
            total = sum(t.value(leaves) for t in smooth) if smooth else 0.0
            return total + sum(k.value(leaves) for k in kinks)

        grads = [_f64(g) for g in smooth_grads(tree, smooth, params)]
    supports = [_support(k) for k in kinks]
    n_kinked = [sum(int(s.sum()) for s in sup) for sup in supports]
    for j, (kink, lam) in enumerate(zip(kinks, choices, strict=True)):
        choice = [np.full(np.shape(x), lam) for x in tree.values]
        if kink.phi == "nested":
            pass  # held to valid choices only (see below)
        elif j == broken and how == "outside":
            choice = [
                np.full(np.shape(x), 1.5 if lam >= 0.5 else -0.5) for x in tree.values
            ]
        elif j == broken and how == "mixed" and n_kinked[j] >= 2:
            flat = np.concatenate([s.ravel() for s in supports[j]])
            first = int(np.flatnonzero(flat)[0])
            mixed, start = [], 0
            for x in tree.values:  # the first kinked coordinate differs from the rest
                lam_k = np.full(np.size(x), 1.0 - lam if lam != 0.5 else 1.0)
                if start <= first < start + np.size(x):
                    lam_k[first - start] = lam
                mixed.append(lam_k.reshape(np.shape(x)))
                start += np.size(x)
            choice = mixed
        for k, g in enumerate(kink.subgradient(choice)):
            grads[k] = grads[k] + g.reshape(np.shape(grads[k]))
    with jax.enable_x64(tree.x64):
        wrong = [jnp.asarray(g, x.dtype) for g, x in zip(grads, xs, strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = jaxbp.check_grad(
            fun, lambda p: tree.unflatten(wrong), params, fd="all"
        )
    paths = _paths(params)
    kink_leaves = {paths[k] for k, s in enumerate(supports[broken]) if s.any()}

    # Other kinks that share coordinates with the broken one change what it means to
    # lie across a single kink, so only disjoint kinks are held to catching a mix.
    def apart(one, two):
        return not any((a & b).any() for a, b in zip(one, two, strict=True))

    disjoint = all(
        apart(supports[broken], o) for j, o in enumerate(supports) if j != broken
    )
    all_disjoint = all(
        apart(supports[i], supports[j])
        for i in range(len(kinks))
        for j in range(i + 1, len(kinks))
    )
    # One choice per kink is a subgradient of the sum when every kink has the same
    # curvature (the sum is convex or concave) or no two kinks share a coordinate.
    # Kinks of opposite curvature through one coordinate are not held to it: a choice
    # per kink can then lie outside the one-sided derivatives along that coordinate
    # (-2 relu(-2t) + relu(t/2) has slopes 4 and 1/2, and 0 + 0 is not between them),
    # or be a Clarke subgradient that the checker rejects (relu(t) - relu(t) along t
    # is flat, and jax.grad's 0 passes but relu'(0) = 1 in one and 0 in the other
    # does not), so the checker errs towards FAIL there.
    # A nested kink with w < 0 is neither convex nor concave: its chain-rule choices
    # are Clarke subgradients that the checker may reject, so it is not held to them.
    curvatures = {k.curvature for k in kinks}
    same_curvature = len(curvatures) == 1
    half = any(d in ("float16", "bfloat16") for d in tree.dtypes)
    invalid = kinks[broken].phi != "nested" and (
        how == "outside" or (how == "mixed" and n_kinked[broken] >= 2)
    )
    valid_expected = (
        not invalid and None not in curvatures and (same_curvature or all_disjoint)
    )
    named = _named(report)
    why = []
    if valid_expected and not report.passed:
        why.append("a valid subgradient failed")
    must_fail = invalid and not half and disjoint
    if must_fail and report.passed:
        why.append(f"an invalid subgradient ({how}) passed")
    if must_fail and not report.passed and not set(named) <= kink_leaves:
        why.append(f"named {named} beyond the kink's leaves {sorted(kink_leaves)}")
    return {
        "how": how if invalid else "valid",
        "phis": [k.phi for k in kinks],
        "dtypes": tree.dtypes,
        "kinked": n_kinked,
        "disjoint": disjoint,
        "same_curvature": same_curvature,
        "valid_expected": valid_expected,
        "passed": report.passed,
        "kinks": report.kinks,
        "pairs_tested": len(report.comparisons) > 3,
        "ok": not why,
        "why": "; ".join(why) + ("" if not why else f"\n{report}"),
    }


# ------------------------------------------------------------------ options and inputs
OPTION_VALUES = {
    "fd": ("auto", "all", "sample", "directions", None, False, "every", 3),
    "fd_samples": (-5, -1, 0, 1, 3, 10**9, 2.5, True, None, "3"),
    "fd_directions": (-1, 0, 1, 4, 2.0, None),
    "chunk": (-1, 0, 1, 3, 10**6, 0.5, None),
    "rtol": (None, 0.0, 0, 1e-3, -1e-6, math.nan, math.inf, "1e-3", True),
    "fd_step": (None, 0.0, -1.0, 1e-300, 1e-8, 1e-3, 1e3, math.nan, math.inf, "h"),
    "fd_safety": (0.0, -1.0, 1.0, 10, math.nan, math.inf, None),
    "seed": (-1, 0, 7, 2**70, 1.5, None),
    "dtype": (None, "float32", "bfloat16", "float16", "int32", "complex64", "nope"),
    "fd_dtype": ("float64", "float32", "int8", None, "x"),
    "name": ("grad_fun", "", "mine", 3, None),
    "has_aux": (False, True),
}
INPUTS = (
    "fine", "nan", "inf", "empty_leaf", "all_empty", "int_leaf", "fun_tuple",
    "fun_dict", "fun_complex", "fun_int", "fun_vector", "fun_none", "grad_structure",
    "grad_shape", "grad_aux", "grad_nan", "grad_none",
)  # fmt: skip


@st.composite
def option_cases(draw):
    """``(tree, terms, options, input corruption)``."""
    tree = draw(trees(max_leaves=2))
    terms_ = draw(terms(tree, count=(1, 1)))
    names = draw(
        st.lists(st.sampled_from(sorted(OPTION_VALUES)), max_size=3, unique=True)
    )
    options = {n: draw(st.sampled_from(OPTION_VALUES[n])) for n in names}
    return tree, terms_, options, draw(st.sampled_from(INPUTS))


def _corrupt(inputs: str, tree: Tree, terms_: list, params, grads: list):
    """``(fun, grad_fun, params)`` for one of :data:`INPUTS`."""
    fun = smooth_value(tree, terms_)
    leaves = jax.tree.leaves(params)

    def grad_fun(p):
        return tree.unflatten(grads)

    if inputs in ("nan", "inf"):
        bad = jnp.nan if inputs == "nan" else -jnp.inf
        first = leaves[0]
        leaves = [first.ravel().at[0].set(bad).reshape(first.shape), *leaves[1:]]
        params = tree.unflatten(leaves)
    elif inputs == "empty_leaf":
        params = {"p": params, "empty": jnp.zeros((0,), jnp.float32)}

        def grad_fun(p):  # noqa: F811
            return {"p": tree.unflatten(grads), "empty": jnp.zeros((0,))}

        fun = (lambda f: lambda p: f(p["p"]))(fun)
    elif inputs == "all_empty":
        params, fun = {"e": jnp.zeros((0, 2))}, lambda p: jnp.sum(p["e"])
        grad_fun = lambda p: {"e": jnp.zeros((0, 2))}  # noqa: E731
    elif inputs == "int_leaf":
        params = {"p": params, "n": jnp.arange(3)}
    elif inputs.startswith("fun_"):
        wrap = {
            "fun_tuple": lambda v: (v, v),
            "fun_dict": lambda v: {"loss": v},
            "fun_complex": lambda v: v + 1j,
            "fun_int": lambda v: v.astype(jnp.int32),
            "fun_vector": lambda v: jnp.stack([v, v]),
            "fun_none": lambda v: None,
        }[inputs]
        fun = (lambda f: lambda p: wrap(f(p)))(fun)
    elif inputs == "grad_structure":
        grad_fun = lambda p: {"other": grads[0]}  # noqa: E731
    elif inputs == "grad_shape":
        grad_fun = lambda p: tree.unflatten([g.ravel()[None] for g in grads])  # noqa: E731
    elif inputs == "grad_aux":
        grad_fun = lambda p: (tree.unflatten(grads), "aux")  # noqa: E731
    elif inputs == "grad_nan":
        grad_fun = lambda p: tree.unflatten([g * jnp.nan for g in grads])  # noqa: E731
    elif inputs == "grad_none":
        grad_fun = lambda p: None  # noqa: E731
    return fun, grad_fun, params


def _raised_in_jaxbp(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is jaxbp's own code."""
    frames = traceback.extract_tb(error.__traceback__)
    package = pathlib.Path(jaxbp.__file__).resolve().parent
    return (
        bool(frames) and package in pathlib.Path(frames[-1].filename).resolve().parents
    )


def option_case_holds(case) -> dict:
    """Runs one options-and-inputs case: a report, or a ValueError/TypeError of
    jaxbp's own; a PASS checks every coordinate against jax.grad and something
    against finite differences; no NumPy warning."""
    tree, terms_, options, inputs = case
    with jax.enable_x64(tree.x64):
        params = tree.params()
        grads = smooth_grads(tree, terms_, params)
        fun, grad_fun, params = _corrupt(inputs, tree, terms_, params, grads)
    if options.get("has_aux"):
        fun = (lambda f: lambda p: (f(p), {"aux": 1.0}))(fun)
        grad_fun = (lambda g: lambda p: (g(p), None))(grad_fun)
    why, outcome = [], "report"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = jaxbp.check_grad(fun, grad_fun, params, **options)
    except (ValueError, TypeError) as e:
        outcome = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if not _raised_in_jaxbp(e):
            where = traceback.extract_tb(e.__traceback__)[-1]
            why.append(f"{outcome} raised in {where.filename}:{where.lineno}")
    except Exception as e:  # noqa: BLE001 - any other error is a failure of the property
        where = traceback.extract_tb(e.__traceback__)[-1]
        outcome = f"{type(e).__name__}: {e}"
        why.append(f"{outcome} raised in {where.filename}:{where.lineno}")
    else:
        if report.passed:
            first = report.comparisons[0]
            if any(leaf.checked != leaf.size for leaf in first.leaves):
                why.append("a PASS without every coordinate against jax.grad")
            for c in report.comparisons[1:3]:
                if not any(leaf.checked for leaf in c.leaves):
                    why.append("a PASS with no finite difference checked")
            if inputs in ("grad_nan",):
                why.append("a NaN gradient passed")
        elif inputs == "fine" and not set(options) & {"fd_step", "rtol", "fd_safety"}:
            why.append("a correct gradient failed")
    return {
        "options": {k: repr(v) for k, v in options.items()},
        "inputs": inputs,
        "outcome": outcome
        if outcome != "report"
        else ("PASS" if report.passed else "FAIL"),
        "ok": not why,
        "why": "; ".join(why),
    }


# ------------------------------------------------------------------ the run
def run_property(strategy, holds, count: int, seed: int, records: list) -> None:
    """Runs ``holds`` on ``count`` cases drawn from ``strategy``; appends records.

    A case whose property fails, or that raises, is recorded (``ok`` false) and the
    run goes on (no shrinking: the record holds the case's report).
    """

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case):
        try:
            records.append(holds(case))
        except Exception:  # noqa: BLE001 - recorded as a case that did not hold
            records.append({"ok": False, "why": f"{case!r}\n{traceback.format_exc()}"})

    run()


def summarise(bugs: list, kinks: list, options: list, sweep: list) -> dict:
    """Counts, and per dtype the smallest relative bug caught and largest passed."""
    swept = {}
    for r in sweep:
        d = swept.setdefault(r["dtype"], {"min_caught": None, "max_passed": None,
                                          "min_caught_by_fd": None})  # fmt: skip
        for path, rel in r.get("rel", {}).items():
            if path in r["named"]:
                d["min_caught"] = min(rel, d["min_caught"] or math.inf)
            else:
                d["max_passed"] = max(rel, d["max_passed"] or 0.0)
            if path in r["fd_failing"]:
                d["min_caught_by_fd"] = min(rel, d["min_caught_by_fd"] or math.inf)
    per_dtype = {}
    for r in bugs:
        for path, rel in r.get("rel", {}).items():
            d = per_dtype.setdefault(
                r["dtype"],
                {"bugs": 0, "caught": 0, "min_caught": None, "max_passed": None,
                 "min_caught_by_fd": None},
            )  # fmt: skip
            d["bugs"] += 1
            if path in r["named"]:
                d["caught"] += 1
                d["min_caught"] = min(rel, d["min_caught"] or math.inf)
            else:
                d["max_passed"] = max(rel, d["max_passed"] or 0.0)
            if path in r["fd_failing"]:
                d["min_caught_by_fd"] = min(rel, d["min_caught_by_fd"] or math.inf)
    return {
        "cases": len(bugs) + len(kinks) + len(options) + len(sweep),
        "held": sum(r["ok"] for r in bugs + kinks + options + sweep),
        "sweep": {
            "cases": len(sweep),
            "held": sum(r["ok"] for r in sweep),
            "per_dtype": dict(sorted(swept.items())),
        },
        "bugs": {
            "cases": len(bugs),
            "correct": sum(r.get("bug") == "none" for r in bugs),
            "held": sum(r["ok"] for r in bugs),
            "per_dtype": dict(sorted(per_dtype.items())),
        },
        "kinks": {
            "cases": len(kinks),
            "valid": sum(r["valid_expected"] for r in kinks),
            "valid_passed": sum(r["valid_expected"] and r["passed"] for r in kinks),
            "opposite_curvature_overlapping": sum(
                r["how"] == "valid" and not r["valid_expected"] for r in kinks
            ),
            "invalid": sum(r["how"] != "valid" for r in kinks),
            "invalid_failed": sum(
                r["how"] != "valid" and not r["passed"] for r in kinks
            ),
            "with_pair_tables": sum(r["pairs_tested"] for r in kinks),
            "held": sum(r["ok"] for r in kinks),
        },
        "options": {
            "cases": len(options),
            "errors": sum(
                not r["outcome"].startswith(("PASS", "FAIL")) for r in options
            ),
            "held": sum(r["ok"] for r in options),
        },
        "failures": [r for r in bugs + kinks + options + sweep if not r["ok"]][:20],
    }


def main(argv=None) -> int:
    import _common

    parser = _common.make_parser(__doc__)
    parser.add_argument(
        "--seed", type=int, default=0, help="Hypothesis seed (default 0)"
    )
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else FULL
    records = {name: [] for name in (*counts, "sweep")}
    t0, cpu0 = time.perf_counter(), time.process_time()
    with _common.OtherLoad() as load:
        run_property(
            bug_cases(), bug_case_holds, counts["bugs"], args.seed, records["bugs"]
        )
        run_property(kink_cases(), kink_case_holds, counts["kinks"], args.seed,
                     records["kinks"])  # fmt: skip
        run_property(option_cases(), option_case_holds, counts["options"], args.seed,
                     records["options"])  # fmt: skip
        records["sweep"] = [bug_case_holds(c) for c in sweep_cases(args.quick)]
    summary = summarise(*(records[k] for k in ("bugs", "kinks", "options", "sweep")))
    summary["wall_s"] = time.perf_counter() - t0
    summary["cpu_s"] = time.process_time() - cpu0
    summary["other_load_cores"] = load.cores
    path = _common.write_json(
        args.out / "gradcheck_campaign.json",
        {
            "command": _common.command_line(__file__, argv),
            "quick": args.quick,
            "seed": args.seed,
            **summary,
            "environment": _common.environment(counts=counts),
        },
    )
    print(
        f"{summary['cases']} cases, {summary['held']} held "
        f"(bugs {summary['bugs']['held']}/{summary['bugs']['cases']}, kinks "
        f"{summary['kinks']['held']}/{summary['kinks']['cases']}, options "
        f"{summary['options']['held']}/{summary['options']['cases']}) in "
        f"{summary['wall_s']:.0f} s; wrote {path}"
    )
    for dtype, d in summary["sweep"]["per_dtype"].items():
        print(
            f"  sweep {dtype}: smallest relative bug caught {d['min_caught']}, largest "
            f"passed {d['max_passed']}; by finite differences {d['min_caught_by_fd']}"
        )
    for r in summary["failures"]:
        print("FAILED:", r["why"].splitlines()[0] if r["why"] else r)
    return 0 if summary["held"] == summary["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
