"""Check a hand-derived Hessian-vector product of any function of any pytree.

:func:`check_hvp` takes ``fun(params, *args) -> scalar``, the user's
``hvp_fun(params, v, *args) -> pytree like params`` and a direction ``v``, and makes
three comparisons, each a per-leaf table of :mod:`jaxbp.gradcheck.report` (the same
rows, columns and verdicts as :func:`~jaxbp.check_grad`'s):

1. ``hvp_fun`` against ``jax.jvp(jax.grad(fun))`` (forward over reverse), entry by
   entry, in the dtype asked for, by the rule of gradient against gradient
   (:func:`~jaxbp.gradcheck.compare_grads`, ``rtol`` by dtype);
2. ``hvp_fun`` against central finite differences of ``jax.grad(fun)`` along ``v``
   (float64 by default),

   .. math::

      c_h = \\frac{\\nabla f(p + h v) - \\nabla f(p - h v)}{2h} = H v + O(h^2);

3. ``jax.jvp(jax.grad(fun))`` against the same finite differences, which shows
   whether a failure is the user's or the check's.

**The error budget of a difference quotient of gradients.** Entry ``i`` of ``c_h``
carries truncation, estimated from the quotient at twice the step as
``|c_{2h} - c_h| / 3`` (``c_h = Hv + h^2 t``, ``c_{2h} = Hv + 4 h^2 t``), and rounding:
each gradient entry is a sum of terms as large as the largest gradient entry ``G``,
so it carries about ``eps G`` and ``c_h`` about ``eps G / h``. An entry passes when

.. math::

   |u_i - c_{h,i}| \\le S\\, \\frac{\\epsilon\\, G}{h}
   + 3\\, \\frac{|c_{2h,i} - c_{h,i}|}{3}
   + \\text{rtol} \\cdot \\max(|u_i|, |c_{h,i}|, \\text{tiny}),

``S = fd_safety`` (10), ``rtol`` and ``tiny`` those of comparison 1 in the dtype of
``u``. The step is ``h = eps^(1/3) max(rms(p), 1) / rms(v)`` in ``fd_dtype``, which
balances rounding against truncation for a function that varies on the scale of its
parameters. Where the gradient has a kink within ``2h`` (a ReLU changing sides), the
truncation estimate grows with the jump and the budget with it; such a probe checks
little, and a ReLU network is better checked at a point away from its kinks.

The classic mistakes fail all three ways (``tests/test_curvature_check.py``): the
activations' ``f''`` term left out (which gives the Gauss-Newton product), the
softmax's coupling dropped from the cross-entropy's Hessian (``diag(p)`` for
``diag(p) - p p^T``), a missing ``1/B``; the report names the leaves.
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np

from jaxbp import finite_differences as fdiff
from jaxbp.gradcheck.check import FD_SAFETY, failing_paths
from jaxbp.gradcheck.inputs import (
    as_float64,
    cast_floats,
    check_like,
    check_params,
    dtype_of,
    resolve_dtype,
)
from jaxbp.gradcheck.report import (
    FD_NAME,
    Comparison,
    GradCheckReport,
    compare_grads,
    default_tiny,
    grad_rtol,
    leaf_error,
)

#: The name of forward-over-reverse autodiff in a report.
AUTO_HVP_NAME = "jax.jvp(jax.grad)"


def _hvp_by_autodiff(fun: Callable) -> Callable:
    """``(params, v, *args) -> H v`` by ``jax.jvp`` of ``jax.grad(fun)``."""

    def hvp(params, v, *args):
        return jax.jvp(lambda p: jax.grad(fun)(p, *args), (params,), (v,))[1]

    return hvp


def _gradients_along(fun: Callable, params, v, args, h: float):
    """``jax.grad(fun)`` at ``p + t h v`` for ``t = 1, -1, 2, -2``, flat per leaf."""
    grad = jax.jit(jax.grad(fun))
    out = []
    for t in (1.0, -1.0, 2.0, -2.0):
        moved = jax.tree.map(lambda p, u, t=t: p + (t * h) * u, params, v)
        out.append([as_float64(g).ravel() for g in jax.tree.leaves(grad(moved, *args))])
    return out


def _against_fd(name, paths, shapes, values, plus, minus, plus2, minus2, *, h, eps,
                grad_scale, dtype, rtol, safety, tree_scale) -> Comparison:  # fmt: skip
    """``values`` (flat per leaf) against ``c_h``, leaf by leaf, with the budget."""
    rows = []
    rounding = safety * eps * grad_scale / h  # S eps G / h
    for k, (path, shape) in enumerate(zip(paths, shapes, strict=True)):
        c_h = (plus[k] - minus[k]) / (2 * h)
        c_2h = (plus2[k] - minus2[k]) / (4 * h)
        truncation = np.abs(c_2h - c_h) / 3
        u = values[k]
        scale = float(np.max(np.abs(c_h), initial=0.0))
        tiny = default_tiny(dtype, scale, tree_scale)
        denom = np.maximum(np.maximum(np.abs(u), np.abs(c_h)), tiny)
        err = np.abs(u - c_h)
        tol = rounding + 3 * truncation + grad_rtol(dtype, rtol) * denom
        with np.errstate(invalid="ignore"):
            rel = err / denom
        rows.append(
            leaf_error(path, shape, "coordinates", err, tol, rel, u, c_h,
                       np.zeros(err.shape, bool), np.arange(err.size),
                       grad_rtol(dtype, rtol))
        )  # fmt: skip
    return Comparison(name, FD_NAME, dtype, tuple(rows))


def check_hvp(
    fun: Callable,
    hvp_fun: Callable,
    params,
    v,
    *args,
    dtype=None,
    fd: bool = True,
    fd_dtype="float64",
    fd_step: float | None = None,
    fd_safety: float = FD_SAFETY,
    rtol: float | None = None,
    name: str = "hvp_fun",
) -> GradCheckReport:
    """Checks a hand-derived Hessian-vector product of any function of any pytree.

    Args:
      fun: ``fun(params, *args) -> scalar``, written in ``jax.numpy``.
      hvp_fun: ``hvp_fun(params, v, *args)``: the Hessian of ``fun`` with respect to
        ``params`` times ``v``, a pytree shaped like ``params``.
      params: any pytree of finite floating-point arrays.
      v: the direction, a pytree shaped like ``params``.
      *args: further arguments of both, held fixed (floating leaves cast with
        ``params``).
      dtype: dtype of comparison 1; default each leaf's own.
      fd: whether to compare with finite differences of ``jax.grad`` (2 and 3).
      fd_dtype: dtype of the finite differences, float64 by default.
      fd_step: the step ``h`` along ``v``; default
        ``eps^(1/3) max(rms(params), 1) / rms(v)``.
      fd_safety: the factor ``S`` on the rounding budget.
      rtol: relative tolerance of comparison 1 (and the ``u`` term of the finite
        differences); default by dtype, ``jaxbp.gradcheck.GRAD_RTOL``.
      name: what to call ``hvp_fun`` in the report.

    Returns:
      A :class:`~jaxbp.GradCheckReport`; ``print`` it for the tables, ``.passed`` is
      the verdict, and a note names the leaves where ``hvp_fun`` is wrong.

    Raises:
      ValueError: naming the leaf, when ``params`` holds a NaN or an infinity, when
        ``v`` or ``hvp_fun``'s result is not shaped like ``params``, or when ``v``
        is zero.
      TypeError: naming the leaf, when a leaf of ``params`` is not floating point.

    Examples:
      >>> import jax.numpy as jnp
      >>> fun = lambda p: jnp.sum(jnp.sin(p["w"]) * p["b"])
      >>> def hvp_fun(p, v):  # grad: {"w": cos(w) b, "b": sin(w)}
      ...     w, b = p["w"], p["b"]
      ...     hv_w = -jnp.sin(w) * b * v["w"] + jnp.cos(w) * v["b"]
      ...     return {"w": hv_w, "b": jnp.cos(w) * v["w"]}
      >>> p = {"w": jnp.array([0.5, 1.0]), "b": jnp.array([2.0, -1.0])}
      >>> check_hvp(fun, hvp_fun, p, {"w": jnp.ones(2), "b": jnp.ones(2)}).passed
      True
    """
    dtype = resolve_dtype(dtype, "dtype")
    fd_dtype = resolve_dtype(fd_dtype, "fd_dtype")
    if not (isinstance(fd_safety, int | float) and fd_safety > 0):
        raise ValueError(f"fd_safety must be a positive number, got {fd_safety!r}")
    paths = check_params(params)
    check_like(params, v, "v")
    shapes = [np.shape(t) for t in jax.tree.leaves(params)]
    leaf_dtypes = [
        dtype or jax.numpy.asarray(t).dtype.name for t in jax.tree.leaves(params)
    ]
    needs64 = "float64" in leaf_dtypes or jax.config.jax_enable_x64
    dtype_name = dtype or dtype_of(jax.tree.leaves(params))
    # --- 1. hvp_fun against jax.jvp(jax.grad(fun)), in the dtype asked for ----------
    with jax.enable_x64(needs64):
        p, u, a = (
            cast_floats(params, dtype),
            cast_floats(v, dtype),
            cast_floats(args, dtype),
        )
        user = hvp_fun(p, u, *a)
        check_like(params, user, name)
        auto = jax.jit(_hvp_by_autodiff(fun))(p, u, *a)
        user_np = [as_float64(t).ravel() for t in jax.tree.leaves(user)]
        auto_np = [as_float64(t).ravel() for t in jax.tree.leaves(auto)]
    tree_scale = max(float(np.max(np.abs(t), initial=0.0)) for t in auto_np)
    tiny = default_tiny(dtype_name, 0.0, tree_scale)
    comparisons = [
        compare_grads(user, auto, names=(name, AUTO_HVP_NAME), rtol=rtol, tiny=tiny)
    ]
    title = (
        f"check_hvp of {getattr(fun, '__name__', 'fun')}: {len(paths)} leaves, "
        f"{sum(math.prod(s) for s in shapes):,} parameters, {dtype_name}"
    )
    # --- 2, 3. both against finite differences of jax.grad along v -----------------
    if fd:
        with jax.enable_x64(fd_dtype == "float64" or jax.config.jax_enable_x64):
            p, u, a = (cast_floats(t, fd_dtype) for t in (params, v, args))
            flat_p = np.concatenate([as_float64(t).ravel() for t in jax.tree.leaves(p)])
            flat_v = np.concatenate([as_float64(t).ravel() for t in jax.tree.leaves(u)])
            rms_v = float(np.sqrt(np.mean(flat_v**2)))
            if rms_v == 0:
                raise ValueError("v is zero: there is no direction to check along")
            eps = fdiff.machine_eps(fd_dtype)
            h = (
                fd_step
                or eps ** (1 / 3) * max(float(np.sqrt(np.mean(flat_p**2))), 1.0) / rms_v
            )
            plus, minus, plus2, minus2 = _gradients_along(fun, p, u, a, h)
        grad_scale = max(float(np.max(np.abs(g), initial=0.0)) for g in (*plus, *minus))
        options = dict(h=h, eps=eps, grad_scale=grad_scale, rtol=rtol,
                       safety=fd_safety, tree_scale=tree_scale)  # fmt: skip
        for label, values, dt in (
            (name, user_np, dtype_name),
            (AUTO_HVP_NAME, auto_np, dtype_name),
        ):
            comparisons.append(
                _against_fd(label, paths, shapes, values, plus, minus, plus2, minus2,
                            dtype=dt, **options)
            )  # fmt: skip
        title += (
            f"; central differences of jax.grad along v in {fd_dtype}, step h = {h:.3g}"
        )
    report = GradCheckReport(title=title, comparisons=tuple(comparisons))
    failing = failing_paths(report, name)
    if failing:
        report = dataclasses.replace(
            report, notes=(f"leaves where {name} is wrong: {', '.join(failing)}",)
        )
    return report


def assert_hvp_matches(fun: Callable, hvp_fun: Callable, params, v, *args, **options):
    """One-line assertion for a test suite: :func:`check_hvp` must pass.

    Raises:
      AssertionError: whose message is the full report, when any comparison fails.
    """
    report = check_hvp(fun, hvp_fun, params, v, *args, **options)
    if not report.passed:
        raise AssertionError(f"Hessian-vector products disagree\n{report}")
