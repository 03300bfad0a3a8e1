"""Optimizers and learning-rate schedules by name, for the CLI and :class:`TrainConfig`.

Every optimizer is an optax ``GradientTransformation``; this module only maps the names
``jaxbp train --optimizer`` accepts to them, with a constant or cosine-decayed step
size, and holds each optimizer's default peak learning rate.
"""

import optax

#: Default peak learning rate of each optimizer of :func:`make_optimizer`.
DEFAULT_LEARNING_RATES = {
    "sgd": 1.0,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adam": 2e-3,
    "adamw": 2e-3,
    "rmsprop": 1e-3,
}
#: The optimizer names :func:`make_optimizer` accepts.
OPTIMIZERS = tuple(DEFAULT_LEARNING_RATES)
#: The learning-rate schedules :func:`make_optimizer` accepts.
SCHEDULES = ("cosine", "constant")


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    schedule: str = "constant",
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """An optax optimizer by name, with a constant or cosine-decayed learning rate.

    Args:
      name: ``sgd`` (plain, as in Rumelhart et al.), ``momentum`` (heavy ball, 0.9),
        ``nesterov`` (0.9), ``adam``, ``adamw`` or ``rmsprop``.
      learning_rate: a positive (peak) step size.
      schedule: ``constant``, or ``cosine`` to decay it to zero over ``total_steps``
        (``optax.cosine_decay_schedule``).
      total_steps: length of the cosine schedule.

    Returns:
      The ``optax.GradientTransformation``.

    Raises:
      ValueError: on an unknown name or schedule, a non-positive learning rate, or a
        cosine schedule without a positive ``total_steps``.

    Examples:
      >>> import jax.numpy as jnp
      >>> opt = make_optimizer("sgd", 0.5)
      >>> params = {"w": jnp.ones(2)}
      >>> updates, _ = opt.update({"w": jnp.ones(2)}, opt.init(params))
      >>> updates["w"].tolist()
      [-0.5, -0.5]
    """
    if not learning_rate > 0:
        raise ValueError(f"learning rate must be positive, got {learning_rate}")
    makers = {
        "sgd": lambda lr: optax.sgd(lr),
        "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
        "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
        "adam": optax.adam,
        "adamw": optax.adamw,
        "rmsprop": optax.rmsprop,
    }
    if name not in makers:
        known = ", ".join(makers)
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {known}")
    if schedule == "constant":
        lr = learning_rate
    elif schedule == "cosine":
        if not total_steps or total_steps <= 0:
            raise ValueError("a cosine schedule needs a positive total_steps")
        lr = optax.cosine_decay_schedule(learning_rate, total_steps)
    else:
        known = ", ".join(SCHEDULES)
        raise ValueError(f"unknown schedule {schedule!r}; choose one of: {known}")
    return makers[name](lr)
