"""What the user hands the gradient checker, checked, with errors that name the leaf.

The checks behind :func:`jaxbp.gradcheck.check_grad` and
:func:`jaxbp.gradcheck.compare_grads`, made before any gradient is computed:
``params`` is a pytree of finite floating-point arrays; ``fun`` returns a real
floating-point scalar (or ``(scalar, aux)`` with ``has_aux=True``); a ``grad_fun``
returns a pytree of the same structure and shapes as ``params`` (or ``(grads, aux)``);
a ``dtype`` names a floating dtype; every numeric option is in its range. A user's
mistake is a ``ValueError`` or ``TypeError`` naming the leaf by its key path (a
``params`` that is a single array is named ``params``), or the option, its value and
the values allowed, not a traceback from inside JAX or NumPy. Also the casts and
conversions the checker applies to what it is given.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

#: The dtypes whose gradients can be checked.
_FLOATS = ("float16", "bfloat16", "float32", "float64")
#: The name of a leaf that is the whole of ``params`` (a single array, no container).
ROOT_NAME = "params"


def as_float64(x) -> np.ndarray:
    """``x`` as a float64 NumPy array (bfloat16 and float16 by way of float32)."""
    return (
        np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)
        if jnp.asarray(x).dtype in (jnp.bfloat16, jnp.float16)
        else np.asarray(x, np.float64)
    )


def dtype_of(leaves) -> str:
    """The dtype name shared by all ``leaves``, or ``"mixed"``."""
    names = sorted({jnp.asarray(t).dtype.name for t in leaves})
    return names[0] if len(names) == 1 else "mixed"


def leaf_name(path) -> str:
    """A leaf's key path, as ``jax.tree_util.keystr`` writes it (the root: params)."""
    return jax.tree_util.keystr(path) or ROOT_NAME


def _paths(tree) -> list[str]:
    """The names of the leaves of ``tree`` (:func:`leaf_name`)."""
    return [
        leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def check_like(reference, tree, what: str, label=None) -> list[str]:
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


def check_params(params, label=None) -> list[str]:
    """Checks that every leaf of ``params`` is a finite floating-point array.

    Args:
      params: the point the gradient is checked at, any pytree.
      label: optionally, ``path -> words`` naming a leaf in a message.

    Returns:
      The names of the leaves (:func:`leaf_name`).

    Raises:
      TypeError: naming the first leaf that is not floating point.
      ValueError: if there are no leaves, or naming the first leaf with a NaN or an
        infinity (where, and how many).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if not flat:
        raise ValueError("params has no array leaves: there is nothing to check")
    names = [leaf_name(path) for path, _ in flat]
    for name, (_, leaf) in zip(names, flat, strict=True):
        dtype = jnp.asarray(leaf).dtype
        if dtype.name not in _FLOATS:
            raise TypeError(
                f"params leaf {label(name) if label else name} has dtype {dtype}; "
                f"gradients can be checked for {', '.join(_FLOATS)} leaves only"
            )
    for name, (_, leaf) in zip(names, flat, strict=True):
        values = as_float64(leaf)
        bad = ~np.isfinite(values)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            more = (
                f" ({int(bad.sum())} entries are not finite)" if bad.sum() > 1 else ""
            )
            raise ValueError(
                f"params leaf {label(name) if label else name} is not finite: "
                f"{float(values[where])} at {where}{more}; a gradient can only be "
                "checked at a finite point"
            )
    return names


def resolve_dtype(dtype, what: str):
    """The name of a floating ``dtype`` (``None`` stays ``None``), or ValueError."""
    if dtype is None:
        return None
    try:
        name = jnp.dtype(dtype).name
    except TypeError as e:
        raise ValueError(f"{what} {dtype!r} is not a dtype") from e
    if name not in _FLOATS:
        raise ValueError(f"{what} must be one of {', '.join(_FLOATS)}, got {name}")
    return name


def cast_floats(tree, dtype):
    """Casts every floating leaf of ``tree`` to ``dtype`` (others unchanged)."""
    if dtype is None:
        return jax.tree.map(jnp.asarray, tree)

    def cast(t):
        t = jnp.asarray(t)
        return t.astype(dtype) if jnp.issubdtype(t.dtype, jnp.floating) else t

    return jax.tree.map(cast, tree)


def describe(tree) -> str:
    """What a function returned, in words: ``a tuple of 2 (float32[], float32[3])``."""
    if isinstance(tree, dict):
        return f"a dict with keys {sorted(map(str, tree))}"
    if isinstance(tree, tuple | list):
        kind = "list" if isinstance(tree, list) else "tuple"
        inner = ", ".join(_describe_leaf(t) for t in tree[:4])
        inner += ", ..." if len(tree) > 4 else ""
        named = "" if type(tree) in (tuple, list) else f" ({type(tree).__name__})"
        return f"a {kind}{named} of {len(tree)} ({inner})"
    return _describe_leaf(tree)


def _describe_leaf(x) -> str:
    """``float32[3]`` for an array (or tracer), the type's name otherwise."""
    if isinstance(x, dict | tuple | list):
        return type(x).__name__
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"
    if isinstance(x, bool | numbers.Number):
        return f"a Python {type(x).__name__}"
    return type(x).__name__


def value_of(out, has_aux: bool):
    """The real floating-point scalar ``fun`` returned (``out``, or ``out[0]``).

    Args:
      out: what ``fun`` returned (arrays or tracers).
      has_aux: whether ``fun`` returns ``(value, aux)``, as for ``jax.grad``.

    Returns:
      The scalar.

    Raises:
      ValueError: naming what was returned: a container without ``has_aux`` (or not a
        pair with it), a complex, integer or boolean value, or not a scalar.
    """
    if has_aux:
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise ValueError(
                "has_aux=True: fun must return a pair (value, aux), got "
                f"{describe(out)}"
            )
        out = out[0]
    elif isinstance(out, tuple | list | dict):
        raise ValueError(
            f"fun returned {describe(out)}; the gradient checker needs a real scalar. "
            "If fun returns (value, aux), pass has_aux=True as for jax.grad"
        )
    if not (hasattr(out, "dtype") or isinstance(out, numbers.Number)):
        raise ValueError(f"fun returned {describe(out)}, not a real scalar")
    dtype = jnp.result_type(out)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(
            f"fun returned {_describe_leaf(jnp.asarray(out))}: a complex value has no "
            "gradient here; check a real function of it (e.g. jnp.abs(z) ** 2)"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"fun returned {_describe_leaf(jnp.asarray(out))}: a gradient needs a "
            "floating-point value (an integer or boolean function has none)"
        )
    if jnp.shape(out) != ():
        raise ValueError(
            f"fun must return a scalar, got shape {jnp.shape(out)}; reduce it "
            "(e.g. with a mean over the batch) before checking its gradient"
        )
    return out


def grads_of(out, params, has_aux: bool, what: str, label=None):
    """The gradients ``what`` returned (``out``, or ``out[0]``), shaped like ``params``.

    Raises:
      ValueError: naming the leaves of another structure or shape, or, for a pair
        ``(grads, aux)`` without ``has_aux``, suggesting it.
    """
    if has_aux:
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise ValueError(
                f"has_aux=True: {what} must return a pair (grads, aux), got "
                f"{describe(out)}"
            )
        out = out[0]
    elif (
        isinstance(out, tuple | list)
        and len(out) == 2
        and jax.tree.structure(out) != jax.tree.structure(params)
        and jax.tree.structure(out[0]) == jax.tree.structure(params)
    ):
        raise ValueError(
            f"{what} returned {describe(out)}: gradients shaped like params and "
            "something else; if it returns (grads, aux), pass has_aux=True"
        )
    check_like(params, out, what, label)
    return out


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_options(*, fd_samples, fd_directions, chunk, fd_safety, fd_step, rtol, seed,
                  name) -> None:  # fmt: skip
    """Checks the numeric options of the gradient checker, all at once, first.

    Raises:
      ValueError: ``"<option> must be <the values allowed>, got <value>"``.
    """
    for option, value in (
        ("fd_samples", fd_samples),
        ("fd_directions", fd_directions),
        ("chunk", chunk),
    ):
        if not (_is_int(value) and value >= 1):
            raise ValueError(f"{option} must be an integer >= 1, got {value!r}")
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not (_is_real(fd_safety) and math.isfinite(fd_safety) and fd_safety > 0):
        raise ValueError(f"fd_safety must be a finite number > 0, got {fd_safety!r}")
    if fd_step is not None and not (
        _is_real(fd_step) and math.isfinite(fd_step) and fd_step > 0
    ):
        raise ValueError(
            f"fd_step must be None (a step per entry) or a finite number > 0, got "
            f"{fd_step!r}"
        )
    check_rtol(rtol)
    if not (isinstance(name, str) and name):
        raise ValueError(f"name must be a non-empty string, got {name!r}")


def check_rtol(value, what: str = "rtol") -> None:
    """``rtol`` (or ``tiny``) is ``None`` or a finite number >= 0 (rtol 0: exact)."""
    if value is not None and not (
        _is_real(value) and math.isfinite(value) and value >= 0
    ):
        allowed = (
            "None (the default by dtype) or a finite number >= 0 (0: exact)"
            if what == "rtol"
            else "None or a finite number >= 0"
        )
        raise ValueError(f"{what} must be {allowed}, got {value!r}")
