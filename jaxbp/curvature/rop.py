"""The R-operator of every layer: forward and backward passes differentiated by hand.

Pearlmutter (1994, "Fast exact multiplication by the Hessian") writes
``R_v{f(theta)} = d/dr f(theta + r v)|_{r=0}`` for the directional derivative of any
quantity of a forward or backward pass along a parameter direction ``v``. Applied to
the gradient it gives the Hessian-vector product, ``R_v{dL/dtheta} = H v``, and since
``R`` obeys the usual rules of differentiation, it can be pushed through each line of
backpropagation by hand. For a layer with input ``x``, output ``y``, output cotangent
``delta = dL/dy`` and input cotangent ``dx``:

* the **forward R-pass** carries ``R{x}`` up to ``R{y}``;
* the **backward R-pass** carries ``R{delta}`` down to ``R{dx}`` and gives the layer's
  ``R{dL/dtheta}``, the layer's block of ``H v``.

The rules, layer by layer (``V`` is the direction's block of the layer's parameters):

* Dense, ``z = x W + b``: ``R{z} = R{x} W + x V_W + V_b``;
  ``R{dW} = R{x}^T delta + x^T R{delta}``, ``R{db} = sum_i R{delta}_i``,
  ``R{dx} = R{delta} W^T + delta V_W^T``.
* Conv2D, the same as a dense layer on the unfolded patches, since the convolution is
  bilinear in (input, kernel) and its backward in (input or kernel, cotangent).
* Activation, ``a = f(z)``: ``R{a} = f'(z) R{z}``;
  ``R{dz} = f'(z) R{da} + f''(z) R{z} da``.
* Flatten, Reshape, average pooling: linear in ``x``, so ``R{y}`` is the layer applied
  to ``R{x}`` and ``R{dx}`` its backward applied to ``R{delta}``.
* Max pooling: linear in ``x`` around a point where the maxima are unique (the window's
  choice fixed, as the backward takes it): ``R{y}`` is ``R{x}`` at the chosen element.
* Residual, ``y = x + block(x)``: ``R{y} = R{x} + R{block(x)}``,
  ``R{dx} = R{delta} + R{block^T delta}``.

The terms without ``R{delta}`` (``f''(z) R{z} da``, ``R{x}^T delta``,
``delta V^T``) are those the Gauss-Newton product leaves out. In a network of
piecewise-linear layers only the last two remain, and they couple a layer's parameters
with those of the layers below it: the diagonal blocks of ``H`` and ``G`` agree there.

``R{x} = None`` stands for a zero direction (the network's input does not move), so
the first layer skips the products with it, as the gradient skips ``dL/dx``.
"""

import jax
import jax.numpy as jnp

from jaxbp.activations import PIECEWISE_LINEAR, second_derivative
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
from jaxbp.layers.dense import dense, dense_input_grad, dense_param_grads
from jaxbp.layers.elementwise import activation_backward
from jaxbp.layers.windows import resolve_padding, window_views

Array = jax.Array


def _add(a: Array | None, b: Array | None) -> Array | None:
    """``a + b`` where ``None`` is zero."""
    if a is None:
        return b
    return a if b is None else a + b


def _max_pool_chosen(layer: MaxPool2D, x: Array, y: Array, rx: Array) -> Array:
    """``R{y}``: ``R{x}`` at each window's first maximum (the backward's choice)."""
    pads = resolve_padding(layer.padding, x.shape[1:3], layer.window, layer.stride)
    views = window_views(x, layer.window, layer.stride, pads, fill=-jnp.inf)
    r_views = window_views(rx, layer.window, layer.stride, pads)
    taken = jnp.zeros(y.shape, bool)
    ry = jnp.zeros(y.shape, rx.dtype)
    for v, rv in zip(views, r_views, strict=True):  # offsets in row-major order
        first = (v == y) & ~taken
        taken = taken | first
        ry = ry + jnp.where(first, rv, 0)  # R{y} = R{V_ij} at the chosen (i, j)
    return ry


def r_forward(layer, params, v, cache, rx: Array | None):
    """The forward R-pass of one layer: ``R{y}`` from ``R{x}``.

    Args:
      layer: a layer of :data:`jaxbp.curvature.network.SUPPORTED`.
      params: its parameters.
      v: the direction's block of its parameters (shaped like ``params``).
      cache: its forward cache.
      rx: ``R{x}``, shaped like the input, or ``None`` for zero.

    Returns:
      ``(ry, rcache)``: ``R{y}`` (``None`` if zero) and what the backward R-pass
      needs.
    """
    if isinstance(layer, Dense):
        x = cache
        ry = dense(v, x)  # x V_W + V_b
        if rx is not None:
            ry = ry + rx @ params["w"]  # R{z} = R{x} W + x V_W + V_b
        return ry, rx
    if isinstance(layer, Conv2D):
        x = cache
        ry = layer.forward(v, x)[0]  # conv(x, V_W) + V_b
        if rx is not None:
            # R{z} = conv(R{x}, W) + conv(x, V_W) + V_b
            no_bias = {"w": params["w"], "b": jnp.zeros_like(params["b"])}
            ry = ry + layer.forward(no_bias, rx)[0]
        return ry, rx
    if isinstance(layer, Activation):
        z, a = cache
        if rx is None:
            return None, None
        # R{a} = f'(z) R{z}
        return activation_backward(layer.name, z, a, rx), rx
    if isinstance(layer, (Flatten, Reshape, AvgPool2D)):
        # linear in x: R{y} = layer(R{x})
        return (None if rx is None else layer.forward({}, rx)[0]), None
    if isinstance(layer, MaxPool2D):
        x, y = cache
        return (None if rx is None else _max_pool_chosen(layer, x, y, rx)), None
    if isinstance(layer, Residual):
        r_block, rcaches = chain_r_forward(layer.block, params, v, cache, rx)
        return _add(rx, r_block), rcaches  # R{y} = R{x} + R{block(x)}
    raise TypeError(f"no R-operator for {layer}")  # refused earlier, at the boundary


def r_backward(layer, params, v, cache, rcache, dy: Array, rdy: Array):
    """The backward R-pass of one layer: ``R{dL/dtheta}`` and ``R{dx}``.

    Args:
      layer, params, v, cache: as for :func:`r_forward`.
      rcache: what :func:`r_forward` returned for it.
      dy: ``delta = dL/dy``, the layer's output cotangent.
      rdy: ``R{delta}``.

    Returns:
      ``(rgrads, rdx)``: ``R{dL/dtheta}`` shaped like ``params`` (the layer's block of
      ``H v``) and ``R{dL/dx}``.
    """
    if isinstance(layer, Dense):
        x, rx = cache, rcache
        rgrads = dense_param_grads(x, rdy)  # x^T R{delta}, sum_i R{delta}_i
        if rx is not None:
            # R{dW} = R{x}^T delta + x^T R{delta}
            rgrads["w"] = rgrads["w"] + rx.T @ dy
        # R{dx} = R{delta} W^T + delta V_W^T
        rdx = dense_input_grad(params, rdy) + dense_input_grad(v, dy)
        return rgrads, rdx
    if isinstance(layer, Conv2D):
        x, rx = cache, rcache
        # Conv2D.backward(kernel, input, cotangent) is bilinear in (input, cotangent)
        # for the weight gradient and in (kernel, cotangent) for dx:
        rgrads, rdx = layer.backward(params, x, rdy)  # P(x)^T R{delta}; R{delta} W^T
        if rx is not None:
            # R{dW} = P(R{x})^T delta + P(x)^T R{delta}
            rgrads["w"] = rgrads["w"] + layer.backward(params, rx, dy)[0]["w"]
        # R{dx} = col2im(R{delta} W^T + delta V_W^T)
        return rgrads, rdx + layer.backward(v, x, dy)[1]
    if isinstance(layer, Activation):
        z, a = cache
        rz = rcache
        rdz = activation_backward(layer.name, z, a, rdy)  # f'(z) R{da}
        if rz is not None and layer.name not in PIECEWISE_LINEAR:
            # R{dz} = f'(z) R{da} + f''(z) R{z} da   (f'' = 0 if piecewise linear)
            rdz = rdz + second_derivative(layer.name, z, a) * rz * dy
        return {}, rdz
    if isinstance(layer, (Flatten, Reshape, AvgPool2D, MaxPool2D)):
        # linear in delta with the cache fixed: R{dx} = backward(R{delta})
        return layer.backward(params, cache, rdy)
    if isinstance(layer, Residual):
        rgrads, r_block = chain_r_backward(
            layer.block, params, v, cache, rcache, dy, rdy
        )
        return rgrads, rdy + r_block  # R{dx} = R{delta} + R{block^T delta}
    raise TypeError(f"no R-operator for {layer}")


def chain_r_forward(layers, params, v, caches, rx: Array | None):
    """The forward R-pass through a chain: ``(R{y}, rcaches)``."""
    rcaches = []
    for layer, p, vp, cache in zip(layers, params, v, caches, strict=True):
        rx, rcache = r_forward(layer, p, vp, cache, rx)
        rcaches.append(rcache)
    return rx, rcaches


def chain_r_backward(layers, params, v, caches, rcaches, dy: Array, rdy: Array):
    """The backward R-pass through a chain, beside the ordinary backward pass.

    Each layer needs both ``delta`` and ``R{delta}`` of its output, so the two are
    carried down together: ``(delta, R{delta}) -> (dx, R{dx})``.

    Returns:
      ``(rgrads, rdx)``: one ``R{dL/dtheta}`` per layer, and ``R{dL/dx}`` of the
      chain's input.
    """
    n = len(layers)
    rgrads = [None] * n
    for i in range(n - 1, -1, -1):
        layer, p, cache = layers[i], params[i], caches[i]
        rgrads[i], rdy = r_backward(layer, p, v[i], cache, rcaches[i], dy, rdy)
        if i:  # delta_{i-1} = backward_i(delta_i); the input's is not needed
            dy = layer.backward(p, cache, dy)[1]
    return rgrads, rdy
