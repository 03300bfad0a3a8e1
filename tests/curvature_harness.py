"""Shared helpers of the curvature tests: small networks, directions, and the autodiff
references every hand-derived quantity is compared with."""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxbp import MLP, Sequential
from jaxbp.layers import (
    Activation,
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    Reshape,
    Residual,
)

BATCH = 5

#: A convolutional network with every supported layer type: conv, pools (a stride
#: smaller than the window), a residual block, reshaping, smooth activations.
CONV_LAYERS = (
    Reshape((6, 6, 1)),
    Conv2D(3, 2, padding="SAME"),
    Activation("tanh"),
    MaxPool2D(2),
    Residual([Conv2D(3, 2, padding="SAME"), Activation("gelu")]),
    AvgPool2D(2, stride=1),
    Flatten(),
    Dense(4),
    Activation("softplus"),
    Dense(3),
)


def conv_net(objective: str = "softmax_cross_entropy") -> Sequential:
    return Sequential(CONV_LAYERS, input_shape=(36,), objective=objective)


def batch(net, dtype, seed: int = 1):
    """Inputs and targets for ``net``: labels for the cross-entropy, floats else."""
    shape = (BATCH, *net.input_shape) if isinstance(net, Sequential) else None
    if shape is None:
        shape = (BATCH, net.sizes[0])
    k = net.sizes[-1] if isinstance(net, MLP) else net.num_outputs
    x = jax.random.normal(jax.random.key(seed), shape, dtype)
    if net.objective == "softmax_cross_entropy":
        y = jnp.arange(BATCH) % k
    else:
        y = jax.random.normal(jax.random.key(seed + 1), (BATCH, k), dtype)
    return x, y


def random_like(tree, seed: int):
    """A standard-normal pytree shaped like ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    return treedef.unflatten(
        [
            jax.random.normal(k, leaf.shape, leaf.dtype)
            for k, leaf in zip(keys, leaves, strict=False)
        ]
    )


def setup(net, dtype, seed: int = 0):
    """``(params, x, y, v)`` for ``net`` in ``dtype``."""
    params = net.init(jax.random.key(seed), dtype=dtype)
    x, y = batch(net, dtype, seed + 1)
    return params, x, y, random_like(params, seed + 3)


def ref_hvp(net, params, x, y, v):
    """``H v`` by forward-over-reverse autodiff: ``jax.jvp(jax.grad(net.loss))``."""
    return jax.jvp(lambda p: jax.grad(net.loss)(p, x, y), (params,), (v,))[1]


def ref_ggn_vp(net, params, x, y, v):
    """``J^T H_l J v`` by ``jax.jvp`` of the network, ``jax.hessian`` of the loss in
    the output, and ``jax.vjp`` of the network."""
    x, targets = net.check_batch(params, x, y)
    forward = lambda p: net.forward(p, x)  # noqa: E731
    out, jv = jax.jvp(forward, (params,), (v,))
    loss = lambda o: net.loss_fn.value(o, targets)  # noqa: E731
    h_out = jax.hessian(loss)(out)  # (B, K, B, K)
    hjv = jnp.einsum("ijkl,kl->ij", h_out, jv)
    return jax.vjp(forward, params)[1](hjv)[0]


def rel_error(got, want) -> float:
    """``max |got - want| / max |want|`` over the whole pytree."""
    a, b = ravel_pytree(got)[0], ravel_pytree(want)[0]
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def vdot(a, b) -> float:
    return float(jnp.vdot(ravel_pytree(a)[0], ravel_pytree(b)[0]))
