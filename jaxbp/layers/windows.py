"""Sliding windows over NHWC images: padding, the window views and their transpose.

A ``k``-wide window moving with stride ``s`` along an axis of ``n`` values padded by
``(lo, hi)`` stops at

.. math::

   o = \\left\\lfloor \\frac{n + lo + hi - k}{s} \\right\\rfloor + 1

positions. ``"SAME"`` padding is TensorFlow's and JAX's (``lax.padtype_to_pads``):
``o = ceil(n / s)``, the padding ``total = max((o - 1) s + k - n, 0)`` split
``lo = floor(total / 2)``, ``hi = total - lo``; ``"VALID"`` pads nothing.

The window views are the ``kh * kw`` strided slices of the padded input, one per
offset ``(i, j)`` of the window, in row-major order:

.. math::

   V_{ij}[b, p, q, c] = x_{pad}[b,\\ s_h p + i,\\ s_w q + j,\\ c],

so stacking them gives the unfolded patches of im2col (Chellapilla, Puri & Simard
2006, "High performance convolutional neural networks for document processing").
:func:`fold_views` is their transpose (col2im): each view's cotangent goes back to
the input positions it was read from, and positions read by several windows (stride
smaller than the window) sum their cotangents,

.. math::

   dx[b, h, w, c] = \\sum_{i, j} \\sum_{p, q:\\ s_h p + i - lo_h = h,\\
   s_w q + j - lo_w = w} dV_{ij}[b, p, q, c];

cotangents of padded positions are dropped. Convolution and both poolings are made
of these two functions.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.layers.base import LayerShapeError, Shape, shape_str

Array = jax.Array
Pair = tuple[int, int]
Pads = tuple[Pair, Pair]

PADDINGS = ("VALID", "SAME")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_pair(name: str, value) -> Pair:
    """A positive integer or a pair of them as ``(rows, cols)``, else a ValueError."""
    pair = (value, value) if _positive_int(value) else value
    if (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(map(_positive_int, pair))
    ):
        return tuple(pair)
    raise ValueError(
        f"{name} must be a positive integer or a pair of them, got {value!r}"
    )


def check_padding(name: str, value) -> str | Pads:
    """``"VALID"``, ``"SAME"`` or ``((lo, hi), (lo, hi))`` (non-negative integers).

    Explicit pairs may be lists; they are returned as tuples (a layer spec is
    hashable). Anything else is a ``ValueError`` naming the accepted forms.
    """
    if isinstance(value, str) and value in PADDINGS:
        return value

    def non_negative(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in value)
        and all(non_negative(v) for p in value for v in p)
    ):
        return tuple(tuple(p) for p in value)
    raise ValueError(
        f'{name} must be "VALID", "SAME" or ((lo, hi), (lo, hi)) with non-negative '
        f"integers for rows and columns, got {value!r}"
    )


def resolve_padding(
    padding: str | Pads, in_hw: Pair, window: Pair, stride: Pair
) -> Pads:
    """Explicit ``((lo, hi), (lo, hi))`` padding of the two spatial axes."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for n, k, s in zip(in_hw, window, stride, strict=True):
            o = -(-n // s)  # o = ceil(n / s)
            total = max((o - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))  # lo = floor(total / 2)
        return tuple(pads)
    return padding


def output_hw(in_hw: Pair, window: Pair, stride: Pair, pads: Pads) -> Pair:
    """Window positions per spatial axis, ``floor((n + lo + hi - k) / s) + 1``."""
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(in_hw, window, stride, pads, strict=True)
    )


def padding_str(padding: str | Pads) -> str:
    """Padding as a message or a layer's name shows it."""
    return padding if isinstance(padding, str) else f"padding {padding}"


def window_output_hw(
    input_shape: Shape, window: Pair, stride: Pair, padding: str | Pads, noun: str
) -> Pair:
    """``(oh, ow)`` for a per-example ``(H, W, C)`` input, else a LayerShapeError.

    Args:
      input_shape: the per-example input shape, expected ``(H, W, C)``.
      window: the window (or kernel) size ``(kh, kw)``.
      stride: ``(sh, sw)``.
      padding: as accepted by :func:`check_padding`.
      noun: what the window is called in messages (``"kernel"``, ``"window"``).
    """
    if len(input_shape) != 3:
        raise LayerShapeError(
            f"expects (B, H, W, C) inputs, got {shape_str(input_shape)}"
            + _image_hint(input_shape)
        )
    in_hw = tuple(input_shape[:2])
    pads = resolve_padding(padding, in_hw, window, stride)
    padded = [n + lo + hi for n, (lo, hi) in zip(in_hw, pads, strict=True)]
    if any(n < k for n, k in zip(padded, window, strict=True)):
        kh, kw = window
        raise LayerShapeError(
            f"expects (B, H, W, C) inputs of at least {kh}x{kw} after padding (its "
            f"{noun} is {kh}x{kw}, {padding_str(padding)}), got "
            f"{shape_str(input_shape)}, {padded[0]}x{padded[1]} padded; use "
            f'padding="SAME", a smaller {noun}, or fewer layers that shrink the image '
            "before it"
        )
    return output_hw(in_hw, window, stride, pads)


def _image_hint(shape: Shape) -> str:
    # The fixes for the usual mistakes: flattened images, a missing channel axis.
    if len(shape) == 1:
        side = round(shape[0] ** 0.5)
        if side * side == shape[0]:
            return f"; reshape the images to (B, {side}, {side}, 1) (NHWC)"
        return "; reshape the images to (B, H, W, C) (NHWC)"
    if len(shape) == 2:
        return f"; add a channel axis: (B, {shape[0]}, {shape[1]}, 1)"
    return "; images are NHWC: (batch, height, width, channels)"


def window_views(
    x: Array, window: Pair, stride: Pair, pads: Pads, fill: float = 0.0
) -> list[Array]:
    """The ``kh * kw`` views ``V_ij[b, p, q, c] = x_pad[b, s_h p + i, s_w q + j, c]``.

    Args:
      x: inputs ``(B, H, W, C)``.
      window: ``(kh, kw)``.
      stride: ``(sh, sw)``.
      pads: explicit ``((lo, hi), (lo, hi))`` padding.
      fill: the value of padded positions (0 for a convolution, ``-inf`` for a max).

    Returns:
      ``kh * kw`` arrays ``(B, oh, ow, C)``, offsets ``(i, j)`` in row-major order.
    """
    (kh, kw), (sh, sw) = window, stride
    b, h, w, c = x.shape
    oh, ow = output_hw((h, w), window, stride, pads)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    return [
        # rows i, i + sh, ..., i + (oh - 1) sh of the padded input; likewise columns
        lax.slice(
            xp,
            (0, i, j, 0),
            (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def fold_views(
    views: list[Array], in_shape: Shape, window: Pair, stride: Pair, pads: Pads
) -> Array:
    """The transpose of :func:`window_views` (col2im): sums each view back in place.

    Args:
      views: ``kh * kw`` cotangents ``(B, oh, ow, C)`` of the views, row-major.
      in_shape: the input's shape ``(B, H, W, C)``.
      window, stride, pads: as for :func:`window_views`.

    Returns:
      ``dx`` of shape ``in_shape``: every input position receives the sum of the
      view entries that read it; padded positions are dropped.
    """
    (kh, kw), (sh, sw) = window, stride
    _, h, w, _ = in_shape
    dx = None
    for i in range(kh):
        # Row by row: the kw views of window row i placed along the columns and
        # summed, then that sum placed along the rows. Placing all kh kw views
        # straight into (B, H, W, C) gives the same sum, but XLA then fused that
        # kh kw-term sum into a following max-pool backward and recomputed it for
        # every element the pool reads (LeNet's conv2-then-pool1 backward ran about
        # 5x slower).
        row = None
        for j in range(kw):
            placed = _place(views[i * kw + j], 2, j - pads[1][0], w, sw)
            row = placed if row is None else row + placed  # sum_j fold_w(dV_ij)
        placed = _place(row, 1, i - pads[0][0], h, sh)
        dx = placed if dx is None else dx + placed  # dx = sum_i fold_h(...)
    return dx


def _place(v: Array, axis: int, lo: int, n: int, s: int) -> Array:
    """Entry ``p`` of ``v`` along ``axis`` to position ``s p + lo`` of ``n``, rest 0."""
    # lax.pad puts s - 1 zeros between entries and lo before the first; negative
    # edge padding crops what lay in the padding of the input.
    config = [(0, 0, 0)] * v.ndim
    config[axis] = (lo, n - lo - (v.shape[axis] - 1) * s - 1, s - 1)
    return lax.pad(v, jnp.zeros((), v.dtype), config)
