"""What the user hands the gradient checker, checked, with errors that name the leaf.

The checks behind :func:`jaxbp.gradcheck.check_grad` and
:func:`jaxbp.gradcheck.compare_grads`: ``params`` is a pytree of floating-point
arrays; a ``grad_fun`` returns a pytree of the same structure and shapes; ``fun``
returns a scalar; a ``dtype`` names a floating dtype. A user's mistake is a
``ValueError`` or ``TypeError`` naming the leaf by its key path, not a traceback from
inside JAX. Also the casts and conversions the checker applies to what it is given.
"""

import jax
import jax.numpy as jnp
import numpy as np

#: The dtypes whose gradients can be checked.
_FLOATS = ("float16", "bfloat16", "float32", "float64")


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


def _paths(tree) -> list[str]:
    """The key paths of the leaves of ``tree`` (``jax.tree_util.keystr``)."""
    return [
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
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


def check_params(params) -> list[str]:
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


def check_scalar(value, what="fun") -> None:
    """Raises ``ValueError`` unless ``value`` (what ``what`` returned) is a scalar."""
    if jnp.shape(value) != ():
        raise ValueError(
            f"{what} must return a scalar, got shape {jnp.shape(value)}; reduce it "
            "(e.g. with a mean over the batch) before checking its gradient"
        )
