"""One training step of a small network, every number shown: ``jaxbp.explain``.

* :mod:`jaxbp.explainer.trace`: :func:`explain` and the :class:`Trace` it returns;
* :mod:`jaxbp.explainer.examples`: worked examples shipped with jaxbp, checked against
  the numbers their sources publish;
* :mod:`jaxbp.explainer.inputs`: parameters as JSON, inputs and targets as text.

This package computes; it does not present. The trace is written out as terminal
text, JSON or one web page by :mod:`jaxbp.render`, and ``jaxbp explain`` is the
command line's (:mod:`jaxbp.cli.explain`).
"""

from jaxbp.explainer.examples import (
    Check,
    Example,
    example_names,
    explain_example,
    load_example,
)
from jaxbp.explainer.inputs import InputError, parse_params, read_params
from jaxbp.explainer.trace import MAX_BATCH, MAX_LAYERS, MAX_UNITS, Trace, explain

__all__ = (
    "Check",
    "Example",
    "InputError",
    "MAX_BATCH",
    "MAX_LAYERS",
    "MAX_UNITS",
    "Trace",
    "example_names",
    "explain",
    "explain_example",
    "load_example",
    "parse_params",
    "read_params",
)

_MOVED_TO_RENDER = ("render_html", "render_json", "render_text")


def __getattr__(name: str):
    # The renderers moved to jaxbp.render; the old names still resolve, loading the
    # renderers only when asked (so that ``import jaxbp`` does not).
    if name in _MOVED_TO_RENDER:
        from jaxbp import render

        return getattr(render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
