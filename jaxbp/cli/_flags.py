"""What the commands share: the one-line parser, flag types and the network flags.

Every flag value is checked here, where it enters (a ``type=`` function raising
``argparse.ArgumentTypeError``), or by the library object it builds; either way the
error reaches the user as one ``jaxbp <command>: error: ...`` line.
"""

import argparse

import numpy as np

from jaxbp import data
from jaxbp.activations import ACTIVATIONS
from jaxbp.losses import LOSSES

DATASETS = tuple(data.DATASETS)


class UsageError(Exception):
    """A bad flag or flag combination, reported as one line.

    Args:
      message: what is wrong (without the ``jaxbp <command>: error:`` prefix).
      prog: the command it is about (``"jaxbp train"``); ``None`` for the one being
        run.
    """

    def __init__(self, message: str, *, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, not usage plus message."""

    def error(self, message):
        raise UsageError(message, prog=self.prog)


def flag(name: str) -> str:
    """A setting's flag: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def positive_int(text: str) -> int:
    """A flag value that must be a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """A flag value that must be a finite positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def dataset(text: str) -> str:
    """A dataset's one name: ``fashion-mnist`` (its folder's) -> ``fashion_mnist``."""
    try:
        return data.dataset_spec(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def sizes(text: str) -> tuple[int, ...]:
    """``"784,100,10"`` -> ``(784, 100, 10)``: layer widths, input first."""
    widths = tuple(positive_int(part) for part in text.split(","))
    if len(widths) < 2:
        raise argparse.ArgumentTypeError("needs at least an input and an output size")
    return widths


class StoreGiven(argparse.Action):
    """Stores a flag's value and notes in ``namespace.given`` that it was given (a
    default cannot say whether the user wrote it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.option_strings[0]}


def add_net_flags(
    p: argparse.ArgumentParser, *, activation: str, output_activation: str, loss: str
) -> None:
    """``--activation``, ``--output-activation`` and ``--loss`` with these defaults."""
    p.add_argument(
        "--activation",
        default=activation,
        choices=sorted(ACTIVATIONS),
        action=StoreGiven,
        help="hidden-layer activation (default: %(default)s)",
    )
    p.add_argument(
        "--output-activation",
        default=output_activation,
        choices=sorted(ACTIVATIONS),
        action=StoreGiven,
        help="output activation; softmax cross-entropy needs identity "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--loss",
        default=loss,
        choices=sorted(LOSSES),
        help="objective, the mean over the batch (default: %(default)s)",
    )
