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

from jaxbp import backward
from jaxbp.activations import Activation, get_activation
from jaxbp.losses import Loss, get_loss, prepare_targets

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
        """Checks that ``params`` matches this spec.

        Raises:
          TypeError: if ``params`` is not a list of ``{"w", "b"}`` dicts or holds
            non-float or mixed dtypes.
          ValueError: on a wrong number of layers or a wrong shape.
        """
        if not isinstance(params, list | tuple):
            raise TypeError(
                "params must be a list of {'w', 'b'} dicts, got "
                f"{type(params).__name__}"
            )
        if len(params) != self.depth:
            raise ValueError(
                f"params has {len(params)} layers but {self} has {self.depth}"
            )
        dtype = None
        for l, (layer, fan_in, fan_out) in enumerate(
            zip(params, self.sizes[:-1], self.sizes[1:], strict=True)
        ):
            if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
                keys = (
                    sorted(layer) if isinstance(layer, dict) else type(layer).__name__
                )
                raise TypeError(
                    f"params[{l}] must be a dict with keys 'w' and 'b', got {keys}"
                )
            for name, shape in (("w", (fan_in, fan_out)), ("b", (fan_out,))):
                leaf = layer[name]
                if tuple(jnp.shape(leaf)) != shape:
                    raise ValueError(
                        f"params[{l}]['{name}'] has shape {tuple(jnp.shape(leaf))} but "
                        f"layer {l} of {self} expects {shape}"
                    )
                leaf_dtype = jnp.result_type(leaf)
                if not jnp.issubdtype(leaf_dtype, jnp.floating):
                    raise TypeError(
                        f"params[{l}]['{name}'] has dtype {leaf_dtype}; parameters "
                        "must be floating point"
                    )
                if dtype is not None and leaf_dtype != dtype:
                    raise TypeError(
                        f"params[{l}]['{name}'] has dtype {leaf_dtype} but earlier "
                        f"parameters are {dtype}; use one dtype throughout"
                    )
                dtype = leaf_dtype

    def check_inputs(self, params: Params, x: Array) -> Array:
        """Checks ``params`` and ``x`` and returns ``x`` in the parameters' dtype.

        Raises:
          ValueError: if ``x`` is not ``(B, sizes[0])``.
          TypeError: if ``x`` is not floating point.
        """
        self.check_params(params)
        shape = tuple(jnp.shape(x))
        if len(shape) != 2:
            raise ValueError(
                f"x must be a 2-D batch (batch, {self.sizes[0]}), got shape {shape}"
            )
        if shape[1] != self.sizes[0]:
            raise ValueError(
                f"x has {shape[1]} features but the first layer expects {self.sizes[0]}"
            )
        x_dtype = jnp.result_type(x)
        if not jnp.issubdtype(x_dtype, jnp.floating):
            raise TypeError(
                f"x has dtype {x_dtype}; inputs must be floating point (scale uint8 "
                "images to [0, 1] with jaxbp.data.to_float)"
            )
        return jnp.asarray(x, jnp.result_type(params[0]["w"]))

    def check_batch(self, params: Params, x: Array, y: Array) -> tuple[Array, Array]:
        """Checks a batch; returns ``(x, targets)``, targets float ``(B, sizes[-1])``.

        Integer labels are range-checked whenever their values are concrete (outside
        ``jit``); inside ``jit`` only shapes and dtypes can be checked.

        Raises:
          ValueError: on mismatched batch sizes, a wrong target width or labels out of
            range.
          TypeError: on a wrong dtype.
        """
        x = self.check_inputs(params, x)
        num_out = self.sizes[-1]
        y_shape = tuple(jnp.shape(y))
        y_dtype = jnp.result_type(y)
        if y_shape[:1] != x.shape[:1]:
            raise ValueError(
                f"y has batch size {y_shape[0] if y_shape else None} but x has "
                f"{x.shape[0]} (y shape {y_shape}, x shape {x.shape})"
            )
        if len(y_shape) == 1:
            if not jnp.issubdtype(y_dtype, jnp.integer):
                raise TypeError(
                    f"y of shape {y_shape} must hold integer class labels, got dtype "
                    f"{y_dtype}; float targets must be shaped (batch, {num_out})"
                )
            if not isinstance(y, jax.core.Tracer) and y_shape[0] > 0:
                labels = np.asarray(y)
                lo, hi = int(labels.min()), int(labels.max())
                if lo < 0 or hi >= num_out:
                    bad = lo if lo < 0 else hi
                    raise ValueError(
                        f"label {bad} is out of range: labels must be in "
                        f"[0, {num_out - 1}] for {num_out} outputs"
                    )
        elif len(y_shape) == 2:
            if y_shape[1] != num_out:
                raise ValueError(
                    f"y has {y_shape[1]} columns but the last layer has {num_out} "
                    "outputs"
                )
            if not jnp.issubdtype(y_dtype, jnp.floating):
                raise TypeError(
                    f"float targets y must be floating point, got {y_dtype}"
                )
        else:
            raise ValueError(
                f"y must be labels (batch,) or targets (batch, {num_out}), got "
                f"{y_shape}"
            )
        return x, prepare_targets(jnp.asarray(y), num_out, x.dtype)


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
