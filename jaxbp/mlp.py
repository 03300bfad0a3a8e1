"""The multilayer perceptron: an immutable spec with pure init, forward, loss and grads.

Parameters are a plain pytree: a list with one ``{"w": (fan_in, fan_out),
"b": (fan_out,)}`` dict per layer, and a layer computes ``z = a_prev @ w + b``. The spec
(:class:`MLP`) holds only hashable configuration, so it can be a static argument of
``jax.jit``; every method is a pure function of its arguments.
"""

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import backward, validation
from jaxbp.activations import Activation, get_activation
from jaxbp.losses import Loss, get_loss

Array = jax.Array
Params = list[dict[str, Array]]

#: Activations whose weights are initialised with He (Kaiming) scaling; the others
#: (sigmoid, tanh, identity) use Glorot (Xavier) uniform.
_HE_INIT = frozenset({"relu", "leaky_relu", "elu", "gelu", "softplus"})


@dataclasses.dataclass(frozen=True)
class MLP:
    """A fully connected network of any depth: the spec, not the parameters.

    Args:
      sizes: layer widths ``(n_0, n_1, ..., n_L)``, input first; at least two.
      activation: activation of the hidden layers (see :mod:`jaxbp.activations`).
      output_activation: activation of the last layer.
      objective: the loss, one of ``half_sse``, ``mse``, ``softmax_cross_entropy``; its
        value is the mean over the batch of a per-example loss.

    Raises:
      ValueError: on an empty or non-positive size, an unknown activation or loss, or
        ``softmax_cross_entropy`` with an output activation other than ``identity``.

    Examples:
      >>> import jax
      >>> net = MLP(sizes=(784, 100, 10), activation="sigmoid")
      >>> net.num_params
      79510
      >>> params = net.init(jax.random.key(0))
      >>> [layer["w"].shape for layer in params]
      [(784, 100), (100, 10)]
    """

    sizes: tuple[int, ...]
    activation: str = "sigmoid"
    output_activation: str = "identity"
    objective: str = "softmax_cross_entropy"

    def __post_init__(self):
        sizes = tuple(self.sizes)
        if len(sizes) < 2:
            raise ValueError(
                f"sizes needs at least an input and an output, got {sizes}"
            )
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int | np.integer):
                raise ValueError(f"sizes must be integers, got {sizes}")
            if size <= 0:
                raise ValueError(f"sizes must be positive, got {sizes}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        get_activation(self.activation)
        get_activation(self.output_activation)
        if (
            get_loss(self.objective).needs_logits
            and self.output_activation != "identity"
        ):
            raise ValueError(
                f"objective {self.objective!r} takes the raw logits and applies the "
                "softmax itself, so it requires output_activation='identity', got "
                f"{self.output_activation!r}"
            )

    # ----------------------------------------------------------------- properties
    @property
    def depth(self) -> int:
        """The number of weight layers."""
        return len(self.sizes) - 1

    @property
    def num_params(self) -> int:
        """The number of scalar parameters: ``sum(fan_in * fan_out + fan_out)``."""
        return sum(
            m * n + n for m, n in zip(self.sizes[:-1], self.sizes[1:], strict=True)
        )

    @property
    def hidden(self) -> Activation:
        """The hidden :class:`~jaxbp.activations.Activation`."""
        return get_activation(self.activation)

    @property
    def output(self) -> Activation:
        """The output :class:`~jaxbp.activations.Activation`."""
        return get_activation(self.output_activation)

    @property
    def loss_fn(self) -> Loss:
        """The :class:`~jaxbp.losses.Loss` of ``objective``."""
        return get_loss(self.objective)

    def __str__(self) -> str:
        widths = "-".join(map(str, self.sizes))
        return (
            f"MLP({widths}, {self.activation}/{self.output_activation}, "
            f"{self.objective})"
        )

    # ----------------------------------------------------------------- params
    def init(self, key: Array, *, dtype=jnp.float32) -> Params:
        """Draws initial parameters.

        Weights use He normal scaling (``std = sqrt(2 / fan_in)``) for the ReLU family,
        GELU and softplus, and Glorot uniform (``limit = sqrt(6 / (fan_in + fan_out))``)
        for sigmoid, tanh and identity; biases start at zero.

        Args:
          key: a ``jax.random`` key.
          dtype: float dtype of the parameters (``jnp.float64`` needs x64 enabled).

        Returns:
          A list of ``{"w": (fan_in, fan_out), "b": (fan_out,)}`` dicts.
        """
        keys = jax.random.split(key, self.depth)
        params = []
        layers = zip(keys, self.sizes[:-1], self.sizes[1:], strict=True)
        for k, fan_in, fan_out in layers:
            if self.activation in _HE_INIT:
                std = math.sqrt(2.0 / fan_in)
                w = std * jax.random.normal(k, (fan_in, fan_out), dtype)
            else:
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                w = jax.random.uniform(k, (fan_in, fan_out), dtype, -limit, limit)
            params.append({"w": w, "b": jnp.zeros((fan_out,), dtype)})
        return params

    # ----------------------------------------------------------------- model
    def forward(self, params: Params, x: Array) -> Array:
        """The network output.

        Args:
          params: the parameter list.
          x: inputs ``(B, sizes[0])``, floating point.

        Returns:
          Outputs ``(B, sizes[-1])`` (logits for ``softmax_cross_entropy``).
        """
        x = self.check_inputs(params, x)
        return self._cache(params, x).a[-1]

    def loss(self, params: Params, x: Array, y: Array) -> Array:
        """The objective: mean over the batch of the per-example loss.

        Args:
          params: the parameter list.
          x: inputs ``(B, sizes[0])``.
          y: integer labels ``(B,)`` in ``[0, sizes[-1])`` or float targets
            ``(B, sizes[-1])`` (one-hot for ``softmax_cross_entropy``).

        Returns:
          A scalar.
        """
        return jnp.mean(self.per_example_loss(params, x, y))

    def per_example_loss(self, params: Params, x: Array, y: Array) -> Array:
        """The loss of each example, ``(B,)``; :meth:`loss` is its mean."""
        x, targets = self.check_batch(params, x, y)
        return self.loss_fn.per_example(self._cache(params, x).a[-1], targets)

    # ----------------------------------------------------------------- gradients
    def manual_grad(self, params: Params, x: Array, y: Array) -> Params:
        """The gradient of :meth:`loss` by the hand-derived delta rule, no autodiff.

        Args:
          params: the parameter list.
          x: inputs ``(B, sizes[0])``.
          y: labels ``(B,)`` or targets ``(B, sizes[-1])``.

        Returns:
          Gradients with exactly the structure, shapes and dtypes of ``params``.
        """
        return self.value_and_manual_grad(params, x, y)[1]

    def value_and_manual_grad(
        self, params: Params, x: Array, y: Array
    ) -> tuple[Array, Params]:
        """The loss and its hand-derived gradient from a forward and a backward pass.

        The analogue of ``jax.value_and_grad(net.loss)``, without autodiff.

        Returns:
          ``(loss, grads)``: a scalar and a pytree shaped like ``params``.
        """
        x, targets = self.check_batch(params, x, y)
        cache, deltas = self.deltas(params, x, targets)
        value = self.loss_fn.value(cache.a[-1], targets)
        return value, backward.grads_from_deltas(cache, deltas)

    def _cache(self, params: Params, x: Array) -> backward.ForwardCache:
        return backward.forward_pass(params, x, self.hidden, self.output)

    def deltas(
        self, params: Params, x: Array, targets: Array, *, batch_mean: bool = True
    ) -> tuple[backward.ForwardCache, list[Array]]:
        """The forward cache and the error signals ``delta_l = dL/dz_l`` of every layer.

        The hand-derived rule (no autodiff): ``delta_L = dl/da_L * f'(z_L)``, then
        ``delta_{l-1} = (delta_l W_l^T) * f'(z_{l-1})``.

        Args:
          params: the parameter list.
          x: inputs ``(B, sizes[0])`` as returned by :meth:`check_batch`.
          targets: float targets ``(B, sizes[-1])`` as returned by :meth:`check_batch`.
          batch_mean: deltas of the mean loss (divided by ``B``, the default) or of
            each example's own loss.

        Returns:
          ``(cache, [delta_1, ..., delta_L])`` with ``delta_l`` shaped ``(B, n_l)``.
        """
        cache = self._cache(params, x)
        delta_out = backward.output_delta(cache, targets, self.output, self.loss_fn)
        if batch_mean:
            # L = (1/B) sum_i l_i  =>  dL/dz_L = (1/B) dl_i/dz_L
            delta_out = delta_out / x.shape[0]
        return cache, backward.backward_deltas(params, cache, delta_out, self.hidden)

    def loss_with_manual_vjp(self, params: Params, x: Array, y: Array) -> Array:
        """:meth:`loss` whose derivative under ``jax.grad`` is the hand-derived rule.

        The value is the same as :meth:`loss`; a ``jax.custom_vjp`` routes reverse-mode
        differentiation through the delta rule, so ``jax.grad`` (and ``jax.vjp``) of
        this function run the manual backward pass, including ``dL/dx = delta_1 W_1^T``
        and ``dL/dy`` for float targets.
        """
        x, targets = self.check_batch(params, x, y)
        return _manual_vjp_loss(self, params, x, targets)

    # ----------------------------------------------------------------- checks
    def check_params(self, params: Params) -> None:
        """:func:`jaxbp.validation.check_params` for this spec."""
        validation.check_params(self, params)

    def check_inputs(self, params: Params, x: Array) -> Array:
        """:func:`jaxbp.validation.check_inputs`: ``x`` in the parameters' dtype."""
        return validation.check_inputs(self, params, x)

    def check_batch(self, params: Params, x: Array, y: Array) -> tuple[Array, Array]:
        """:func:`jaxbp.validation.check_batch`: ``(x, targets)``, targets
        ``(B, sizes[-1])``."""
        return validation.check_batch(self, params, x, y)


# --------------------------------------------------------------------- custom_vjp
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _manual_vjp_loss(net: MLP, params: Params, x: Array, targets: Array) -> Array:
    cache = net._cache(params, x)
    return net.loss_fn.value(cache.a[-1], targets)


def _manual_vjp_fwd(net, params, x, targets):
    cache, deltas = net.deltas(params, x, targets)
    value = net.loss_fn.value(cache.a[-1], targets)
    return value, (params, cache, deltas, targets)


def _manual_vjp_bwd(net, residuals, g):
    params, cache, deltas, targets = residuals
    grads = backward.grads_from_deltas(cache, deltas)
    dx = backward.input_grad(params, deltas)
    # dL/dy = (1/B) dl/dy per example
    dy = net.loss_fn.grad_target(cache.a[-1], targets) / targets.shape[0]
    scale = partial(jnp.multiply, g)
    return jax.tree.map(scale, grads), scale(dx), scale(dy)


_manual_vjp_loss.defvjp(_manual_vjp_fwd, _manual_vjp_bwd)
