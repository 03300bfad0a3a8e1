"""One training step of a small network, every number shown: ``jaxbp.explain``.

* :mod:`jaxbp.explainer.trace`: :func:`explain` and the :class:`Trace` it returns;
* :mod:`jaxbp.explainer.examples`: worked examples shipped with jaxbp, checked against
  the numbers their sources publish;
* :mod:`jaxbp.explainer.inputs`: parameters as JSON, inputs and targets as text;
* :mod:`jaxbp.explainer.text` and :mod:`jaxbp.explainer.html`: the trace as terminal
  text, JSON, or one self-contained web page;
* :mod:`jaxbp.explainer.command`: what ``jaxbp explain`` does, flags in, page out.
"""

from jaxbp.explainer.examples import (
    Check,
    Example,
    example_names,
    explain_example,
    load_example,
)
from jaxbp.explainer.html import render_html
from jaxbp.explainer.inputs import parse_params, read_params
from jaxbp.explainer.text import render_json, render_text
from jaxbp.explainer.trace import MAX_BATCH, MAX_LAYERS, MAX_UNITS, Trace, explain

__all__ = (
    "Check",
    "Example",
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
    "render_html",
    "render_json",
    "render_text",
)
