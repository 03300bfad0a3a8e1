"""``jaxbp check``: manual against autodiff (and finite-difference) gradients.

Builds an MLP and a random batch from the flags and prints the per-leaf report of
:func:`jaxbp.gradcheck.check_network_grad`; exits 1 if any comparison fails.
"""

import argparse

import jax

from jaxbp.cli import _flags
from jaxbp.config import DTYPES
from jaxbp.gradcheck import check_network_grad
from jaxbp.mlp import MLP


def _fd_samples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < -1:
        raise argparse.ArgumentTypeError(
            "must be -1 (every parameter), 0 (none) or a positive number of "
            f"coordinates per leaf, got {text!r}"
        )
    return value


def add_parser(sub) -> None:
    """Adds ``check`` to the ``jaxbp`` subcommands ``sub``."""
    check = sub.add_parser(
        "check",
        help="report manual vs autodiff vs finite-difference gradients, per leaf",
        description="Compare the hand-derived gradient with jax.grad and central "
        "finite differences for one network and batch, leaf by leaf. Exits 1 if "
        "any comparison fails.",
    )
    check.add_argument(
        "--sizes",
        type=_flags.sizes,
        default=(784, 100, 10),
        help="layer widths, input first (default: 784,100,10)",
    )
    _flags.add_net_flags(
        check,
        activation="sigmoid",
        output_activation="identity",
        loss="softmax_cross_entropy",
    )
    check.add_argument(
        "--batch-size",
        type=_flags.positive_int,
        default=16,
        help="examples in the random batch (default: %(default)s)",
    )
    check.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of manual vs autodiff (default: %(default)s)",
    )
    check.add_argument(
        "--fd-samples",
        type=_fd_samples,
        default=200,
        help="coordinates per leaf to check by finite differences in float64; 0 "
        "skips them, -1 checks every parameter (default: %(default)s)",
    )
    check.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the parameters, the batch and the sampled coordinates "
        "(default: %(default)s)",
    )
    check.set_defaults(func=run)


def run(args) -> int:
    """``jaxbp check``: print the gradient report; 0 if it passes, 1 if not."""
    net = MLP(args.sizes, args.activation, args.output_activation, args.loss)
    kx, ky, kp = jax.random.split(jax.random.key(args.seed), 3)
    params = net.init(kp)
    x = jax.random.uniform(kx, (args.batch_size, net.sizes[0]))
    if net.loss_fn.needs_logits or net.sizes[-1] > 1:
        y = jax.random.randint(ky, (args.batch_size,), 0, net.sizes[-1])
    else:
        y = jax.random.uniform(ky, (args.batch_size, 1))
    # --fd-samples: -1 every coordinate, 0 none, N a sample of N per leaf
    fd = {-1: "all", 0: None}.get(args.fd_samples, "sample")
    report = check_network_grad(
        net,
        params,
        x,
        y,
        dtype=args.dtype,
        fd=fd,
        fd_samples=max(args.fd_samples, 1),
        seed=args.seed,
    )
    print(
        f"{net.num_params:,} parameters; random batch of {args.batch_size}, "
        f"seed {args.seed}"
    )
    print(report)
    return 0 if report.passed else 1
