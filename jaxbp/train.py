"""Training: explicit state, a jitted step, a whole epoch as one compiled program.

The training state is a :class:`TrainState` ``NamedTuple`` of ``params``,
``opt_state``, ``step``, the PRNG ``key`` and the network's ``model_state``; every
function here is pure and returns a new state. The gradient comes from either the
hand-derived backward pass (``grad="manual"``, :meth:`jaxbp.MLP.value_and_manual_grad`)
or autodiff (``grad="autodiff"``, ``jax.value_and_grad(net.loss)``), and any optax
``GradientTransformation`` applies it. A learning rule of :mod:`jaxbp.feedback`
(``grad="feedback-alignment"``, ``"direct-feedback-alignment"`` or
``"sign-symmetry"``) takes the gradient's place: its fixed feedback matrices are
drawn from the seed by :func:`init_train_state`, live in ``TrainState.feedback`` and
never change, and :func:`train_epochs` measures the rule against ``jax.grad`` after
every epoch (and every ``align_every`` steps inside the epoch when asked).

The network is an :class:`~jaxbp.MLP` or a :class:`~jaxbp.Sequential`. A Sequential's
BatchNorm running statistics are ``model_state``: each step trains on the batch's own
statistics and returns the updated averages
(:meth:`~jaxbp.Sequential.value_and_manual_grad_with_state`, or
``jax.value_and_grad(net.loss_and_state, has_aux=True)``), and evaluation uses them.
Its Dropout layers draw their masks from :func:`dropout_key` of ``key`` and ``step``,
a different key every step and the same on a rerun.

An epoch (:func:`make_train_epoch`) is a single ``jax.jit`` program: it draws a
permutation of the example *indices* with ``jax.random``, cuts it into
``N // batch_size`` batches and runs a ``jax.lax.scan`` whose body gathers its batch
from the device-resident training set and takes one step. There is no Python dispatch
per step and no shuffled copy of the whole training set. The ``N % batch_size``
examples left over by each epoch's permutation (a different few every epoch) are not
trained on in that epoch; evaluation (:func:`make_evaluate`) covers every example.

:func:`train_epochs` is the loop over epochs: it compiles the epoch and the
evaluation once, runs the epoch once per epoch, checks the losses, evaluates and
reports each epoch (an :class:`EpochLog`). :func:`jaxbp.fit` runs it as a
:class:`~jaxbp.TrainConfig` says.

Every ``make_*`` function and :func:`train_epochs` take an optional ``mesh``: with a
``jax.sharding.Mesh`` from :func:`jaxbp.parallel.make_data_mesh` each batch is split
over the devices of its ``"data"`` axis and the parameters and optimizer state are
replicated (:func:`jaxbp.parallel.replicate`); the gradient is that of the whole
batch, as on one device. What a mesh changes is written once, in
:mod:`jaxbp.parallel`, whose functions are the identity without a mesh; without a mesh
nothing changes.
"""

import dataclasses
import functools
import numbers
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import feedback as rules
from jaxbp import parallel, per_example
from jaxbp.layers import BatchNorm, Conv2D, Dropout, Residual
from jaxbp.mlp import MLP, Params
from jaxbp.sequential import Sequential

Array = jax.Array
Net = MLP | Sequential

#: The sources of the true gradient a training step can use.
GRAD_KINDS = ("manual", "autodiff")

#: Everything a training step's ``grad`` takes: the true gradient
#: (:data:`GRAD_KINDS`) or a learning rule of :mod:`jaxbp.feedback` in its place.
GRADS = (*GRAD_KINDS, *rules.RULES)

#: How many training examples (the first ones) :func:`train_epochs` measures a
#: learning rule's alignment with the true gradient on after every epoch.
ALIGN_EXAMPLES = 1000

#: How :func:`make_train_epoch` runs an epoch's steps (:func:`default_loop`).
LOOPS = ("scan", "host")

#: How often an epoch reports its progress by default (:func:`make_train_epoch`'s
#: ``on_steps``), and how often :func:`train_epochs`' first epoch does. Each report
#: is a host callback costing about 1 ms on a busy 2-core machine; five are under
#: 1 % of the 784-100-10 MLP's 0.75 s MNIST epoch.
REPORTS_PER_EPOCH = 5

#: Once an epoch's pace is known, :func:`train_epochs` has the next report its
#: progress about this often (seconds), or not at all if it was shorter: a report a
#: second costs about 0.1 % of any epoch.
PROGRESS_INTERVAL_S = 1.0

#: Folded into ``TrainState.key`` before the step to draw Dropout masks (see
#: :func:`dropout_key`); any fixed number not used by another stream.
_DROPOUT_STREAM = 0x44524F50  # "DROP"

#: Folded into the seed's key to draw a learning rule's feedback matrices, so that
#: the parameters and shuffles are those of a backprop run from the same seed.
_FEEDBACK_STREAM = 0x46424B  # "FBK"


class TrainState(NamedTuple):
    """Everything that changes during training.

    Attributes:
      params: the network parameters (a list with one dict per layer).
      opt_state: the optax optimizer state.
      step: number of steps taken, an int32 scalar.
      key: the PRNG key from which each epoch's shuffle is split (and each step's
        dropout key folded).
      model_state: a :class:`~jaxbp.Sequential`'s non-trained state (BatchNorm's
        running statistics, :meth:`~jaxbp.Sequential.init_state`); ``None`` for an
        MLP.
      feedback: a learning rule's fixed feedback matrices
        (:func:`jaxbp.feedback.init_feedback`), which never change; ``None`` for
        backprop and sign symmetry.
    """

    params: Params
    opt_state: Any
    step: Array
    key: Array
    model_state: Any = None
    feedback: Any = None


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite."""


def init_train_state(
    net: Net,
    optimizer: optax.GradientTransformation,
    key: Array,
    *,
    dtype=jnp.float32,
    params: Params | None = None,
    grad: str = "manual",
    feedback: list | None = None,
) -> TrainState:
    """Initial training state: fresh (or given) parameters and optimizer state.

    Args:
      net: the network spec.
      optimizer: an optax ``GradientTransformation``.
      key: PRNG key; split into the parameter initialisation and the shuffling key
        (and, for a learning rule, folded with a fixed stream id to draw its
        feedback matrices, so that parameters and shuffles are those of backprop
        from the same key).
      dtype: parameter dtype for fresh parameters.
      params: start from these parameters instead of ``net.init``.
      grad: the gradient the state will train with (:data:`GRADS`); a rule
        of :mod:`jaxbp.feedback` that stores feedback matrices gets them here.
      feedback: the rule's matrices to use instead of drawing them.

    Returns:
      A :class:`TrainState` at step 0 (with a Sequential's initial
      ``model_state`` in the parameters' dtype).
    """
    value_and_grad_fn(net, grad)  # validate `grad` eagerly
    init_key, shuffle_key = jax.random.split(key)
    if params is None:
        params = net.init(init_key, dtype=dtype)
    else:
        net.check_params(params)
    leaves = jax.tree.leaves(params)
    params_dtype = jnp.result_type(leaves[0]) if leaves else dtype
    model_state = None
    if isinstance(net, Sequential):
        model_state = net.init_state(dtype=params_dtype)
    if grad in rules.RULES:
        if feedback is None:
            fb_key = jax.random.fold_in(key, _FEEDBACK_STREAM)
            feedback = rules.init_feedback(net, fb_key, grad, dtype=params_dtype)
        rules.check_feedback(net, params, feedback, grad)
    elif feedback is not None:
        raise ValueError(f"feedback matrices need a learning rule, not grad={grad!r}")
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=shuffle_key,
        model_state=model_state,
        feedback=feedback,
    )


def dropout_key(key: Array, step) -> Array:
    """The key of one training step's Dropout masks.

    Like :func:`jaxbp.per_example.dp_noise_key`, it folds in a fixed stream id before
    the step, so that it never equals a key split from ``key`` for a shuffle or
    another stream's key; each layer then folds in its index
    (:func:`jaxbp.layers.chain_forward`).

    Args:
      key: ``TrainState.key``.
      step: ``TrainState.step`` (a traced integer inside the compiled step).

    Returns:
      ``fold_in(fold_in(key, 0x44524F50), step)``.
    """
    return jax.random.fold_in(jax.random.fold_in(key, _DROPOUT_STREAM), step)


def _all_layers(layers):
    """Every layer of a chain, those inside Residual blocks included."""
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from _all_layers(layer.block)


def _uses(net: Net, kind) -> bool:
    """Whether a Sequential has a layer of this class anywhere."""
    return isinstance(net, Sequential) and any(
        isinstance(layer, kind) for layer in _all_layers(net.layers)
    )


def check_supported(
    net: Net,
    *,
    dp: "DPConfig | None" = None,
    mesh: jax.sharding.Mesh | None = None,
    grad: str = "manual",
) -> None:
    """Raises ``ValueError`` for a combination the training step cannot run.

    A learning rule of :mod:`jaxbp.feedback` trains on one device without DP-SGD,
    and direct feedback alignment only networks whose layers with parameters are
    all Dense (:func:`jaxbp.feedback.check_supported`).

    DP-SGD needs per-example gradients, which :mod:`jaxbp.per_example` gives an MLP
    and a Sequential without BatchNorm (:func:`jaxbp.per_example.check_per_example`
    names the layer); data parallelism splits the batch, so BatchNorm's batch
    statistics and Dropout's masks would differ from those of the whole batch on one
    device (a Sequential without them trains on a mesh like an MLP).
    """
    if grad in rules.RULES:
        rules.check_supported(net, grad)
        if dp is not None or mesh is not None:
            which = "DP-SGD" if dp is not None else "data-parallel training"
            raise ValueError(
                f"{which} is not supported with the learning rule {grad}; train it "
                "on one device without dp_clip"
            )
    if dp is not None:
        try:
            per_example.check_per_example(net)
        except ValueError as e:
            raise ValueError(
                f"DP-SGD (dp_clip) needs per-example gradients: {e}"
            ) from None
    if mesh is not None:
        parallel.num_data_shards(mesh)  # a mesh without a "data" axis is an error
        for kind, why in (
            (BatchNorm, "its batch statistics would be those of each device's share"),
            (Dropout, "each device would draw the same masks for its share"),
        ):
            if _uses(net, kind):
                raise ValueError(
                    f"data-parallel training of a network with {kind.__name__} is "
                    f"not supported ({why} of the batch); train on one device"
                )


def value_and_grad_fn(net: Net, grad: str, feedback=None) -> Callable:
    """``(params, x, y) -> (loss, grads)`` by the hand-derived rule or by autodiff,
    or a learning rule's ``(loss, updates)``.

    Args:
      net: the network spec.
      grad: one of :data:`GRADS`.
      feedback: a learning rule's matrices (``TrainState.feedback``).

    Raises:
      ValueError: for any other ``grad``.
    """
    if grad == "manual":
        return net.value_and_manual_grad
    if grad == "autodiff":
        return jax.value_and_grad(net.loss)
    if grad in rules.RULES:
        return functools.partial(_rule_value_and_grad, net, feedback, grad)
    raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")


def _rule_value_and_grad(net, feedback, rule, params, x, y):
    return rules.value_and_feedback_grad(net, params, feedback, x, y, rule)


def replicate_train_state(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Deprecated: :func:`jaxbp.parallel.replicate` (removed in the next release)."""
    warnings.warn(
        "jaxbp.train.replicate_train_state is deprecated and will be removed in the "
        "next release; use jaxbp.parallel.replicate(state, mesh)",
        DeprecationWarning,
        stacklevel=2,
    )
    return parallel.replicate(state, mesh)


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """DP-SGD for a training step (Abadi et al. 2016).

    Each example's gradient is clipped to L2 norm ``l2_norm_clip`` (computed without
    materialising per-example gradients, :mod:`jaxbp.per_example`), the clipped
    gradients are averaged, and Gaussian noise of std ``noise_multiplier *
    l2_norm_clip / B`` is added, with a key drawn per step by
    :func:`jaxbp.per_example.dp_noise_key`. No privacy accounting is done here.

    A small immutable, hashable value: checked once, when it is made, and trusted by
    the training step.

    Attributes:
      l2_norm_clip: the clipping norm ``C > 0`` (``inf``: no clipping).
      noise_multiplier: ``sigma >= 0``, the noise's std relative to ``C``.

    Raises:
      ValueError: if either is not a number, the clip is not positive or the noise
        multiplier is negative (:func:`jaxbp.per_example.check_dp_args`).

    Examples:
      >>> DPConfig(1.0, 1.1)
      DPConfig(l2_norm_clip=1.0, noise_multiplier=1.1)
      >>> DPConfig(0.0)
      Traceback (most recent call last):
      ...
      ValueError: l2_norm_clip must be positive, got 0.0
    """

    l2_norm_clip: float
    noise_multiplier: float = 0.0

    def __post_init__(self):
        for name in ("l2_norm_clip", "noise_multiplier"):
            value = getattr(self, name)
            number = isinstance(value, numbers.Real | np.ndarray | jax.Array)
            if isinstance(value, bool) or not number or np.ndim(value) != 0:
                raise ValueError(f"{name} must be a number, got {value!r}")
            # A Python float: hashable, so the config can be a static argument.
            object.__setattr__(self, name, float(value))
        per_example.check_dp_args(self.l2_norm_clip, self.noise_multiplier)


def _sequential_value_and_grad(net: Sequential, grad: str, state: TrainState, x, y):
    """``(loss, grads, model_state)`` of a Sequential on one batch."""
    key = dropout_key(state.key, state.step) if _uses(net, Dropout) else None
    if grad == "manual":
        (loss, model_state), grads = net.value_and_manual_grad_with_state(
            state.params, x, y, state=state.model_state, key=key
        )
    else:

        def loss_and_state(params):
            return net.loss_and_state(params, x, y, state=state.model_state, key=key)

        (loss, model_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
            state.params
        )
    return loss, grads, model_state


def _apply_step(net, optimizer, grad, state: TrainState, x, y, *, mesh=None, dp=None):
    """One optimisation step on a batch; returns the new state and the batch loss."""
    loss, grads, model_state = _step_grads(net, grad, state, x, y, mesh=mesh, dp=dp)
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        # The batch for optimizers that read it (K-FAC's factors), whole on every
        # device; others ignore it.
        x, y = parallel.whole_batch((x, y), mesh)
        updates, opt_state = optimizer.update(
            grads, state.opt_state, state.params, x=x, y=y
        )
    else:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state._replace(
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        step=state.step + 1,
        model_state=model_state,
    )
    return new_state, loss


def _step_grads(net, grad, state: TrainState, x, y, *, mesh=None, dp=None):
    """``(loss, grads, model_state)`` of one step: a rule's update in the gradient's
    place, DP-SGD's noised clipped mean, or the gradient."""
    if grad in rules.RULES:
        # The rule's update in the gradient's place; its feedback never changes.
        key = dropout_key(state.key, state.step) if _uses(net, Dropout) else None
        (loss, model_state), updates = rules.value_and_feedback_grad_with_state(
            net,
            state.params,
            state.feedback,
            x,
            y,
            grad,
            state=state.model_state,
            key=key,
        )
        return loss, updates, model_state
    if isinstance(net, Sequential) and mesh is None and dp is None:
        # Running statistics in, updated statistics out; a key for Dropout.
        return _sequential_value_and_grad(net, grad, state, x, y)
    # An MLP, a Sequential without state or randomness on a mesh, or DP-SGD (no
    # BatchNorm: check_supported): the plain value and gradient.
    if dp is None:
        value_and_grad = value_and_grad_fn(net, grad)
    else:
        # The clipped mean; its noise is added below, once, for the whole batch.
        value_and_grad = per_example.make_dp_value_and_grad(
            net, l2_norm_clip=dp.l2_norm_clip, method=grad
        )
        if _uses(net, Dropout):
            value_and_grad = functools.partial(
                value_and_grad, dropout_key=dropout_key(state.key, state.step)
            )

    # On a mesh: x and y split over "data"; the mean of the per-device gradients.
    loss, grads = parallel.data_parallel(value_and_grad, mesh)(state.params, x, y)
    if dp is not None and dp.noise_multiplier > 0:
        grads = per_example.add_dp_noise(
            grads,
            per_example.dp_noise_key(state.key, state.step),
            l2_norm_clip=dp.l2_norm_clip,
            noise_multiplier=dp.noise_multiplier,
            batch_size=x.shape[0],
        )
    return loss, grads, state.model_state


def make_train_step(
    net: Net,
    optimizer: optax.GradientTransformation,
    *,
    grad: str = "manual",
    mesh: jax.sharding.Mesh | None = None,
    dp: DPConfig | None = None,
) -> Callable[[TrainState, tuple[Array, Array]], tuple[TrainState, dict]]:
    """A jitted training step ``(state, (x, y)) -> (state, {"loss": scalar})``.

    Args:
      net: the network spec.
      optimizer: an optax ``GradientTransformation``.
      grad: ``"manual"`` (hand-derived delta rule), ``"autodiff"`` (``jax.grad``),
        or a learning rule of :mod:`jaxbp.feedback` (with ``state.feedback`` from
        :func:`init_train_state`).
      mesh: split each batch over the ``"data"`` axis of this mesh; ``state`` must be
        replicated on it (:func:`jaxbp.parallel.replicate`). The batch may be a global
        array assembled from process-local rows (:func:`jaxbp.parallel.global_batch`)
        or anything else, which is split inside the step.
      dp: clip per-example gradients and add noise (:class:`DPConfig`); the noise
        key of each step is drawn from ``state.key`` and ``state.step``.

    Returns:
      The compiled step. ``x`` is ``(B, *input_shape)`` float, ``y`` labels ``(B,)``
      or targets ``(B, K)``; ``loss`` is the batch loss *before* the update.

    Raises:
      ValueError: with a mesh, if ``B`` is not divisible by its device count (when the
        step is traced); for what :func:`check_supported` refuses.
    """
    value_and_grad_fn(net, grad)  # validate `grad` eagerly
    check_supported(net, dp=dp, mesh=mesh, grad=grad)

    @jax.jit
    def train_step(state: TrainState, batch):
        x, y = batch
        parallel.check_batch_size(x.shape[0], mesh)
        state, loss = _apply_step(net, optimizer, grad, state, x, y, mesh=mesh, dp=dp)
        return state, {"loss": loss}

    return train_step


def make_train_epoch(
    net: Net,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    grad: str = "manual",
    mesh: jax.sharding.Mesh | None = None,
    dp: DPConfig | None = None,
    on_steps: Callable[[int, int], None] | None = None,
    report_every: int | None = None,
    loop: str = "scan",
    align_every: int | None = None,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, dict]]:
    """A jitted epoch ``(state, x, y) -> (state, {"loss": (num_batches,)})``.

    The epoch splits ``state.key`` into this epoch's shuffle key and the next state's
    key, permutes the example indices, and scans over ``N // batch_size`` batches,
    gathering each one from ``x`` and ``y`` inside the loop. With ``on_steps`` it
    also takes ``report_every`` as a fourth argument (an integer array, so that it
    can change from call to call without a recompile).

    With ``loop="host"`` the same steps, on the same batches, run as one compiled
    call each from a Python loop instead (see :func:`default_loop`: XLA:CPU runs
    ``jax.grad``'s convolution backward several times slower inside a compiled
    loop). The result is the same program step by step; it has ``lower(...)`` and
    ``compile()`` like a jitted function, so :func:`train_epochs` treats both
    alike.

    Args:
      net: the network spec.
      optimizer: an optax ``GradientTransformation``.
      batch_size: examples per step.
      grad: ``"manual"``, ``"autodiff"`` or a learning rule (:data:`GRADS`).
      mesh: split each batch over the ``"data"`` axis of this mesh. ``state``, ``x``
        and ``y`` must be replicated on it (:func:`jaxbp.parallel.replicate`); each
        device gathers its own rows of every batch from its copy of the training
        set.
      dp: DP-SGD clipping and noise for every step (:class:`DPConfig`).
      on_steps: called on the host as ``on_steps(done, num_batches)`` while the
        epoch runs, after every ``report_every`` steps (through
        ``jax.debug.callback``; the order of calls is not guaranteed). ``None``
        compiles no callback. The results are the same either way.
      report_every: steps between calls of ``on_steps`` when the epoch is called
        without a ``report_every`` of its own; default
        ``ceil(num_batches / REPORTS_PER_EPOCH)``.
      loop: ``"scan"`` (one compiled program per epoch) or ``"host"`` (one per
        step; not with a ``mesh``).
      align_every: with a learning rule of :mod:`jaxbp.feedback`, measure it
        against ``jax.grad`` (:func:`jaxbp.feedback.alignment`) on the batch of
        every step whose global step count (before it) is a multiple of this,
        before the update; the metrics then hold ``"step"`` (each step's count
        before it) and ``"alignment"``, a dict of ``(num_batches, num_dense)``
        arrays, ``nan`` on the steps not measured. Only with ``loop="scan"``.

    Returns:
      The compiled epoch. ``x`` is ``(N, *input_shape)`` float (or ``uint8``
      pixels, which are scaled to ``[0, 1]`` batch by batch), ``y`` labels ``(N,)``
      or targets ``(N, K)``. ``metrics["loss"]`` holds each step's batch loss.

    Raises:
      ValueError: if ``batch_size`` is not positive, not divisible by the mesh's
        device count, or exceeds ``N`` (at call time); for what
        :func:`check_supported` refuses.
    """
    _check_epoch_args(
        net,
        grad,
        batch_size=batch_size,
        mesh=mesh,
        dp=dp,
        report_every=report_every,
        loop=loop,
        align_every=align_every,
    )
    batches = functools.partial(_epoch_batches, batch_size=batch_size)
    step = functools.partial(_batch_step, net, optimizer, grad, mesh=mesh, dp=dp)

    def default_every(num_batches: int) -> int:
        return report_every or -(-num_batches // REPORTS_PER_EPOCH)

    if loop == "host":
        batches = jax.jit(batches, static_argnums=1)
        return _HostLoopEpoch(batches, jax.jit(step), on_steps, default_every)
    measure = None
    if align_every is not None:
        measure = functools.partial(_measure_alignment, net, grad, align_every, mesh)
    return _scan_epoch(batches, step, measure, on_steps, default_every)


def _check_epoch_args(
    net, grad, *, batch_size, mesh, dp, report_every, loop, align_every
) -> None:
    """Raises ValueError for what :func:`make_train_epoch` refuses, at once."""
    value_and_grad_fn(net, grad)
    check_supported(net, dp=dp, mesh=mesh, grad=grad)
    if align_every is not None:
        if grad not in rules.RULES:
            raise ValueError(
                f"align_every measures a learning rule against the true gradient; "
                f"grad must be one of {', '.join(rules.RULES)}, got {grad!r}"
            )
        if isinstance(align_every, bool) or not align_every > 0:
            raise ValueError(f"align_every must be positive, got {align_every}")
        if loop == "host":
            raise ValueError('align_every needs loop="scan"')
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    parallel.check_batch_size(batch_size, mesh)
    if report_every is not None and report_every <= 0:
        raise ValueError(f"report_every must be positive, got {report_every}")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "host" and mesh is not None:
        raise ValueError('loop="host" runs on one device; use loop="scan" with a mesh')


def _epoch_batches(state: TrainState, n: int, *, batch_size: int):
    """This epoch's batches of example indices ``(n // batch_size, batch_size)``
    and the next state's key."""
    num_batches = n // batch_size
    if num_batches == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} examples")
    key, next_key = jax.random.split(state.key)
    order = _shuffled_indices(key, n)[: num_batches * batch_size]
    return order.reshape(num_batches, batch_size), next_key


def _take_batch(state: TrainState, x: Array, y: Array, idx: Array, mesh):
    """The examples ``idx`` of ``(x, y)``, pixels as floats (on a mesh, each device
    gathers its own rows)."""
    xb, yb = parallel.take_rows((x, y), idx, mesh)
    return _as_float(xb, state.params), yb


def _batch_step(net, optimizer, grad, state: TrainState, x, y, idx, *, mesh, dp):
    """One step on the examples ``idx`` of ``(x, y)``: ``(state, loss)``."""
    xb, yb = _take_batch(state, x, y, idx, mesh)
    return _apply_step(net, optimizer, grad, state, xb, yb, mesh=mesh, dp=dp)


def _measure_alignment(net, grad, every, mesh, state: TrainState, x, y, idx) -> dict:
    """The rule's alignment on this step's batch, or ``nan`` between measurements
    (only the measured branch runs)."""
    xb, yb = _take_batch(state, x, y, idx, mesh)
    shape = jax.eval_shape(lambda: align_metrics(net, grad, state, xb, yb))
    return jax.lax.cond(
        state.step % every == 0,
        lambda: align_metrics(net, grad, state, xb, yb),
        lambda: jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shape),
    )


def _scan_epoch(batches, step, measure, on_steps, default_every) -> Callable:
    """:func:`make_train_epoch`'s epoch with ``loop="scan"``: one ``jax.jit``
    program, a ``lax.scan`` of ``step`` over the epoch's batches."""

    @jax.jit
    def train_epoch(state: TrainState, x: Array, y: Array, every=None):
        order, next_key = batches(state, x.shape[0])
        num_batches = order.shape[0]
        first_step = state.step
        if every is None:
            every = default_every(num_batches)

        def body(state, idx):
            out = {}
            if measure is not None:
                out = {"step": state.step, "alignment": measure(state, x, y, idx)}
            state, out["loss"] = step(state, x, y, idx)
            if on_steps is not None:
                _report(on_steps, state.step - first_step, num_batches, every)
            return state, out

        state, metrics = jax.lax.scan(body, state, order)
        return state._replace(key=next_key), metrics

    return train_epoch


class _HostLoopEpoch:
    """:func:`make_train_epoch`'s epoch with ``loop="host"``: the scan's steps,
    each one compiled call, from Python. ``lower(...).compile()`` compiles both
    programs ahead of time and returns the epoch itself."""

    def __init__(self, batches, step, on_steps, default_every):
        self._batches, self._step = batches, step
        self._on_steps, self._default_every = on_steps, default_every

    def lower(self, state: TrainState, x: Array, y: Array, every=None):
        order, _ = self._batches(state, x.shape[0])
        step = self._step.lower(state, x, y, order[0]).compile()
        return _HostLoopEpoch(self._batches, step, self._on_steps, self._default_every)

    def compile(self):
        return self

    def __call__(self, state: TrainState, x: Array, y: Array, every=None):
        order, next_key = self._batches(state, x.shape[0])
        num_batches = order.shape[0]
        every = self._default_every(num_batches) if every is None else int(every)
        losses = []
        for i in range(num_batches):
            state, loss = self._step(state, x, y, order[i])
            losses.append(loss)
            if self._on_steps is not None and (i + 1) % every == 0:
                loss.block_until_ready()  # report steps done, not steps dispatched
                self._on_steps(i + 1, num_batches)
        return state._replace(key=next_key), {"loss": jnp.stack(losses)}


def align_metrics(net: Net, grad: str, state: TrainState, x: Array, y: Array) -> dict:
    """:func:`jaxbp.feedback.alignment` of the rule ``grad`` in ``state`` on a batch
    of float inputs (with the step's Dropout key, as the step itself draws it)."""
    key = dropout_key(state.key, state.step) if _uses(net, Dropout) else None
    return rules.alignment(net, state.params, state.feedback, x, y, grad, key=key)


def default_loop(net: Net, grad: str, mesh: jax.sharding.Mesh | None = None) -> str:
    """How :func:`train_epochs` runs an epoch's steps: ``"scan"``, or ``"host"`` for
    ``jax.grad`` of a network with a Conv2D on a CPU without a mesh.

    XLA:CPU lowers the weight gradient of ``jax.grad``'s convolution to a fast
    canonical convolution in a program of one step, but not inside a compiled loop:
    there Caffe's LeNet took 202 ms a step against 39 ms (batch 64, 2-core EPYC,
    ``experiments/bench_lenet.py``). The hand-derived backward's im2col products do
    not have the problem (23 ms a step inside the scan).
    """
    slow = grad == "autodiff" and _uses(net, Conv2D) and mesh is None
    return "host" if slow and jax.default_backend() == "cpu" else "scan"


def _report(on_steps, done: Array, total: int, every) -> None:
    """Inside the epoch: ``on_steps(done, total)`` on the host every ``every`` steps
    (a Python or traced integer; more than ``total``: never)."""

    def call():
        jax.debug.callback(lambda d: on_steps(int(d), total), done)

    jax.lax.cond(done % every == 0, call, lambda: None)


def _shuffled_indices(key: Array, n: int) -> Array:
    """A uniformly random order of ``range(n)``: the argsort of ``n`` random words.

    One sort instead of the two of ``jax.random.permutation`` (about half the cost
    for n = 60,000 on a CPU). Equal words (about ``n^2 / 2^33`` pairs, under one per
    epoch for MNIST) keep their index order, a negligible bias.
    """
    return jnp.argsort(jax.random.bits(key, (n,), jnp.uint32)).astype(jnp.int32)


def _params_dtype(params: Params):
    """The floating dtype of the parameters (their first leaf's)."""
    return jnp.result_type(jax.tree.leaves(params)[0])


def _as_float(x: Array, params: Params) -> Array:
    """Scales integer pixels to ``[0, 1]`` in the parameters' dtype; floats pass."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        dtype = _params_dtype(params)
        return x.astype(dtype) / jnp.asarray(255, dtype)
    return x


def make_evaluate(
    net: Net, *, batch_size: int = 1000, mesh: jax.sharding.Mesh | None = None
) -> Callable[..., dict]:
    """A jitted evaluation ``(params, x, y, model_state=None) -> {"loss",
    "accuracy"}`` over all examples.

    The data is padded up to a multiple of ``batch_size`` and the padding masked out,
    so every example counts exactly once whatever ``N`` is. A
    :class:`~jaxbp.Sequential` is evaluated in evaluation mode: BatchNorm uses the
    running statistics ``model_state`` (``TrainState.model_state``), Dropout is the
    identity.

    Args:
      net: the network spec.
      batch_size: examples per evaluation batch (memory, not results); with a mesh,
        rounded up to a multiple of its device count.
      mesh: split each evaluation batch over the ``"data"`` axis of this mesh (each
        device sums its share; one ``psum`` at the end). ``params``, ``x`` and ``y``
        must be replicated on it.

    Returns:
      The compiled evaluation; ``loss`` is the mean per-example loss, ``correct`` the
      number of examples whose arg-max output equals the label (arg-max of the target
      row for float targets) and ``accuracy`` that number over ``N``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batch_size = parallel.round_up_batch_size(batch_size, mesh)
    # On a mesh each device takes its columns of every batch; one psum at the end.
    totals = parallel.data_parallel_sum(functools.partial(_eval_totals, net), mesh)

    @jax.jit
    def evaluate(params: Params, x: Array, y: Array, model_state=None):
        n = x.shape[0]
        num_batches = -(-n // batch_size)
        pad = num_batches * batch_size - n
        mask = jnp.arange(num_batches * batch_size) < n
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        y = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1))

        def split(a):
            return a.reshape((num_batches, batch_size) + a.shape[1:])

        zero = jnp.zeros((), _params_dtype(params))
        init = (zero, jnp.zeros((), jnp.int32))
        batches = (split(x), split(y), split(mask))
        loss_sum, correct = totals(init, (params, model_state), batches)
        return {"loss": loss_sum / n, "accuracy": correct / n, "correct": correct}

    return evaluate


def _eval_totals(net: Net, init, replicated, batches):
    """``(loss sum, correct count)`` over a stack of padded batches, from ``init``;
    the padding (``mask`` false) counts for nothing."""
    params, model_state = replicated

    def body(totals, batch):
        xb, yb, mb = batch
        xb, targets = net.check_batch(params, _as_float(xb, params), yb)
        # One forward pass for loss and accuracy.
        if isinstance(net, Sequential):
            out = net.forward(params, xb, state=model_state)
        else:
            out = net.forward(params, xb)
        per_example = net.loss_fn.per_example(out, targets)
        labels = yb if yb.ndim == 1 else jnp.argmax(yb, axis=-1)
        correct = jnp.argmax(out, axis=-1) == labels
        loss_sum = jnp.sum(jnp.where(mb, per_example, 0))
        correct_sum = jnp.sum(jnp.where(mb, correct, False), dtype=jnp.int32)
        return (totals[0] + loss_sum, totals[1] + correct_sum), None

    return jax.lax.scan(body, init, batches)[0]


def check_finite(losses, first_step: int) -> None:
    """Raises :class:`DivergenceError` naming the first step whose loss is not finite.

    Args:
      losses: the per-step losses of an epoch (host or device array).
      first_step: the global step number of ``losses[0]`` (1-based).
    """
    losses = np.asarray(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        i = int(bad[0])
        raise DivergenceError(
            f"training diverged: the loss is {losses[i]} at step {first_step + i}; "
            "try a smaller learning rate"
        )


class EpochLog(NamedTuple):
    """What one epoch of :func:`train_epochs` (and :func:`jaxbp.fit`) measured.

    Attributes:
      epoch: 1-based epoch number.
      step: global step count after the epoch.
      train_loss: mean of the epoch's batch losses (each taken before its update).
      test_loss: mean loss on the evaluation set (``nan`` without one).
      test_accuracy: accuracy on the evaluation set (``nan`` without one).
      epoch_time_s: wall time of the training epoch, compilation excluded.
      samples_per_s: examples trained per second in that time.
      alignment: for a learning rule, :func:`jaxbp.feedback.alignment` after the
        epoch on the first :data:`ALIGN_EXAMPLES` training examples: each metric a
        list with one number per Dense layer (``None`` where undefined); ``None``
        for backprop.
      alignment_steps: with ``align_every``, the measurements inside the epoch:
        one dict per measured step, ``{"step": count before it, metric: [...]}``.
    """

    epoch: int
    step: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    epoch_time_s: float
    samples_per_s: float
    alignment: dict | None = None
    alignment_steps: list | None = None


def _per_layer(values) -> list:
    """A host list of one metric's per-layer values, ``nan`` as ``None`` (JSON)."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values)]


def _step_alignments(metrics: dict) -> list[dict] | None:
    """The measured rows of an epoch's per-step alignment metrics."""
    if "alignment" not in metrics:
        return None
    steps = np.asarray(metrics["step"])
    table = {k: np.asarray(v) for k, v in metrics["alignment"].items()}
    measured = ~np.all(np.isnan(table["update_angle"]), axis=1)
    return [
        {"step": int(steps[i]), **{k: _per_layer(v[i]) for k, v in table.items()}}
        for i in np.flatnonzero(measured)
    ]


class EpochProgress(NamedTuple):
    """Where an epoch of :func:`train_epochs` (and :func:`jaxbp.fit`) stands while
    it runs.

    Attributes:
      epoch: 1-based epoch number.
      epochs: the epoch training stops after.
      done: steps of this epoch taken so far.
      steps: steps in the epoch.
      elapsed_s: seconds since the epoch started.
    """

    epoch: int
    epochs: int
    done: int
    steps: int
    elapsed_s: float


def train_epochs(
    net: Net,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    train_data: tuple[Array, Array],
    *,
    epochs: int,
    batch_size: int,
    grad: str = "manual",
    test_data: tuple[Array, Array] | None = None,
    start_epoch: int = 0,
    eval_batch_size: int = 1000,
    on_epoch: Callable[[TrainState, EpochLog], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    dp: DPConfig | None = None,
    on_progress: Callable[[EpochProgress], None] | None = None,
    loop: str | None = None,
    align_every: int | None = None,
) -> tuple[TrainState, list[EpochLog], dict]:
    """Trains for ``epochs - start_epoch`` epochs, evaluating after each.

    The loop over epochs under :func:`jaxbp.fit`, for any network, optimizer and
    data. Compiles the epoch once ahead of time (its compile time is reported on its
    own), runs it once per epoch, checks on the host after every epoch that no
    step's loss was NaN or infinite, and evaluates on ``test_data``.

    Args:
      net: the network spec.
      optimizer: the optax optimizer ``state.opt_state`` belongs to.
      state: the starting :class:`TrainState` (fresh, or restored to resume).
      train_data: ``(x, y)``, ``x`` ``(N, *input_shape)`` float or ``uint8``.
      epochs: the epoch to stop after (counting from the start of training).
      batch_size: examples per step.
      grad: ``"manual"``, ``"autodiff"`` or a learning rule (:data:`GRADS`).
      test_data: optional ``(x, y)`` to evaluate on after each epoch.
      start_epoch: how many epochs ``state`` has already trained (to resume).
      eval_batch_size: evaluation batch size.
      on_epoch: called with ``(state, log)`` after each epoch (to print, to save a
        checkpoint).
      mesh: train data-parallel over the ``"data"`` axis of this mesh: ``state`` and
        both datasets are first replicated on it (:func:`jaxbp.parallel.replicate`),
        each batch is split over its devices (``batch_size`` must be divisible by
        their number).
      dp: train with DP-SGD's per-example clipping and noise (:class:`DPConfig`).
      on_progress: called with an :class:`EpochProgress` as each epoch starts,
        while it runs (from inside the compiled epoch, :func:`make_train_epoch`'s
        ``on_steps``: :data:`REPORTS_PER_EPOCH` times in the first epoch, then
        about every :data:`PROGRESS_INTERVAL_S` at the pace of the epoch before,
        or not at all if that epoch was shorter) and when it ends: to show
        progress. It must return quickly; the results do not depend on it.
      loop: how an epoch runs its steps (:func:`make_train_epoch`); ``None``: as
        :func:`default_loop` says for this network, gradient and backend.
      align_every: with a learning rule, also measure it against ``jax.grad``
        every this many steps inside the epoch (:func:`make_train_epoch`; the
        epoch time then includes the measurements). With a rule, the alignment on
        the first :data:`ALIGN_EXAMPLES` training examples is measured after every
        epoch regardless, outside the epoch time.

    Returns:
      ``(state, logs, timing)``: the final state, one :class:`EpochLog` per epoch run,
      and ``{"compile_s": ..., "eval_compile_s": ...}``.

    Raises:
      DivergenceError: naming the first step whose loss was not finite.
    """
    # On a mesh: the state and both datasets whole on every device.
    state, (x, y), test_data = parallel.replicate(
        (state, _as_arrays(train_data), _as_arrays(test_data)), mesh
    )
    progress = _Progress(on_progress, epochs)
    train_epoch = make_train_epoch(
        net,
        optimizer,
        batch_size=batch_size,
        grad=grad,
        mesh=mesh,
        dp=dp,
        on_steps=progress.on_steps,
        loop=default_loop(net, grad, mesh) if loop is None else loop,
        align_every=align_every,
    )
    steps_per_epoch = x.shape[0] // batch_size
    progress.pace(steps_per_epoch)
    t0 = time.perf_counter()
    compiled = train_epoch.lower(state, x, y, *progress.every).compile()
    timing = {"compile_s": time.perf_counter() - t0}
    evaluate, timing["eval_compile_s"] = _compile_evaluation(
        net, state, test_data, batch_size=eval_batch_size, mesh=mesh
    )
    align = _make_align(net, grad, x, y)
    logs = []
    for epoch in range(start_epoch + 1, epochs + 1):
        state, log = _run_epoch(
            compiled,
            state,
            (x, y),
            epoch,
            progress=progress,
            evaluate=evaluate,
            align=align,
            trained=steps_per_epoch * batch_size,
        )
        logs.append(log)
        if on_epoch is not None:
            on_epoch(state, log)
    return state, logs, timing


def _as_arrays(data):
    """``(x, y)`` as device arrays; ``None`` stays ``None``."""
    return None if data is None else tuple(jnp.asarray(a) for a in data)


class _Progress:
    """:func:`train_epochs`' reports to ``on_progress`` (none without it): where the
    running epoch stands, and the steps between reports from inside the compiled
    epoch (its fourth argument, :attr:`every`; see :meth:`pace`)."""

    def __init__(self, on_progress, epochs: int):
        self.on_progress, self.epochs = on_progress, epochs
        self.epoch, self.steps, self.t0 = 0, 0, 0.0
        self.every = ()  # no fourth argument without progress reports
        self.on_steps = None if on_progress is None else self._on_steps
        self.held: KeyboardInterrupt | None = None

    def pace(self, steps: int, elapsed: float | None = None) -> None:
        """Sets :attr:`every` for epochs of ``steps`` steps: a fifth of the first
        epoch; after an epoch of ``elapsed`` seconds, about one report a
        :data:`PROGRESS_INTERVAL_S` at its pace, or none (more steps than the epoch
        has) if it was shorter."""
        self.steps = steps
        if self.on_progress is None:
            return
        if elapsed is None:
            every = -(-steps // REPORTS_PER_EPOCH)
        else:
            every = min(max(round(steps * PROGRESS_INTERVAL_S / elapsed), 1), steps + 1)
        self.every = (jnp.asarray(every, jnp.int32),)

    def _on_steps(self, done: int, steps: int) -> None:
        """From inside the compiled epoch: ``done`` of its ``steps`` taken.

        A Ctrl-C that lands here is held (:meth:`raise_held`): raised inside XLA's
        callback it would end the epoch as an internal runtime error, not as the
        ``KeyboardInterrupt`` it is. The epoch cannot stop part-way either way.
        """
        elapsed = time.perf_counter() - self.t0
        try:
            self.on_progress(
                EpochProgress(self.epoch, self.epochs, done, steps, elapsed)
            )
        except KeyboardInterrupt as e:
            self.held = e

    def raise_held(self) -> None:
        """Raises a ``KeyboardInterrupt`` held during the epoch, if any."""
        held, self.held = self.held, None
        if held is not None:
            raise held

    def start(self, epoch: int) -> float:
        """Reports that ``epoch`` starts; returns its start time."""
        if self.on_progress is not None:
            self.on_progress(EpochProgress(epoch, self.epochs, 0, self.steps, 0.0))
        self.epoch, self.t0 = epoch, time.perf_counter()
        return self.t0

    def end(self, elapsed: float) -> None:
        """Reports that the epoch ended, and paces the next one's reports."""
        if self.on_progress is not None:
            steps = self.steps
            done = EpochProgress(self.epoch, self.epochs, steps, steps, elapsed)
            self.on_progress(done)
            self.pace(steps, elapsed)


def _compile_evaluation(net, state: TrainState, test_data, *, batch_size, mesh):
    """``(evaluate, compile_s)``: ``evaluate(state) -> (test_loss, test_accuracy)``,
    compiled ahead of time; ``nan`` for both without test data."""
    if test_data is None:
        return (lambda state: (float("nan"), float("nan"))), 0.0
    xt, yt = test_data
    t0 = time.perf_counter()
    compiled = make_evaluate(net, batch_size=batch_size, mesh=mesh)
    compiled = compiled.lower(state.params, xt, yt, state.model_state).compile()
    compile_s = time.perf_counter() - t0

    def evaluate(state: TrainState) -> tuple[float, float]:
        result = compiled(state.params, xt, yt, state.model_state)
        return float(result["loss"]), int(result["correct"]) / xt.shape[0]

    return evaluate, compile_s


def _make_align(net, grad: str, x: Array, y: Array):
    """A learning rule's jitted ``state -> alignment`` on the first
    :data:`ALIGN_EXAMPLES` training examples; ``None`` for backprop."""
    if grad not in rules.RULES:
        return None
    # A fixed batch, so that the epochs' measurements are comparable.
    xa, ya = x[:ALIGN_EXAMPLES], y[:ALIGN_EXAMPLES]

    @jax.jit
    def align(state):
        return align_metrics(net, grad, state, _as_float(xa, state.params), ya)

    return align


def _run_epoch(
    compiled, state: TrainState, data, epoch: int, *, progress, evaluate, align, trained
) -> tuple[TrainState, EpochLog]:
    """One epoch of :func:`train_epochs`: train, check the losses, evaluate, log."""
    x, y = data
    first_step = int(state.step) + 1
    t0 = progress.start(epoch)
    state, metrics = compiled(state, x, y, *progress.every)
    losses = np.asarray(metrics["loss"])  # waits for the epoch to finish
    progress.raise_held()  # a Ctrl-C during the epoch: this epoch is not kept
    elapsed = time.perf_counter() - t0
    progress.end(elapsed)
    check_finite(losses, first_step)
    test_loss, test_accuracy = evaluate(state)
    log = EpochLog(
        epoch=epoch,
        step=int(state.step),
        train_loss=float(losses.mean()),
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        epoch_time_s=elapsed,
        samples_per_s=trained / elapsed,
    )
    if align is not None:
        log = log._replace(
            alignment={k: _per_layer(v) for k, v in align(state).items()},
            alignment_steps=_step_alignments(metrics),
        )
    return state, log
