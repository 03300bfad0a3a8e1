"""Worked examples shipped with jaxbp, with the numbers their sources publish.

Each example is a JSON file in ``jaxbp/explainer/examples/``: the network, its
parameters, the inputs and targets, the learning rate, and ``published``: values by
their textbook names (see :meth:`jaxbp.explainer.Trace.value`) that the trace must
reproduce within ``tolerance``.
"""

import importlib.resources
import json
from typing import NamedTuple

import numpy as np

from jaxbp.explainer.inputs import parse_params
from jaxbp.explainer.trace import Trace, explain
from jaxbp.mlp import MLP


class Example(NamedTuple):
    """A worked example: everything :func:`~jaxbp.explainer.explain` needs, and more.

    Attributes:
      name: its name (the file name without ``.json``).
      title: one line.
      description: the setting and, where it has them, the numbers worked by hand.
      source: where the published numbers come from.
      net: the network spec.
      params: the parameters, float64 arrays.
      x: the inputs ``(B, n_0)``.
      y: the targets ``(B, n_L)``.
      lr: the learning rate.
      published: ``{name: value}`` as the source prints them.
      tolerance: the largest accepted ``|trace - published|``.
    """

    name: str
    title: str
    description: str
    source: str
    net: MLP
    params: list
    x: np.ndarray
    y: np.ndarray
    lr: float
    published: dict[str, float]
    tolerance: float


class Check(NamedTuple):
    """One published number against the trace's."""

    name: str
    expected: float
    got: float
    ok: bool


def _folder():
    return importlib.resources.files("jaxbp.explainer") / "examples"


def example_names() -> tuple[str, ...]:
    """The names of the shipped examples, sorted.

    Examples:
      >>> example_names()
      ('linear-regression', 'mazur-2-2-2', 'sigmoid-2-2-2')
    """
    return tuple(
        sorted(
            f.name.removesuffix(".json")
            for f in _folder().iterdir()
            if f.name.endswith(".json")
        )
    )


def load_example(name: str) -> Example:
    """Loads a shipped example by name.

    Raises:
      ValueError: if there is no example of that name (the message lists them).
    """
    if name not in example_names():
        raise ValueError(
            f"no example {name!r}; choose one of: {', '.join(example_names())}"
        )
    record = json.loads((_folder() / f"{name}.json").read_text())
    spec = record["network"]
    return Example(
        name=name,
        title=record["title"],
        description=record["description"],
        source=record["source"],
        net=MLP(
            tuple(spec["sizes"]),
            spec["activation"],
            spec["output_activation"],
            spec["loss"],
        ),
        params=parse_params(record["params"], where=f"example {name}"),
        x=np.asarray(record["x"], np.float64),
        y=np.asarray(record["y"], np.float64),
        lr=float(record["lr"]),
        published={k: float(v) for k, v in record["published"].items()},
        tolerance=float(record["tolerance"]),
    )


def check_published(trace: Trace, example: Example) -> list[Check]:
    """Compares the trace with every published number of the example."""
    checks = []
    for name, expected in example.published.items():
        got = trace.value(name)
        checks.append(
            Check(name, expected, got, abs(got - expected) <= example.tolerance)
        )
    return checks


def explain_example(name: str, *, lr: float | None = None) -> tuple[Trace, list[Check]]:
    """The trace of a shipped example and its checks against the published numbers.

    Args:
      name: one of :func:`example_names`.
      lr: a learning rate other than the example's; the published numbers after the
        step are then not checked.

    Returns:
      ``(trace, checks)``.

    Examples:
      >>> trace, checks = explain_example("sigmoid-2-2-2")
      >>> all(c.ok for c in checks), round(trace.value("dE/dW5"), 8)
      (True, 0.02592286)
    """
    example = load_example(name)
    use_lr = example.lr if lr is None else lr
    trace = explain(example.net, example.params, example.x, example.y, lr=use_lr)
    if use_lr != example.lr:
        # The values after the step depend on the learning rate.
        published = {
            k: v
            for k, v in example.published.items()
            if not (k.startswith("new ") or k == "E after")
        }
        example = example._replace(published=published)
    return trace, check_published(trace, example)
