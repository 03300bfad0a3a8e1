"""Finite differences that know their own error: steps, error budgets and kinks.

For one probe, a coordinate ``e_i`` or a direction ``v`` of one parameter leaf, the
function is evaluated at ``p`` and at ``p + t v`` for the four offsets
``t = +h, -h, +2h, -2h`` (rounded to the points the dtype can hold; the quotients divide
by the offsets actually taken). From those five values:

.. math::

   c_h = \\frac{f(p + h v) - f(p - h v)}{2h}, \\qquad
   c_{2h} = \\frac{f(p + 2h v) - f(p - 2h v)}{4h},

the central quotients, whose error is rounding plus truncation:

* **rounding**: each value carries a noise ``delta_f`` (a few ulps of ``|f|``, or more
  when ``f`` sums many terms), so ``c_h`` carries about ``delta_f / h``. ``delta_f``
  is estimated from the data themselves (after Moré & Wild, 2011): the fourth
  difference ``D4 = f(2h) - 4 f(h) + 6 f(0) - 4 f(-h) + f(-2h)`` of a smooth function is
  ``h^4 f'''' + noise``, and the noise of ``D4`` is ``sqrt(70)`` times that of ``f``
  (:func:`noise_level`, which also guards against kinks).
* **truncation**: ``c_h = f' + h^2 f'''/6 + O(h^4)`` and ``c_{2h} = f' + 4 h^2 f'''/6
  + O(h^4)``, so ``|c_{2h} - c_h| / 3`` estimates the truncation error of ``c_h``. To it
  is added ``|D4| / 4h``: a corner within ``2h`` that the kink test below lets through
  moves ``c_h`` at most that far beyond the first estimate (a corner at distance ``d``
  with a jump ``s`` in slope gives ``D4 = s (3d - 2h)`` and moves ``c_h`` by
  ``s (h - d) / 2h``); for a smooth function it is ``h^3 |f''''| / 4``, negligible.

The step ``h_i = eps^(1/3) max(|p_i|, rms(leaf), eps^(1/3))`` (1 stands in for the rms
of a leaf of zeros) balances the two (rounding ``eps |f| / h`` against truncation
``h^2 |f'''|`` for a function that varies on the scale of its parameters); the floor
keeps a leaf of tiny values (``1e-150``) from getting a step too small to move ``f``.

**Kinks.** The one-sided quotients ``(f(p + t v) - f(p)) / t`` bracket the derivative.
A corner at ``p`` makes ``D4`` large and of the sign opposite to the second difference
``E2 = f(h) + f(-h) - 2 f(p)`` (``|t|``: ``D4 = -2 E2``), while a smooth function has
``D4 = h^4 f''''``, about ``h^2 |f''''/f''|`` times ``E2``. A probe whose ``D4`` is far
above the noise, of the sign opposite to ``E2`` and at least :data:`KINK_REL` times its
size is marked *not smooth*, and the judge (:mod:`jaxbp.gradcheck`) accepts a value
inside the bracket (between the one-sided derivatives along that probe) instead of
comparing it with ``c_h``. A smooth function where it is small (``sin`` at 0, whose
rounding noise is tiny) is not mistaken for a kink.

Every value is a real evaluation of the function (no forward-mode derivatives): the
probes of one leaf are evaluated ``chunk`` at a time under ``vmap`` inside one compiled
``lax.map``, with the other leaves unbatched, so work that does not depend on the
perturbed leaf is not repeated per probe.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: The offsets, in steps, at which every probe evaluates the function.
OFFSETS = (1.0, -1.0, 2.0, -2.0)
#: A probe is not smooth when ``|D4|`` exceeds this many times the noise ``delta_f``
#: (pure noise gives ``|D4|`` about ``sqrt(70) / 3 = 2.8`` times ``delta_f``) ...
KINK_D4 = 20.0
#: ... and ``D4`` is of the sign opposite to ``E2`` and at least this many times its
#: size (a corner at ``p`` gives 2; a smooth function ``h^2 |f''''/f''|``, ~1e-10).
KINK_REL = 0.1


class Quotients(NamedTuple):
    """The difference quotients of ``n`` probes of one leaf, with their error budget.

    Attributes:
      central: ``c_h``, ``(n,)``.
      central2: ``c_{2h}``, ``(n,)``.
      one_sided: ``(n, 4)``: forward and backward at ``h``, forward and backward at
        ``2h``.
      step: ``h`` of each probe, ``(n,)``.
      rounding: rounding error of ``c_h``, about ``delta_f / h``, ``(n,)``.
      truncation: ``|c_{2h} - c_h| / 3 + |D4| / 4h``, ``(n,)``.
      smooth: whether the function looks smooth within ``2h`` of ``p``, ``(n,)``.
      noise: ``delta_f``, the estimated noise of one evaluation.
    """

    central: np.ndarray
    central2: np.ndarray
    one_sided: np.ndarray
    step: np.ndarray
    rounding: np.ndarray
    truncation: np.ndarray
    smooth: np.ndarray
    noise: float

    @property
    def bracket(self) -> tuple[np.ndarray, np.ndarray]:
        """The interval of subgradients the one-sided quotients allow, ``(n,)`` each.

        A one-sided quotient is the one-sided derivative plus ``+-h f''/2``; the
        extrapolations ``2 q_h - q_{2h}`` remove that first-order term. The bracket
        spans the one-sided quotients at ``h`` and ``2h``, their extrapolations and the
        central quotients.
        """
        q = self.one_sided
        extrapolated = 2 * q[:, :2] - q[:, 2:]
        every = np.concatenate(
            [q, extrapolated, self.central[:, None], self.central2[:, None]], axis=1
        )
        return every.min(axis=1), every.max(axis=1)

    @property
    def jump(self) -> np.ndarray:
        """``f'(p; v) + f'(p; -v)``, forward minus backward derivative, ``(n,)``.

        From the extrapolated one-sided quotients: about 0 where the function is
        smooth, the jump in slope across a kink (positive where it is convex).
        """
        q = self.one_sided
        return (2 * q[:, 0] - q[:, 2]) - (2 * q[:, 1] - q[:, 3])


def machine_eps(dtype) -> float:
    """Machine epsilon of a float dtype (bfloat16 and float16 included)."""
    return float(jnp.finfo(jnp.dtype(dtype)).eps)


def step_scale(leaf: np.ndarray, dtype) -> np.ndarray:
    """The scale of each entry, ``max(|p_i|, rms(leaf), eps^(1/3))``, flat, float64.

    1 stands in for the rms of a leaf of zeros, which has no scale of its own; the
    floor ``eps^(1/3)`` keeps the step ``eps^(1/3)`` times the scale large enough to
    move the function (see the module docstring).
    """
    flat = np.abs(np.asarray(leaf, np.float64).ravel())
    top = float(flat.max(initial=0.0))
    # rms as top * rms(flat / top), so that squares of 1e-200 do not underflow to 0
    rms = top * float(np.sqrt(np.mean((flat / top) ** 2))) if top > 0 else 1.0
    return np.maximum(flat, max(rms, machine_eps(dtype) ** (1 / 3)))


def default_steps(leaf: np.ndarray, dtype) -> np.ndarray:
    """``h_i = eps^(1/3) max(|p_i|, rms(leaf), eps^(1/3))`` per entry, flat.

    Args:
      leaf: the parameter leaf, any shape.
      dtype: the dtype the function is evaluated in.

    Returns:
      Steps shaped ``(leaf.size,)``, float64: ``eps^(1/3)`` times
      :func:`step_scale`.
    """
    return machine_eps(dtype) ** (1 / 3) * step_scale(leaf, dtype)


class Samples(NamedTuple):
    """The function's values at the probes of one leaf.

    Attributes:
      f0: ``f(p)``.
      values: ``(n, 4)``, ``f`` at the offsets of :data:`OFFSETS` times each step.
      offsets: ``(n, 4)``, the offsets actually taken (after rounding the points).
    """

    f0: float
    values: np.ndarray
    offsets: np.ndarray

    @property
    def d4(self) -> np.ndarray:
        """The fourth differences ``f(2h) - 4 f(h) + 6 f(0) - 4 f(-h) + f(-2h)``."""
        f = self.values
        return f[:, 2] - 4 * f[:, 0] + 6 * self.f0 - 4 * f[:, 1] + f[:, 3]

    @property
    def e2(self) -> np.ndarray:
        """The even second differences ``f(h) + f(-h) - 2 f(0)``."""
        f = self.values
        return f[:, 0] + f[:, 1] - 2 * self.f0

    @property
    def odd(self) -> np.ndarray:
        """The odd third differences ``f(2h) - f(-2h) - 2 (f(h) - f(-h))``."""
        f = self.values
        return f[:, 2] - f[:, 3] - 2 * (f[:, 0] - f[:, 1])


def noise_level(samples: list[Samples], eps: float, inputs=None) -> float:
    """``delta_f``: the noise of one evaluation, from all probes of a check at once.

    Two differences of the five values of a probe are noise plus a term far below it
    for a smooth function at the default step: ``D4`` (plus ``h^4 f''''``; its noise is
    ``sqrt(70) s`` for noise of standard deviation ``s``) and the odd third difference
    ``E = f(2h) - f(-2h) - 2 (f(h) - f(-h))`` (plus ``2 h^3 f'''``; noise
    ``sqrt(10) s``). A kink at ``p`` itself inflates ``D4`` but not ``E``, so each probe
    offers ``min(|D4| / sqrt(70), |E| / sqrt(10))``, and ``delta_f`` is the larger of
    4 times the median of those over every probe of every leaf and ``4 eps`` times the
    size of what ``f`` sums: ``|f|``, and the largest ``|df/dp_i| |p_i|`` over the
    coordinates probed (terms of that size that cancel, as in ``-|a . p + c|`` at
    ``a . p = -c``, leave their rounding in a small ``f``; where the arithmetic is
    exact, dyadic values, the median misses it).

    Args:
      samples: the values at the probes of every leaf.
      eps: machine epsilon of the evaluation.
      inputs: optionally, for each of ``samples``, ``|p_i|`` of the coordinate that
        each probe moves, ``(n,)``; ``None`` for a leaf probed along directions.
    """
    if samples:
        per_probe = np.concatenate(
            [
                np.minimum(np.abs(s.d4) / math.sqrt(70), np.abs(s.odd) / math.sqrt(10))
                for s in samples
            ]
        )
    else:
        per_probe = np.zeros(0)
    scale = max(
        (max(abs(s.f0), float(np.max(np.abs(s.values), initial=0.0))) for s in samples),
        default=0.0,
    )
    for s, p in zip(samples, inputs or [None] * len(samples), strict=True):
        if p is not None and np.size(p):
            with np.errstate(divide="ignore", invalid="ignore"):
                slope = np.max(np.abs((s.values - s.f0) / s.offsets), axis=1)
            scale = max(scale, float(np.max(np.nan_to_num(slope) * np.abs(p))))
    estimate = 4 * float(np.median(per_probe)) if per_probe.size else 0.0
    return max(4 * eps * scale, estimate, float(np.finfo(np.float64).tiny))


def quotients(samples: Samples, noise: float) -> Quotients:
    """Quotients and error budget of one leaf's probes.

    Args:
      samples: the values at the probes.
      noise: ``delta_f`` from :func:`noise_level`.

    Returns:
      :class:`Quotients`.

    Examples:
      ``|x|`` at its corner: not smooth, any slope in ``[-1, 1]`` is a subgradient.

      >>> import numpy as np
      >>> t = 1e-3 * np.array([OFFSETS])
      >>> s = Samples(0.0, np.abs(t), t)
      >>> q = quotients(s, noise_level([s], 2.2e-16))
      >>> bool(q.smooth[0]), [float(b[0]) for b in q.bracket]
      (False, [-1.0, 1.0])
      >>> s = Samples(0.0, 3 * t + t**2, t)  # smooth: 3x + x^2
      >>> q = quotients(s, noise_level([s], 2.2e-16))
      >>> bool(q.smooth[0]), round(float(q.central[0]), 9)
      (True, 3.0)
    """
    f, t, f0 = samples.values, samples.offsets, samples.f0
    with np.errstate(divide="ignore", invalid="ignore"):
        central = (f[:, 0] - f[:, 1]) / (t[:, 0] - t[:, 1])
        central2 = (f[:, 2] - f[:, 3]) / (t[:, 2] - t[:, 3])
        one_sided = (f - f0) / t
    step = t[:, 0]
    rounding = noise / np.abs(step)
    d4, e2 = samples.d4, samples.e2
    truncation = np.abs(central2 - central) / 3 + np.abs(d4) / (4 * np.abs(step))
    corner = (np.abs(d4) > KINK_D4 * noise) & (d4 * e2 < 0)
    smooth = ~(corner & (np.abs(d4) >= KINK_REL * np.abs(e2)))
    return Quotients(
        central, central2, one_sided, step, rounding, truncation, smooth, noise
    )


# ------------------------------------------------------------------- evaluators
# An evaluator is a traceable ``(leaves, args, *probe_arrays) -> (n,)`` for one leaf;
# :func:`evaluate_all` runs the evaluators of every leaf in one compiled program.


def chunked_map(f: Callable, xs, chunk: int):
    """``f`` over the leading axis of ``xs``: one ``vmap`` if it holds at most
    ``chunk`` entries, else ``lax.map`` with ``chunk`` entries per ``vmap``."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if n <= chunk:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=chunk)


def coordinate_evaluator(fun: Callable, treedef, k: int, chunk: int) -> Callable:
    """``(leaves, args, idx, values, deltas) -> f``: entries of leaf ``k`` replaced.

    Probe ``j`` sets the flat entry ``idx[j]`` of leaf ``k`` to ``values[j]``
    (``deltas[j]`` is that value minus the current one, unused here) and evaluates
    ``fun(params, *args)``; ``chunk`` probes at a time under ``vmap`` (``lax.map``).
    The other leaves are not batched, so work that depends on them alone is not
    repeated per probe.
    """

    def one(leaves, args, i, value):
        new = list(leaves)
        new[k] = leaves[k].ravel().at[i].set(value).reshape(leaves[k].shape)
        return fun(jax.tree.unflatten(treedef, new), *args)

    def run(leaves, args, idx, values, deltas):
        del deltas
        return chunked_map(lambda iv: one(leaves, args, *iv), (idx, values), chunk)

    return run


def leaf_evaluator(fun: Callable, treedef, k: int, chunk: int) -> Callable:
    """``(leaves, args, points) -> f``: leaf ``k`` replaced by each of ``points``.

    ``points`` is ``(n, *leaf.shape)``; ``chunk`` of them at a time under ``vmap``.
    """

    def one(leaves, args, point):
        new = list(leaves)
        new[k] = point
        return fun(jax.tree.unflatten(treedef, new), *args)

    def run(leaves, args, points):
        return chunked_map(lambda pt: one(leaves, args, pt), points, chunk)

    return run


def entries_evaluator(fun: Callable, treedef, chunk: int) -> Callable:
    """``(leaves, args, ids, idx, values) -> f``: a few entries of any leaves replaced.

    Probe ``j`` sets the flat entry ``idx[j, m]`` of leaf ``ids[j, m]`` to
    ``values[j, m]`` for every ``m`` (a direction that moves a few entries, possibly of
    different leaves) and evaluates ``fun(params, *args)``; ``chunk`` probes at a time
    under ``vmap``.
    """

    def one(leaves, args, ids, idx, values):
        new = []
        for k, leaf in enumerate(leaves):
            flat = leaf.ravel()
            at = jnp.where(ids == k, idx, flat.size)  # out of range: dropped
            flat = flat.at[at].set(values.astype(flat.dtype), mode="drop")
            new.append(flat.reshape(leaf.shape))
        return fun(jax.tree.unflatten(treedef, new), *args)

    def run(leaves, args, ids, idx, values):
        return chunked_map(lambda x: one(leaves, args, *x), (ids, idx, values), chunk)

    return run


def evaluate_all(evaluators: list, leaves: list, args: tuple, inputs: list) -> list:
    """Runs ``evaluators[k](leaves, args, *inputs[k])`` for every ``k``, compiled once.

    Each probe count is padded (repeating the first probe) to a multiple of
    :data:`PAD`, so that ``lax.map`` needs no second program for a remainder; the
    padding is cut off the results.

    Returns:
      One float64 NumPy array of values per evaluator.
    """
    sizes = [x[0].shape[0] for x in inputs]
    padded = [
        tuple(np.concatenate([a, np.repeat(a[:1], -n % PAD, axis=0)]) for a in x)
        for x, n in zip(inputs, sizes, strict=True)
    ]

    @jax.jit
    def run(leaves, args, padded):
        return [ev(leaves, args, *x) for ev, x in zip(evaluators, padded, strict=True)]

    out = run(leaves, args, jax.tree.map(jnp.asarray, padded))
    return [np.asarray(o, np.float64)[:n] for o, n in zip(out, sizes, strict=True)]


# ------------------------------------------------------------------- probes
#: Probe counts are padded up to a multiple of this (see :func:`evaluate_all`).
PAD = 64


def coordinate_probes(leaf: np.ndarray, idx: np.ndarray, dtype, *, step=None):
    """The perturbed entries that probe the coordinates ``idx`` of one leaf.

    Args:
      leaf: the leaf, in the dtype of the evaluation.
      idx: flat indices to probe, ``(n,)``, at least one.
      dtype: the dtype of the evaluation.
      step: a fixed ``h``; default :func:`default_steps`.

    Returns:
      ``(inputs, offsets)``: ``inputs = (idx, values, deltas)`` for a
      :func:`coordinate_evaluator`, ``1 + 4n`` probes (``f(p)`` first, then the
      offsets of :data:`OFFSETS` for each coordinate); ``offsets`` ``(n, 4)`` are the
      offsets actually taken, after rounding the points to ``dtype``.
    """
    dtype = np.dtype(dtype)
    base = np.asarray(leaf, dtype).ravel()[idx]
    h = default_steps(leaf, dtype)[idx] if step is None else np.full(idx.size, step)
    points = (base[:, None].astype(np.float64) + h[:, None] * np.array(OFFSETS)).astype(
        dtype
    )
    offsets = points.astype(np.float64) - base[:, None].astype(np.float64)
    inputs = (
        np.concatenate([idx[:1], np.repeat(idx, len(OFFSETS))]),
        np.concatenate([base[:1], points.ravel()]),
        np.concatenate([np.zeros(1, dtype), offsets.ravel().astype(dtype)]),
    )
    return inputs, offsets


def random_directions(leaf: np.ndarray, count: int, rng, dtype) -> np.ndarray:
    """``count`` random directions for one leaf, ``(count, size)``, float64.

    Entry ``i`` is ``+-scale_i / sqrt(size)`` (:func:`step_scale` in ``dtype``, the
    dtype of the evaluation) with a random sign, so a step ``h`` along a direction
    moves every entry by ``h / sqrt(size)`` of its own scale.
    """
    scale = step_scale(leaf, dtype) / math.sqrt(max(np.size(leaf), 1))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(count, np.size(leaf)))
    return signs * scale


def direction_probes(leaf: np.ndarray, directions: np.ndarray, dtype, *, step=None):
    """The perturbed leaves that probe ``directions`` of one leaf.

    Args:
      leaf: the leaf, in the dtype of the evaluation.
      directions: ``(m, size)`` from :func:`random_directions`.
      dtype: the dtype of the evaluation.
      step: a fixed ``h``; default ``eps^(1/3)``.

    Returns:
      ``(inputs, offsets, effective)``: ``inputs = (points,)`` for a
      :func:`leaf_evaluator`, ``1 + 4m`` leaves (``p`` first); ``offsets`` ``(m, 4)``;
      ``effective`` ``(m, size)``, the directions actually taken
      (``(p_{+h} - p_{-h}) / 2h`` of the rounded points), so that ``effective @ g``
      is what the central quotient estimates.
    """
    dtype = np.dtype(dtype)
    base = np.asarray(leaf, dtype).ravel()
    h = machine_eps(dtype) ** (1 / 3) if step is None else step
    t = h * np.array(OFFSETS)
    points = (
        base.astype(np.float64)[None, None, :]
        + t[None, :, None] * directions[:, None, :]
    ).astype(dtype)
    moved = points.astype(np.float64) - base.astype(np.float64)
    effective = (moved[:, 0] - moved[:, 1]) / (2 * h)
    stacked = np.concatenate([base[None], points.reshape(-1, base.size)])
    offsets = np.broadcast_to(t, (directions.shape[0], len(OFFSETS)))
    return (stacked.reshape(-1, *np.shape(leaf)),), offsets, effective


def entries_probes(leaves: list, ids, idx, moves, dtype):
    """The perturbed entries that probe directions moving a few entries each.

    Args:
      leaves: every leaf, in the dtype of the evaluation.
      ids, idx: ``(n, m)`` ints: direction ``j`` moves the flat entry ``idx[j, m]`` of
        leaf ``ids[j, m]``.
      moves: ``(n, m)``: by ``t * moves[j, m]`` for the offsets ``t`` of
        :data:`OFFSETS` (a step of 1 along the direction ``moves[j]``).
      dtype: the dtype of the evaluation.

    Returns:
      ``(inputs, offsets, effective)``: ``inputs = (ids, idx, values)`` for an
      :func:`entries_evaluator`, ``1 + 4n`` probes (``f(p)`` first); ``offsets``
      ``(n, 4)``, the ``t`` of each; ``effective`` ``(n, m)``, the moves actually
      taken (``(p_{+1} - p_{-1}) / 2`` of the rounded points).
    """
    dtype = np.dtype(dtype)
    flats = [np.asarray(leaf, dtype).ravel() for leaf in leaves]
    base = np.array(
        [
            [flats[k][i] for k, i in zip(kr, ir, strict=True)]
            for kr, ir in zip(ids, idx, strict=True)
        ],
        dtype,
    ).reshape(ids.shape)
    t = np.array(OFFSETS)
    points = (
        base.astype(np.float64)[:, None, :] + t[None, :, None] * moves[:, None, :]
    ).astype(dtype)
    moved = points.astype(np.float64) - base.astype(np.float64)[:, None, :]
    effective = (moved[:, 0] - moved[:, 1]) / 2
    m = ids.shape[1]
    inputs = (
        np.concatenate([ids[:1], np.repeat(ids, len(OFFSETS), axis=0)]),
        np.concatenate([idx[:1], np.repeat(idx, len(OFFSETS), axis=0)]),
        np.concatenate([base[:1], points.reshape(-1, m)]),
    )
    offsets = np.broadcast_to(t, (ids.shape[0], len(OFFSETS)))
    return inputs, offsets, effective


def samples_from(values: np.ndarray, offsets: np.ndarray) -> Samples:
    """:class:`Samples` from the values of ``1 + 4n`` probes (``f(p)`` first)."""
    return Samples(float(values[0]), values[1:].reshape(-1, len(OFFSETS)), offsets)
