"""Max and average pooling over NHWC images, and their hand-derived backward passes.

With the window views ``V_ij[b, p, q, c] = x_pad[b, s_h p + i, s_w q + j, c]`` of
:mod:`jaxbp.layers.windows` (one per offset ``(i, j)`` of a ``kh x kw`` window):

.. math::

   \\text{max:}\\quad y = \\max_{i, j} V_{ij}, \\qquad
   \\frac{\\partial L}{\\partial V_{ij}} = \\delta\\, [\\,(i, j) = \\text{the chosen
   maximum}\\,];

   \\text{average:}\\quad y = \\frac{1}{k_h k_w} \\sum_{i, j} V_{ij}, \\qquad
   \\frac{\\partial L}{\\partial V_{ij}} = \\frac{\\delta}{k_h k_w},

with ``delta = dL/dy``, and ``dL/dx = col2im(dL/dV)``
(:func:`~jaxbp.layers.windows.fold_views`), which adds up the cotangents an input
receives from every window it lies in (a stride smaller than the window).

**Ties in max pooling.** The maximum's derivative is not defined where several
elements of a window share it (a ReLU before the pool makes many exact zeros). The
whole of ``delta`` goes to one of them: the *first* in row-major order within the
window (smallest row offset ``i``, then smallest column offset ``j``), never split.
That is the element ``jax.grad`` of the forward chooses (JAX transposes
``reduce_window_max`` into XLA's ``select_and_scatter`` with a ``>=`` comparison,
which keeps the first maximum it meets), so both gradients agree exactly; the
tests check it on inputs full of ties. Padded positions hold ``-inf`` and never
win; explicit padding must be smaller than the window, so no window lies entirely
in the padding. NaN inputs give an unspecified gradient.

**Padding in average pooling.** Padded positions count as zeros and the sum is
always divided by the full window size ``kh kw`` (``count_include_pad=True``, as in
PyTorch's ``AvgPool2d`` and flax's ``avg_pool`` defaults), so an edge window of a
``"SAME"`` pool averages its real values with zeros, and the backward gives every
real position ``delta / (kh kw)`` from each window it lies in.

Both ``backward`` methods are jitted, the layer spec a static argument, as
:class:`~jaxbp.layers.Conv2D`'s is: called eagerly they compile one program instead
of one per window offset; inside a caller's ``jit`` they are inlined.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.layers.base import Shape
from jaxbp.layers.windows import (
    check_padding,
    check_pair,
    fold_views,
    padding_str,
    resolve_padding,
    window_output_hw,
    window_views,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _Pool2D:
    """What both poolings share: the window, stride and padding, shapes, no params."""

    window: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "VALID"

    def __post_init__(self):
        name = type(self).__name__
        set_field = object.__setattr__
        set_field(self, "window", check_pair(f"{name} window", self.window))
        stride = self.window if self.stride is None else self.stride
        set_field(self, "stride", check_pair(f"{name} stride", stride))
        set_field(self, "padding", check_padding(f"{name} padding", self.padding))
        if not isinstance(self.padding, str) and any(
            p >= k
            for k, pair in zip(self.window, self.padding, strict=True)
            for p in pair
        ):
            raise ValueError(
                f"{name} padding {self.padding} must be smaller than the window "
                f"{self.window[0]}x{self.window[1]} on every side (a window entirely "
                "in the padding pools nothing)"
            )

    def __str__(self) -> str:
        kh, kw = self.window
        parts = [f"{kh}x{kw}"]
        if self.stride != self.window:
            sh, sw = self.stride
            parts.append(f"stride {sh}" if sh == sw else f"stride {sh}x{sw}")
        if self.padding != "VALID":
            parts.append(padding_str(self.padding))
        return f"{type(self).__name__}({', '.join(parts)})"

    def output_shape(self, input_shape: Shape) -> Shape:
        oh, ow = window_output_hw(
            input_shape, self.window, self.stride, self.padding, "window"
        )
        return (oh, ow, input_shape[-1])

    def init(self, key: Array, input_shape: Shape, dtype) -> dict:
        return {}

    def init_state(self, input_shape: Shape, dtype) -> dict:
        return {}

    def _pads(self, in_shape: Shape):
        """Explicit padding for a batched input of shape ``in_shape``."""
        return resolve_padding(self.padding, in_shape[1:3], self.window, self.stride)

    def _reduce(self, x: Array, init: float, op) -> Array:
        """``lax.reduce_window`` of ``op`` over the windows of the padded input."""
        # ``init`` stays a Python scalar: a traced init value (jnp.array inside jit)
        # turns reduce_window_max/sum into the generic reduce_window, which jax.grad
        # cannot differentiate.
        return lax.reduce_window(
            x,
            init,
            op,
            (1, *self.window, 1),
            (1, *self.stride, 1),
            ((0, 0), *self._pads(x.shape), (0, 0)),
        )


@dataclasses.dataclass(frozen=True)
class MaxPool2D(_Pool2D):
    """Max pooling on NHWC inputs; the gradient goes to each window's first maximum.

    Args:
      window: ``k`` for a ``k x k`` window, or ``(kh, kw)``.
      stride: ``s`` or ``(s_h, s_w)``; default the window (windows that tile).
      padding: ``"VALID"``, ``"SAME"`` or explicit ``((lo_h, hi_h), (lo_w, hi_w))``,
        each side smaller than the window; padded positions are ``-inf``.

    Examples:
      >>> import jax.numpy as jnp
      >>> layer = MaxPool2D(2)
      >>> x = jnp.array([[0.0, 1.0], [1.0, 1.0]]).reshape(1, 2, 2, 1)
      >>> y, cache, _ = layer.forward({}, x)
      >>> _, dx = layer.backward({}, cache, jnp.ones_like(y))
      >>> dx[0, :, :, 0].tolist()  # the tie goes to the first 1 in row-major order
      [[0.0, 1.0], [0.0, 0.0]]
    """

    def forward(self, params, x, *, state=None, key=None, train=False):
        y = self._reduce(x, -jnp.inf, lax.max)  # y = max_{i,j} V_ij
        return y, (x, y), state

    @functools.partial(jax.jit, static_argnums=0)  # one program per spec and shape
    def backward(self, params, cache, dy):
        x, y = cache
        pads = self._pads(x.shape)
        views = window_views(x, self.window, self.stride, pads, fill=-jnp.inf)
        taken = jnp.zeros(y.shape, bool)  # a window's maximum already found
        d_views = []
        for v in views:  # offsets (i, j) in row-major order
            first = (v == y) & ~taken  # the first V_ij equal to the window's max
            taken = taken | first
            d_views.append(jnp.where(first, dy, 0))  # dL/dV_ij = delta [chosen]
        return {}, fold_views(d_views, x.shape, self.window, self.stride, pads)


@dataclasses.dataclass(frozen=True)
class AvgPool2D(_Pool2D):
    """Average pooling on NHWC inputs, dividing by the full window (padding counts).

    Args:
      window: ``k`` for a ``k x k`` window, or ``(kh, kw)``.
      stride: ``s`` or ``(s_h, s_w)``; default the window (windows that tile).
      padding: ``"VALID"``, ``"SAME"`` or explicit ``((lo_h, hi_h), (lo_w, hi_w))``,
        each side smaller than the window; padded positions are zeros that count
        in the average (``count_include_pad=True``).
    """

    def forward(self, params, x, *, state=None, key=None, train=False):
        kh, kw = self.window
        # y = (1 / (kh kw)) sum_{i,j} V_ij: a product with the reciprocal, which
        # evaluates bit for bit alike eagerly, under jit and under jax.vjp (x / 9 did
        # not, by one rounding).
        y = self._reduce(x, 0.0, lax.add) * (1.0 / (kh * kw))
        # The input is the cache, as for Flatten: only its shape is needed, and the
        # array is alive in the caller anyway.
        return y, x, state

    @functools.partial(jax.jit, static_argnums=0)  # one program per spec and shape
    def backward(self, params, cache, dy):
        kh, kw = self.window
        x = cache
        d_view = dy * (1.0 / (kh * kw))  # dL/dV_ij = delta / (kh kw), every offset
        pads = self._pads(x.shape)
        return {}, fold_views(
            [d_view] * (kh * kw), x.shape, self.window, self.stride, pads
        )
