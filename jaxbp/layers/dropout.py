"""Inverted dropout: a keyed random mask in training, the identity in evaluation.

In training each value is kept with probability ``1 - rate`` and the kept ones are
scaled up so that the expected output equals the input (Srivastava, Hinton,
Krizhevsky, Sutskever & Salakhutdinov 2014, "Dropout", JMLR 15; the scaling moved from
test time to training time, "inverted", as PyTorch and flax do):

.. math::

   m_i \\sim \\operatorname{Bernoulli}(1 - p), \\qquad
   y = \\frac{m \\odot x}{1 - p}, \\qquad
   \\frac{\\partial L}{\\partial x} = \\frac{m \\odot \\partial L / \\partial y}{1 - p}.

The mask is a fixed function of the key, so the backward reuses the forward's mask; in
evaluation ``y = x`` and ``dL/dx = dL/dy``.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxbp.layers.base import Shape

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Inverted dropout: zero each value with probability ``rate``, scale the rest.

    In training mode (``train=True``) the mask is drawn by ``jax.random.bernoulli``
    from ``key`` (the same key gives the same mask), and the kept values are divided
    by ``1 - rate``; in evaluation mode the layer is the identity and needs no key.
    ``rate=0`` is the identity in both modes (nothing is drawn, no key needed).

    Args:
      rate: the probability of dropping each value, in ``[0, 1)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> layer = Dropout(0.5)
      >>> x = jnp.ones((2, 4))
      >>> y, mask, _ = layer.forward({}, x, key=jax.random.key(0), train=True)
      >>> bool(jnp.all((y == 0) | (y == 2)))  # dropped, or kept and scaled by 1/0.5
      True
      >>> _, dx = layer.backward({}, mask, jnp.ones_like(y))
      >>> bool(jnp.all(dx == y))  # dL/dx = dy * mask / (1 - rate)
      True
    """

    rate: float

    def __post_init__(self):
        r = self.rate
        if (
            isinstance(r, bool)
            or not isinstance(r, int | float)
            or math.isnan(r)
            or not 0 <= r < 1
        ):
            raise ValueError(
                f"Dropout rate must be a probability in [0, 1), got {r!r} "
                f"(a rate of 1 would drop everything)"
            )

    def __str__(self) -> str:
        return f"Dropout({self.rate})"

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def init(self, key: Array, input_shape: Shape, dtype) -> dict:
        return {}

    def init_state(self, input_shape: Shape, dtype) -> dict:
        return {}

    def forward(self, params, x, *, state=None, key=None, train=False):
        """``(y, mask, state)``: ``mask`` is ``None`` where the layer is the identity.

        Raises:
          ValueError: in training mode with ``rate > 0`` and no ``key``.
        """
        if not train or self.rate == 0:
            return x, None, state
        if key is None:
            raise ValueError(
                f"{self} in training mode (train=True) draws a random mask: pass "
                f"key= (a jax.random key, a fresh one each step), or train=False"
            )
        # m ~ Bernoulli(1 - rate), drawn from float32 uniforms whatever x's dtype and
        # the x64 flag, so that one key gives one mask in float32 and in float64 (a
        # gradient check evaluates the loss in float64 and must see the same mask).
        u = jax.random.uniform(key, x.shape, jnp.float32)
        mask = u < jnp.float32(1 - self.rate)
        # y = m x / (1 - rate), as one multiplication by the scale (XLA may turn a
        # division by a constant into one, so this way every trace rounds alike).
        return jnp.where(mask, x * self.scale, 0), mask, state

    def backward(self, params, cache, dy):
        mask = cache
        if mask is None:
            return {}, dy  # identity: dL/dx = dL/dy
        # dL/dx = m dL/dy / (1 - rate)
        return {}, jnp.where(mask, dy * self.scale, 0)

    @property
    def scale(self) -> float:
        """``1 / (1 - rate)``, the factor on the kept values."""
        return 1 / (1 - self.rate)
