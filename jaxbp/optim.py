"""Optimizers and learning-rate schedules by name, for the CLI and :class:`TrainConfig`.

Every optimizer is an optax ``GradientTransformation``; this module only maps the names
``jaxbp train --optimizer`` accepts to them, with a constant or cosine-decayed step
size, and holds each optimizer's default peak learning rate. ``kfac`` preconditions
by the damped Kronecker factors of :func:`jaxbp.curvature.scale_by_kfac`; it needs
the network, and its ``update`` the batch (``update(..., x=x, y=y)``).
"""

import optax

from jaxbp.curvature.kfac_optim import scale_by_kfac

#: Default peak learning rate of each optimizer of :func:`make_optimizer`.
DEFAULT_LEARNING_RATES = {
    "sgd": 1.0,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adam": 2e-3,
    "adamw": 2e-3,
    "rmsprop": 1e-3,
    "kfac": 0.2,
}
#: K-FAC's damping ``lambda`` in :func:`make_optimizer`: ``sqrt(lambda)`` on each
#: factor's diagonal. ``scale_by_kfac``'s own default, 1e-3, diverged within 20 steps on
#: 784-512-512-10 ReLU, MNIST at learning rates 0.01 and 0.05; 0.1 trained stably.
KFAC_DAMPING = 0.1
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
    net=None,
) -> optax.GradientTransformation:
    """An optax optimizer by name, with a constant or cosine-decayed learning rate.

    Args:
      name: ``sgd`` (plain, as in Rumelhart et al.), ``momentum`` (heavy ball, 0.9),
        ``nesterov`` (0.9), ``adam``, ``adamw``, ``rmsprop``, or ``kfac``: the
        gradient preconditioned by :func:`jaxbp.curvature.scale_by_kfac` (damping
        :data:`KFAC_DAMPING`, inverses refreshed every 10 steps), then scaled by
        the learning rate; its ``update`` takes the batch as ``x=``, ``y=``.
      learning_rate: a positive (peak) step size.
      schedule: ``constant``, or ``cosine`` to decay it to zero over ``total_steps``
        (``optax.cosine_decay_schedule``).
      total_steps: length of the cosine schedule.
      net: the :class:`~jaxbp.MLP` or :class:`~jaxbp.Sequential` being trained;
        ``kfac`` needs it (its factors are the network's), the others ignore it.

    Returns:
      The ``optax.GradientTransformation``.

    Raises:
      ValueError: on an unknown name or schedule, a non-positive learning rate, a
        cosine schedule without a positive ``total_steps``, or ``kfac`` without
        ``net`` (or with a layer :func:`~jaxbp.curvature.scale_by_kfac` refuses).

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
        "kfac": lambda lr: _kfac(net, lr),
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


def _kfac(net, lr) -> optax.GradientTransformationExtraArgs:
    """``scale_by_kfac`` then ``-lr`` (a number or a schedule)."""
    if net is None:
        raise ValueError(
            "optimizer 'kfac' needs the network: make_optimizer('kfac', lr, net=net) "
            "(its preconditioner is built from the network's Kronecker factors)"
        )
    return optax.chain(
        scale_by_kfac(net, damping=KFAC_DAMPING), optax.scale_by_learning_rate(lr)
    )
