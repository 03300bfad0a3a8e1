"""A network of layers in sequence, with a hand-derived gradient of its loss.

:class:`Sequential` is to any chain of :mod:`jaxbp.layers` what :class:`~jaxbp.MLP` is
to a dense network: a frozen spec (a static argument of ``jax.jit``) whose methods are
pure functions of ``(params, x, y)``. Its manual gradient is the delta rule run layer
by layer (:func:`~jaxbp.layers.chain_backward`): the loss gives the cotangent of the
output, ``delta_n = dl/dy_n``, and each layer turns the cotangent of its output into
those of its parameters and of its input, ``delta_{i-1} = backward_i(delta_i)``.

Parameters are a list with one entry per layer (``{}`` for a layer without any), so a
leaf's key path names its layer: ``[3]['w']`` is the weight of layer 4.

State and randomness, explicitly (as in equinox, where ``model(x, state)`` returns
``(y, state)``, rather than flax's mutable collections, so that every function stays a
plain function of its arguments):

* BatchNorm's running statistics are a separate pytree, ``state = net.init_state()``,
  one entry per layer. Training uses the batch's own statistics and needs no state:
  ``net.loss``, ``net.manual_grad`` and ``jax.grad(net.loss)`` work as for an MLP. To
  also update the running averages, call :meth:`Sequential.loss_and_state` (the form
  ``jax.value_and_grad(..., has_aux=True)`` takes) or
  :meth:`Sequential.value_and_manual_grad_with_state`. Evaluation,
  ``net.forward(params, x, state=state)``, uses the running averages.
* Dropout draws its mask from ``key=``; each layer folds its index into the key.
  Without Dropout no key is needed.
* ``train``: the loss and gradients are the training objective (``train=True``);
  ``forward`` evaluates (``train=False``) unless told otherwise.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import validation
from jaxbp.layers import Activation, LayerShapeError
from jaxbp.layers.base import (
    chain_backward,
    chain_forward,
    chain_output_shapes,
    shape_str,
)
from jaxbp.layers.residual import as_layer_tuple
from jaxbp.losses import Loss, get_loss

Array = jax.Array
Params = list


@dataclasses.dataclass(frozen=True)
class Sequential:
    """Layers applied in order, then a loss: the spec, not the parameters.

    Args:
      layers: the layers (see :mod:`jaxbp.layers`).
      input_shape: the per-example input shape, e.g. ``(784,)`` or ``(28, 28, 1)``.
      objective: the loss, one of ``half_sse``, ``mse``, ``softmax_cross_entropy``
        (the mean over the batch of a per-example loss).

    Raises:
      LayerShapeError: when a layer cannot take the shape it is given, naming the
        layer (``layer 5 Dense(500): expects (B, n) inputs, got (B, 4, 4, 50); add
        Flatten() before it``), or when the output is not ``(B, K)``.
      ValueError: on an unknown objective, or ``softmax_cross_entropy`` after an
        activation (it takes the logits).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp.layers import Dense, Activation
      >>> net = Sequential([Dense(4), Activation("tanh"), Dense(2)], input_shape=(3,))
      >>> net.num_params
      26
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1])
      >>> grads = net.manual_grad(params, x, y)
      >>> ref = jax.grad(net.loss)(params, x, y)
      >>> bool(jnp.allclose(grads[0]["w"], ref[0]["w"], atol=1e-6))
      True
    """

    layers: tuple
    input_shape: tuple[int, ...]
    objective: str = "softmax_cross_entropy"
    shapes: tuple = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        layers = as_layer_tuple(self.layers, "Sequential")
        object.__setattr__(self, "layers", layers)
        input_shape = (
            (self.input_shape,)
            if isinstance(self.input_shape, int)
            else tuple(self.input_shape)
        )
        if not input_shape or any(
            isinstance(d, bool) or not isinstance(d, int | np.integer) or d <= 0
            for d in input_shape
        ):
            raise ValueError(
                f"input_shape must be positive integers, got {self.input_shape!r}"
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in input_shape))
        shapes = tuple(chain_output_shapes(layers, self.input_shape))
        object.__setattr__(self, "shapes", shapes)
        if len(shapes[-1]) != 1:
            raise LayerShapeError(
                f"the network's output is {shape_str(shapes[-1])} but the loss needs "
                "(B, K): end with Flatten() and a Dense layer"
            )
        loss = get_loss(self.objective)
        last = layers[-1]
        if loss.needs_logits and isinstance(last, Activation):
            if last.name != "identity":
                raise ValueError(
                    f"objective {self.objective!r} takes the raw logits and applies "
                    f"the softmax itself, so the last layer cannot be {last}"
                )

    # ----------------------------------------------------------------- properties
    @property
    def num_outputs(self) -> int:
        """``K``, the width of the output."""
        return self.shapes[-1][0]

    @property
    def loss_fn(self) -> Loss:
        """The :class:`~jaxbp.losses.Loss` of ``objective``."""
        return get_loss(self.objective)

    @property
    def num_params(self) -> int:
        """The number of scalar parameters."""
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))

    def __str__(self) -> str:
        return f"Sequential({', '.join(map(str, self.layers))}; {self.objective})"

    def describe_layer(self, index: int) -> str:
        """``layer 3 of 8, Conv2D(50, 5x5)`` for the 1-based ``index``."""
        return f"layer {index} of {len(self.layers)}, {self.layers[index - 1]}"

    # ----------------------------------------------------------------- params
    def init(self, key: Array, *, dtype=jnp.float32) -> Params:
        """Draws initial parameters: a list with one dict per layer.

        Args:
          key: a ``jax.random`` key.
          dtype: float dtype of the parameters (``jnp.float64`` needs x64 enabled).
        """
        keys = jax.random.split(key, len(self.layers))
        return [
            layer.init(k, shape, dtype)
            for layer, k, shape in zip(self.layers, keys, self.shapes, strict=False)
        ]

    def init_state(self, *, dtype=jnp.float32) -> list:
        """The initial non-trained state: one entry per layer (``{}`` for most;
        BatchNorm's running mean and variance)."""
        return [
            layer.init_state(shape, dtype)
            for layer, shape in zip(self.layers, self.shapes, strict=False)
        ]

    # ----------------------------------------------------------------- model
    def apply(
        self, params: Params, x: Array, *, state=None, key=None, train: bool = False
    ) -> tuple[Array, list]:
        """The output and the new state: ``(y, new_state)``.

        Args:
          params: the parameter list.
          x: inputs ``(B, *input_shape)``.
          state: the running statistics from :meth:`init_state` (needed to evaluate
            a network with BatchNorm).
          key: a ``jax.random`` key for Dropout in training mode.
          train: batch statistics and dropout (``True``) or evaluation.
        """
        x = self.check_inputs(params, x)
        y, _, new_state = chain_forward(
            self.layers, params, x, states=state, key=key, train=train
        )
        return y, new_state

    def forward(
        self, params: Params, x: Array, *, state=None, key=None, train: bool = False
    ) -> Array:
        """The network output ``(B, K)`` (logits for ``softmax_cross_entropy``);
        evaluation mode unless ``train=True``."""
        return self.apply(params, x, state=state, key=key, train=train)[0]

    def per_example_loss(
        self, params: Params, x: Array, y: Array, *, key=None, train: bool = True
    ) -> Array:
        """The loss of each example, ``(B,)``; :meth:`loss` is its mean."""
        x, targets = self.check_batch(params, x, y)
        out, _, _ = chain_forward(self.layers, params, x, key=key, train=train)
        return self.loss_fn.per_example(out, targets)

    def loss(
        self, params: Params, x: Array, y: Array, *, key=None, train: bool = True
    ) -> Array:
        """The training objective: mean over the batch of the per-example loss.

        Args:
          params: the parameter list.
          x: inputs ``(B, *input_shape)``.
          y: integer labels ``(B,)`` or float targets ``(B, K)``.
          key: a ``jax.random`` key, for Dropout.
          train: ``False`` evaluates the loss with running statistics instead
            (which then needs ``state``, see :meth:`loss_and_state`).
        """
        return jnp.mean(self.per_example_loss(params, x, y, key=key, train=train))

    def loss_and_state(
        self, params: Params, x: Array, y: Array, *, state, key=None
    ) -> tuple[Array, list]:
        """The training loss and the state after this batch: ``(loss, new_state)``.

        ``jax.value_and_grad(net.loss_and_state, has_aux=True)`` is the autodiff
        counterpart of :meth:`value_and_manual_grad_with_state`.
        """
        x, targets = self.check_batch(params, x, y)
        out, _, new_state = chain_forward(
            self.layers, params, x, states=state, key=key, train=True
        )
        return self.loss_fn.value(out, targets), new_state

    # ----------------------------------------------------------------- gradients
    def deltas(
        self,
        params: Params,
        x: Array,
        targets: Array,
        *,
        batch_mean: bool = True,
        state=None,
        key=None,
    ) -> tuple[tuple[Array, list, list], list[Array]]:
        """The forward pass and the cotangent of every layer's output, by hand.

        ``deltas[i] = dL/dy_i``, the cotangent of layer ``i``'s output (0-based); for
        a Dense layer followed by an Activation it is the MLP's ``delta = dL/dz``.

        Args:
          params: the parameter list.
          x: checked inputs (:meth:`check_batch`).
          targets: float targets ``(B, K)`` (:meth:`check_batch`).
          batch_mean: deltas of the mean loss (divided by ``B``) or of each
            example's own loss.
          state: running statistics to update, or ``None``.
          key: a ``jax.random`` key, for Dropout.

        Returns:
          ``((out, caches, new_state), deltas)``: the output, every layer's cache
          and the new state, and one delta per layer.
        """
        out, caches, new_state = chain_forward(
            self.layers, params, x, states=state, key=key, train=True
        )
        # delta_n = dl/dy_n: for the fused softmax cross-entropy softmax(z) - y
        delta = self.loss_fn.grad_out(out, targets)
        if batch_mean:
            # L = (1/B) sum_i l_i  =>  dL/dy_n = (1/B) dl_i/dy_n
            delta = delta / x.shape[0]
        _, _, deltas = chain_backward(self.layers, params, caches, delta)
        return (out, caches, new_state), deltas

    def value_and_manual_grad_with_state(
        self, params: Params, x: Array, y: Array, *, state, key=None
    ) -> tuple[tuple[Array, list], Params]:
        """``((loss, new_state), grads)`` by the hand-derived rule, no autodiff.

        The same value as ``jax.value_and_grad(net.loss_and_state,
        has_aux=True)``.
        """
        x, targets = self.check_batch(params, x, y)
        out, caches, new_state = chain_forward(
            self.layers, params, x, states=state, key=key, train=True
        )
        # dL/dy_n = (1/B) dl_i/dy_n, then the delta rule down the chain
        delta = self.loss_fn.grad_out(out, targets) / x.shape[0]
        grads, _, _ = chain_backward(self.layers, params, caches, delta)
        return (self.loss_fn.value(out, targets), new_state), grads

    def value_and_manual_grad(
        self, params: Params, x: Array, y: Array, *, key=None
    ) -> tuple[Array, Params]:
        """The loss and its hand-derived gradient: ``(loss, grads)``.

        The analogue of ``jax.value_and_grad(net.loss)``, without autodiff.
        """
        (value, _), grads = self.value_and_manual_grad_with_state(
            params, x, y, state=None, key=key
        )
        return value, grads

    def manual_grad(self, params: Params, x: Array, y: Array, *, key=None) -> Params:
        """The gradient of :meth:`loss` by the hand-derived delta rule, no autodiff.

        Returns:
          Gradients with exactly the structure, shapes and dtypes of ``params``.
        """
        return self.value_and_manual_grad(params, x, y, key=key)[1]

    # ----------------------------------------------------------------- checks
    def check_params(self, params: Params) -> None:
        """Checks that ``params`` has the structure, shapes and dtype of
        :meth:`init`'s, naming the first leaf that differs."""
        if not isinstance(params, list) or len(params) != len(self.layers):
            got = (
                f"a list of {len(params)}"
                if isinstance(params, list)
                else type(params).__name__
            )
            raise ValueError(
                f"params must be a list with one entry per layer ({len(self.layers)}),"
                f" got {got}"
            )
        dtypes = {jnp.result_type(leaf) for leaf in jax.tree.leaves(params)}
        if len(dtypes) > 1 or not all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
            raise TypeError(
                "params must hold one floating-point dtype, got "
                f"{sorted(map(str, dtypes))}"
            )
        dtype = dtypes.pop() if dtypes else jnp.float32
        want = jax.eval_shape(lambda k: self.init(k, dtype=dtype), jax.random.key(0))
        for i, (p, w) in enumerate(zip(params, want, strict=True), start=1):
            if jax.tree.structure(p) != jax.tree.structure(w):
                raise ValueError(
                    f"params[{i - 1}] for {self.describe_layer(i)} has structure "
                    f"{jax.tree.structure(p)}, expected {jax.tree.structure(w)}"
                )
            got_leaves = jax.tree.leaves_with_path(p)
            for (path, leaf), ref in zip(got_leaves, jax.tree.leaves(w), strict=True):
                if tuple(jnp.shape(leaf)) != ref.shape:
                    raise ValueError(
                        f"params[{i - 1}]{jax.tree_util.keystr(path)} for "
                        f"{self.describe_layer(i)} has shape {tuple(jnp.shape(leaf))},"
                        f" expected {ref.shape}"
                    )

    def check_inputs(self, params: Params, x: Array) -> Array:
        """Checks ``params`` and ``x``; returns ``x`` in the parameters' dtype."""
        self.check_params(params)
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(leaves[0]) if leaves else jnp.result_type(float)
        return validation.check_x(x, self.input_shape, dtype)

    def check_batch(self, params: Params, x: Array, y: Array) -> tuple[Array, Array]:
        """Checks a batch; returns ``(x, targets)``, targets float ``(B, K)``."""
        x = self.check_inputs(params, x)
        return x, validation.check_targets(y, x, self.num_outputs)
