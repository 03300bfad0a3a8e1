"""The description of a training run, and the one function that builds it.

:class:`TrainConfig` is a frozen dataclass holding every setting that decides what a
run computes: dataset, network, gradient, optimizer, schedule, batch size, epochs,
seed, dtype and DP-SGD. ``jaxbp train`` builds one from its flags (its flag defaults
are this class's defaults), writes it to ``metrics.json`` and into the checkpoint, and
on ``--resume`` compares it with the saved one (:meth:`TrainConfig.differences`).
Where files live, how many devices share the work and where results go are not part
of it: they do not change what is computed. An invalid setting raises
:class:`ConfigError`, a ``ValueError`` whose ``field`` names the setting.

The network is the MLP of ``hidden`` and ``activation`` unless ``model`` names a
preset or gives a spec string of layers (:mod:`jaxbp.models`); the config then holds
the canonical spec, so a run records exactly the layers it trained.

:func:`setup` turns a config into the network, optimizer, data and initial training
state (:class:`TrainSetup`); :func:`fit` (``jaxbp.fit``) trains it as configured,
through the loop over epochs :func:`jaxbp.train.train_epochs`. The same two calls
are what ``jaxbp train`` runs, so a run from Python and from the command line with
the same settings end on the same parameters.

Examples:
  >>> config = TrainConfig(hidden=(30,), activation="sigmoid", optimizer="sgd")
  >>> config.lr, config.sizes
  (1.0, (784, 30, 10))
  >>> for name, old, new in TrainConfig().differences(config):
  ...     print(name, old, new)
  hidden (100,) (30,)
  activation relu sigmoid
  optimizer adam sgd
  lr 0.002 1.0
"""

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import data, feedback, models, optim, train
from jaxbp.activations import ACTIVATIONS
from jaxbp.curvature.network import check_supported as check_kfac_supported
from jaxbp.layers import LayerShapeError
from jaxbp.losses import LOSSES
from jaxbp.mlp import MLP
from jaxbp.sequential import Sequential

#: The dtypes a run can train in.
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """An invalid :class:`TrainConfig` setting, and which setting it is.

    Still a ``ValueError``. The message (``str(error)``) is the library's, naming
    settings as Python spells them; a caller that names them otherwise (the command
    line's flags) prefixes its own name for :attr:`field` and leaves the message as
    it is.

    Attributes:
      field: the offending setting's name, e.g. ``"grad"``; for a combination, the
        setting that does not fit the others (``align_every`` without a learning
        rule, ``dp_noise`` without ``dp_clip``).
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting that decides what a training run computes.

    Attributes:
      dataset: ``fashion_mnist`` or ``mnist`` (``fashion-mnist`` is accepted).
      hidden: the MLP's hidden layer widths; ``()`` for none. The input and output
        widths come from the dataset (:attr:`sizes`).
      activation: the MLP's hidden-layer activation (:mod:`jaxbp.activations`).
      output_activation: the MLP's output activation; ``softmax_cross_entropy``
        needs ``identity``.
      loss: the objective (:mod:`jaxbp.losses`), the mean over the batch.
      grad: ``manual`` (the hand-derived delta rule), ``autodiff`` (``jax.grad``),
        or a learning rule of :mod:`jaxbp.feedback`: ``feedback-alignment``,
        ``direct-feedback-alignment`` or ``sign-symmetry`` (its feedback matrices
        drawn from ``seed``).
      optimizer: one of :data:`jaxbp.optim.OPTIMIZERS`. ``kfac`` refuses DP-SGD,
        the learning rules and layers its curvature code has no rule for
        (BatchNorm, LayerNorm, Dropout, ...).
      lr: the (peak) learning rate; ``None`` (the default) takes the optimizer's
        default from :data:`jaxbp.optim.DEFAULT_LEARNING_RATES`, and the config then
        holds that number. (So ``dataclasses.replace(config, optimizer="sgd")`` keeps
        the old rate; pass ``lr=None`` with it to take SGD's default.)
      schedule: ``cosine`` (decay to zero over the run) or ``constant``.
      batch_size: examples per step.
      epochs: passes over the training set.
      seed: seeds the initial parameters and every epoch's shuffle.
      dtype: ``float32`` or ``float64`` (parameters and arithmetic; ``float64``
        needs x64 enabled).
      dp_clip: DP-SGD: clip each example's gradient to this L2 norm; ``None`` for
        ordinary training.
      dp_noise: DP-SGD: Gaussian noise multiplier (std ``dp_noise * dp_clip`` on the
        sum of clipped gradients); needs ``dp_clip``.
      model: ``None`` for the MLP of ``hidden``, ``activation`` and
        ``output_activation``; else a preset name (:data:`jaxbp.models.PRESETS`,
        e.g. ``"lenet"``) or a spec string of layers
        (``"reshape(28,28,1),conv(20,5),...,dense(10)"``, :mod:`jaxbp.models`),
        stored as its canonical spec. Its input is the dataset's flat ``(784,)``
        pixels and its last layer must give one output per class. ``"mlp"`` is
        ``None``.
      align_every: with a learning rule, also measure its alignment with the true
        gradient every this many steps (:func:`fit`); ``None``: after
        every epoch only.

    Raises:
      ConfigError: naming the setting, if any is unknown or out of range, or if
        ``model`` is set together with MLP settings other than their defaults.
    """

    dataset: str = "fashion_mnist"
    hidden: tuple[int, ...] = (100,)
    activation: str = "relu"
    output_activation: str = "identity"
    loss: str = "softmax_cross_entropy"
    grad: str = "manual"
    optimizer: str = "adam"
    lr: float | None = None
    schedule: str = "cosine"
    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    dtype: str = "float32"
    dp_clip: float | None = None
    dp_noise: float = 0.0
    model: str | None = None
    align_every: int | None = None

    def __post_init__(self):
        def setting(name, value):
            object.__setattr__(self, name, value)

        try:
            setting("dataset", data.dataset_spec(self.dataset).name)
        except (ValueError, AttributeError):
            _invalid("dataset", self.dataset, f"one of {', '.join(data.DATASETS)}")
        try:
            hidden = tuple(self.hidden)
        except TypeError:
            hidden = None
        if hidden is None or not all(_is_int(w) and w > 0 for w in hidden):
            _invalid("hidden", self.hidden, "a tuple of positive integers")
        setting("hidden", tuple(int(w) for w in hidden))
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("output_activation", self.output_activation, ACTIVATIONS)
        _choice("loss", self.loss, LOSSES)
        _choice("grad", self.grad, train.GRADS)
        _choice("optimizer", self.optimizer, optim.OPTIMIZERS)
        _choice("schedule", self.schedule, optim.SCHEDULES)
        _choice("dtype", self.dtype, DTYPES)
        if self.lr is None:
            setting("lr", optim.DEFAULT_LEARNING_RATES[self.optimizer])
        if not _is_real(self.lr) or not (self.lr > 0 and math.isfinite(self.lr)):
            _invalid("lr", self.lr, "a positive number")
        setting("lr", float(self.lr))
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                _invalid(name, value, "a positive integer")
            setting(name, int(value))
        if not _is_int(self.seed):
            _invalid("seed", self.seed, "an integer")
        setting("seed", int(self.seed))
        if self.dp_clip is not None:
            if not _is_real(self.dp_clip) or not (
                self.dp_clip > 0 and math.isfinite(self.dp_clip)
            ):
                _invalid("dp_clip", self.dp_clip, "a positive number or None")
            setting("dp_clip", float(self.dp_clip))
        if not _is_real(self.dp_noise) or not (
            self.dp_noise >= 0 and math.isfinite(self.dp_noise)
        ):
            _invalid("dp_noise", self.dp_noise, "a non-negative number")
        setting("dp_noise", float(self.dp_noise))
        if self.dp_noise and self.dp_clip is None:
            raise ConfigError(
                "dp_noise",
                f"dp_noise {self.dp_noise:g} needs dp_clip: the noise is scaled by "
                "the clipping norm",
            )
        if self.align_every is not None:
            if not _is_int(self.align_every) or self.align_every <= 0:
                _invalid("align_every", self.align_every, "a positive integer or None")
            if self.grad not in feedback.RULES:
                raise ConfigError(
                    "align_every",
                    f"align_every measures a learning rule against the true gradient; "
                    f"it needs grad to be one of {', '.join(feedback.RULES)}, got "
                    f"{self.grad!r}",
                )
            setting("align_every", int(self.align_every))
        if isinstance(self.model, str) and self.model.strip().lower() == "mlp":
            setting("model", None)
        if self.model is None:
            try:  # the loss and the output activation must fit
                net = self.mlp
            except ValueError as e:
                raise ConfigError("output_activation", str(e)) from None
            self._check_supported(net)
        else:
            self._check_model()
        if self.optimizer == "kfac":
            self._check_kfac()

    def _check_kfac(self) -> None:
        """Refuses what K-FAC's preconditioner cannot train."""
        if self.dp_clip is not None:
            raise ConfigError(
                "optimizer",
                "optimizer kfac does not work with DP-SGD (dp_clip): its Kronecker "
                "factors are computed from the raw batch, unclipped and un-noised, so "
                "the updates would leak what the privacy guarantee hides; use another "
                "optimizer",
            )
        if self.grad in feedback.RULES:
            raise ConfigError(
                "optimizer",
                "optimizer kfac preconditions the gradient by the network's curvature; "
                f"it does not apply to the learning rule {self.grad}'s updates: use "
                "grad manual or autodiff, or another optimizer",
            )
        try:
            check_kfac_supported(self.net, "optimizer kfac")
        except ValueError as e:
            raise ConfigError("optimizer", f"{e}; choose another optimizer") from None

    def _check_supported(self, net) -> None:
        """Checks that the training step can run ``net`` with this rule and DP."""
        try:
            train.check_supported(net, grad=self.grad)
        except ValueError as e:
            raise ConfigError("grad", str(e)) from None
        try:
            train.check_supported(net, dp=self.dp, grad=self.grad)
        except ValueError as e:
            raise ConfigError("dp_clip", str(e)) from None

    def _check_model(self) -> None:
        """Canonicalises ``model``; checks it against the MLP settings and data."""
        if not isinstance(self.model, str):
            _invalid("model", self.model, "None, a preset name or a spec string")
        try:
            object.__setattr__(self, "model", models.canonical(self.model))
        except ValueError as e:
            raise ConfigError("model", f"model {e}") from None
        mlp_only = [
            name
            for name in ("hidden", "activation", "output_activation")
            if getattr(self, name) != _FIELD_DEFAULTS[name]
        ]
        if mlp_only:
            raise ConfigError(
                "model",
                f"model conflicts with {' and '.join(mlp_only)}: the MLP's settings "
                "(hidden, activation, output_activation) stay at their defaults "
                "when the network is given as layers",
            )
        try:
            net = self.net
        except LayerShapeError as e:
            raise ConfigError(
                "model",
                f"model does not fit {self.dataset}'s flat {self.input_shape} "
                f"inputs: {e}",
            ) from None
        except ValueError as e:
            raise ConfigError(
                "model", f"model does not fit the {self.loss} loss: {e}"
            ) from None
        self._check_supported(net)
        classes = data.dataset_spec(self.dataset).num_classes
        if net.num_outputs != classes:
            raise ConfigError(
                "model",
                f"model ends with {net.num_outputs} outputs but {self.dataset} has "
                f"{classes} classes: make its last layer dense({classes})",
            )

    # ----------------------------------------------------------------- derived
    @property
    def input_shape(self) -> tuple[int]:
        """The per-example input shape: the dataset's pixels, flat."""
        return (math.prod(data.dataset_spec(self.dataset).image_shape),)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The MLP's layer widths: the dataset's pixels, :attr:`hidden`, its
        classes."""
        spec = data.dataset_spec(self.dataset)
        return (*self.input_shape, *self.hidden, spec.num_classes)

    @property
    def mlp(self) -> MLP:
        """The MLP of :attr:`hidden` and :attr:`activation` (the network when
        :attr:`model` is ``None``)."""
        return MLP(self.sizes, self.activation, self.output_activation, self.loss)

    @property
    def net(self) -> MLP | Sequential:
        """The network spec: :attr:`mlp`, or the :class:`~jaxbp.Sequential` of
        :attr:`model` on :attr:`input_shape`."""
        if self.model is None:
            return self.mlp
        return Sequential(
            models.parse(self.model), input_shape=self.input_shape, objective=self.loss
        )

    @property
    def dp(self) -> train.DPConfig | None:
        """DP-SGD settings for the training step (:class:`~jaxbp.train.DPConfig`),
        or ``None``."""
        if self.dp_clip is None:
            return None
        return train.DPConfig(self.dp_clip, self.dp_noise)

    # ----------------------------------------------------------------- records
    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (``hidden`` as a list)."""
        record = dataclasses.asdict(self)
        record["hidden"] = list(self.hidden)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "TrainConfig":
        """The config of a :meth:`to_dict` record (from ``metrics.json`` or a
        checkpoint).

        Raises:
          ValueError: if the record holds a setting this class does not know, or an
            invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        record = dict(record)
        if "hidden" in record:
            record["hidden"] = tuple(record["hidden"])
        return cls(**record)

    def differences(self, other: "TrainConfig") -> list[tuple[str, Any, Any]]:
        """Each setting whose value differs, as ``(name, self's value, other's)``.

        In field order; empty if the two configs describe the same run.
        """
        return [
            (f.name, getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )


def _invalid(name: str, value, expected: str):
    raise ConfigError(name, f"{name} must be {expected}, got {value!r}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        _invalid(name, value, f"one of {', '.join(choices)}")


# --------------------------------------------------------------------- setup
class TrainSetup(NamedTuple):
    """What :func:`setup` builds from a :class:`TrainConfig`.

    Attributes:
      config: the config it was built from.
      net: the :class:`~jaxbp.MLP` or :class:`~jaxbp.Sequential`.
      optimizer: the optax optimizer, its schedule spanning the whole run.
      state: the initial :class:`~jaxbp.train.TrainState` (step 0).
      train_data: ``(x, y)``: ``uint8`` pixels ``(N, 784)`` (scaled to ``[0, 1]``
        inside each compiled step) and ``int32`` labels ``(N,)``.
      test_data: the same for the test split.
    """

    config: TrainConfig
    net: MLP | Sequential
    optimizer: optax.GradientTransformation
    state: train.TrainState
    train_data: tuple[Any, Any]
    test_data: tuple[Any, Any]


def load_data(
    dataset: str,
    *,
    data_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Both splits as a training run takes them: flat ``uint8`` pixels, ``int32``
    labels.

    Args:
      dataset: the dataset name.
      data_dir: the folder holding its files (else the search of
        :func:`jaxbp.data.load_dataset`).
      offline: never download; ``None`` reads ``$JAXBP_OFFLINE``.

    Returns:
      ``((x, y), (x_test, y_test))``; ``x`` is ``(N, 784)`` ``uint8``.

    Raises:
      The errors of :func:`jaxbp.data.load_dataset`.
    """
    out = []
    for split in ("train", "test"):
        images, labels = data.load_dataset(
            dataset, split, data_dir=data_dir, offline=offline
        )
        # Pixels stay uint8 on the device; each batch is scaled to [0, 1] inside the
        # compiled step (4x less memory traffic than a float copy).
        out.append((images.reshape(len(images), -1), labels.astype(np.int32)))
    return out[0], out[1]


def setup(
    config: TrainConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    train_data: tuple[Any, Any] | None = None,
    test_data: tuple[Any, Any] | None = None,
) -> TrainSetup:
    """The network, optimizer, data and initial state of a configured run.

    This is the path ``jaxbp train`` takes: the data is loaded by :func:`load_data`
    (unless given), the optimizer's schedule spans ``epochs * (N // batch_size)``
    steps, and the parameters and shuffling key come from ``jax.random.key(seed)``.

    Args:
      config: the run.
      data_dir: the folder holding the dataset's files (see
        :func:`jaxbp.data.load_dataset`).
      train_data: ``(x, y)`` to train on instead of the dataset's training split
        (a subset, say): ``x`` ``(N, 784)`` ``uint8`` pixels or floats in ``[0, 1]``.
      test_data: ``(x, y)`` to evaluate on instead of the test split.

    Returns:
      A :class:`TrainSetup`.

    Raises:
      ValueError: if ``batch_size`` exceeds the training examples, or ``float64`` is
        asked for without x64.
      DataError: if the dataset cannot be loaded (:mod:`jaxbp.data`).

    Examples:
      >>> import numpy as np
      >>> x = np.zeros((100, 784), np.uint8); y = np.arange(100, dtype=np.int32) % 10
      >>> s = setup(TrainConfig(batch_size=50, epochs=1), train_data=(x, y),
      ...           test_data=(x, y))
      >>> str(s.net), int(s.state.step)
      ('MLP(784-100-10, relu/identity, softmax_cross_entropy)', 0)
    """
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype float64 needs x64: run inside `with jax.enable_x64(True):` or set "
            "jax.config.update('jax_enable_x64', True) first"
        )
    if train_data is None or test_data is None:
        loaded = load_data(config.dataset, data_dir=data_dir)
        train_data = loaded[0] if train_data is None else train_data
        test_data = loaded[1] if test_data is None else test_data
    num_train = len(train_data[0])
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {num_train} training examples"
        )
    net = config.net
    optimizer = optim.make_optimizer(
        config.optimizer,
        config.lr,
        schedule=config.schedule,
        total_steps=config.epochs * steps_per_epoch,
        net=net,
    )
    state = train.init_train_state(
        net,
        optimizer,
        jax.random.key(config.seed),
        dtype=jnp.dtype(config.dtype),
        grad=config.grad,
    )
    return TrainSetup(config, net, optimizer, state, train_data, test_data)


def fit(
    run: TrainSetup,
    *,
    start_epoch: int = 0,
    on_epoch: Callable[[train.TrainState, train.EpochLog], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_progress: Callable[[train.EpochProgress], None] | None = None,
) -> tuple[train.TrainState, list[train.EpochLog], dict]:
    """Trains ``run.state`` as its config says, evaluating after every epoch.

    The run's epochs, batch size, gradient, DP-SGD and alignment measurements come
    from ``run.config``; the loop is :func:`jaxbp.train.train_epochs` (call that for
    a network, optimizer or data a :class:`TrainConfig` does not describe).

    Args:
      run: from :func:`setup`; replace its ``state`` (``run._replace(state=...)``) to
        continue a restored one.
      start_epoch: epochs ``run.state`` has already trained.
      on_epoch: called with ``(state, log)`` after every epoch (to print, to save a
        checkpoint).
      mesh: train data-parallel over this mesh's ``"data"`` axis
        (:func:`jaxbp.parallel.make_data_mesh`).
      on_progress: called with a :class:`~jaxbp.train.EpochProgress` while each
        epoch runs (see :func:`jaxbp.train.train_epochs`).

    Returns:
      ``(state, logs, timing)``: the final state, one
      :class:`~jaxbp.train.EpochLog` per epoch run, and the compile times
      ``{"compile_s": ..., "eval_compile_s": ...}``.

    Raises:
      DivergenceError: naming the first step whose loss was not finite.

    Examples:
      >>> import numpy as np
      >>> x = np.zeros((100, 784), np.uint8); y = np.arange(100, dtype=np.int32) % 10
      >>> run = setup(TrainConfig(batch_size=50, epochs=1), train_data=(x, y),
      ...             test_data=(x, y))
      >>> state, logs, timing = fit(run)
      >>> int(state.step), logs[-1].epoch, logs[-1].test_accuracy
      (2, 1, 0.1)
    """
    config = run.config
    return train.train_epochs(
        run.net,
        run.optimizer,
        run.state,
        run.train_data,
        epochs=config.epochs,
        batch_size=config.batch_size,
        grad=config.grad,
        test_data=run.test_data,
        start_epoch=start_epoch,
        on_epoch=on_epoch,
        mesh=mesh,
        dp=config.dp,
        on_progress=on_progress,
        align_every=config.align_every,
    )
