"""Shared test helpers: the autodiff guard and the layer-equivalence harness.

``forbid_autodiff`` replaces every autodiff entry point of JAX by one that raises, so
a test can prove that a manual backward pass never reaches automatic
differentiation. ``layer_vjp_error`` and ``layer_check_grad`` test one layer's
hand-derived backward against ``jax.vjp`` of its own forward and against finite
differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import api as jax_api
from jax._src.interpreters import ad as jax_ad

import jaxbp

_PUBLIC = (
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "linearize",
    "linear_transpose",
    "jacfwd",
    "jacrev",
    "hessian",
    "custom_vjp",
    "custom_jvp",
    "checkpoint",
)
_API = ("grad", "value_and_grad", "vjp", "jvp", "linearize", "_vjp", "_jvp")
# The transformation entry points of jax._src.interpreters.ad: every forward- or
# reverse-mode derivative, whichever public function asked for it, goes through a
# JVPTrace or LinearizeTrace and (for reverse mode) backward_pass.
_AD = (
    "jvp",
    "linearize",
    "linearize_jaxpr",
    "jvp_jaxpr",
    "backward_pass",
    "closed_backward_pass",
    "linear_transpose",
    "vjp",
)


class AutodiffCalled(AssertionError):
    """Raised by a patched autodiff entry point."""


def _forbidden(name):
    def raiser(*args, **kwargs):
        raise AutodiffCalled(f"manual backward pass reached autodiff: {name}")

    return raiser


def forbid_autodiff(monkeypatch) -> list[str]:
    """Replaces every autodiff entry point that can be found by one that raises."""
    patched = []
    for module, prefix, names in (
        (jax, "jax", _PUBLIC),
        (jax_api, "jax._src.api", _API),
        (jax_ad, "jax._src.interpreters.ad", _AD),
        (jax.interpreters.ad, "jax.interpreters.ad", ("jvp", "linearize")),
    ):
        for name in names:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _forbidden(f"{prefix}.{name}"))
                patched.append(f"{prefix}.{name}")
    for cls in (jax_ad.JVPTrace, jax_ad.LinearizeTrace):
        name = f"jax._src.interpreters.ad.{cls.__name__}"
        monkeypatch.setattr(cls, "__init__", _forbidden(name))
        patched.append(name)
    # A function jitted before the patch keeps its compiled trace: clear every cache
    # so that whatever runs next is traced afresh, under the patch.
    jax.clear_caches()
    return patched


# --- one layer against jax.vjp and finite differences -----------------------------
def random_array(shape, dtype, seed):
    """NumPy-drawn normal values (no ``jax.random`` compiles) in ``dtype``."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def layer_setup(layer, batch_shape, dtype, seed=0):
    """``(params, state, x, dy)`` for ``layer`` on an input of ``batch_shape``.

    Parameters come from ``layer.init`` and are then shifted by random noise so that
    no leaf is special (a zero bias, a unit gain); ``dy`` is a random cotangent of the
    output.
    """
    in_shape = tuple(batch_shape[1:])
    params = layer.init(jax.random.key(seed), in_shape, dtype)
    leaves, treedef = jax.tree.flatten(params)
    leaves = [
        leaf + 0.1 * random_array(leaf.shape, dtype, seed + 100 + i)
        for i, leaf in enumerate(leaves)
    ]
    params = jax.tree.unflatten(treedef, leaves)
    state = layer.init_state(in_shape, dtype)
    x = random_array(batch_shape, dtype, seed + 1)
    out_shape = (batch_shape[0], *layer.output_shape(in_shape))
    dy = random_array(out_shape, dtype, seed + 2)
    return params, state, x, dy


def max_rel_error(got, want) -> float:
    """``max |got - want| / max |want|`` over every leaf of two pytrees."""
    g = jax.tree.leaves(got)
    w = jax.tree.leaves(want)
    assert len(g) == len(w), (len(g), len(w))
    err = max(
        (float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, w, strict=True)), default=0.0
    )
    scale = max((float(jnp.max(jnp.abs(b))) for b in w if b.size), default=0.0)
    return err / max(scale, np.finfo(np.float64).tiny)


def layer_vjp_error(layer, batch_shape, dtype, *, train=False, key=None, seed=0):
    """The relative error of ``layer.backward`` against ``jax.vjp`` of its forward.

    Returns:
      ``(error, manual, reference)`` where both are ``(grads, dx)``.
    """
    params, state, x, dy = layer_setup(layer, batch_shape, dtype, seed)

    def forward(p, x):
        return layer.forward(p, x, state=state, key=key, train=train)[0]

    y, cache, _ = layer.forward(params, x, state=state, key=key, train=train)
    manual = layer.backward(params, cache, dy)
    y_ref, vjp = jax.vjp(forward, params, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    reference = vjp(dy)
    for got, want in zip(manual, reference, strict=True):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape)
    return max_rel_error(manual, reference), manual, reference


def layer_check_grad(layer, batch_shape, *, train=False, key=None, seed=0, **kwargs):
    """:func:`jaxbp.check_grad` of ``sum(dy * layer(params, x))`` in float64.

    The function of ``{"params", "x"}`` is checked against ``layer.backward`` (its
    gradient is exactly the vector-Jacobian product with ``dy``) and finite
    differences.
    """
    with jax.enable_x64(True):
        return _layer_check_grad(layer, batch_shape, train, key, seed, **kwargs)


def _layer_check_grad(layer, batch_shape, train, key, seed, **kwargs):
    params, state, x, dy = layer_setup(layer, batch_shape, jnp.float64, seed)

    def fun(p):
        y = layer.forward(p["params"], p["x"], state=state, key=key, train=train)[0]
        return jnp.sum(dy * y)

    def grad_fun(p):
        _, cache, _ = layer.forward(
            p["params"], p["x"], state=state, key=key, train=train
        )
        grads, dx = layer.backward(p["params"], cache, dy)
        return {"params": grads, "x": dx}

    return jaxbp.check_grad(fun, grad_fun, {"params": params, "x": x}, **kwargs)
