"""How a trace of :func:`jaxbp.explain` is shown: terminal text, JSON, one web page.

Presentation sits on top of the library: :mod:`jaxbp.explainer` computes a
:class:`~jaxbp.explainer.Trace`, and this package only writes it out (``import jaxbp``
does not load it).

* :mod:`jaxbp.render.formatting`: numbers and formulas with their numbers, shared by
  the text and the page;
* :mod:`jaxbp.render.text`: :func:`render_text`, a worked example on paper;
* :mod:`jaxbp.render.json`: :func:`render_json`, the whole trace as a record;
* :mod:`jaxbp.render.html`: :func:`render_html`, one self-contained page, with the
  network drawn by :mod:`jaxbp.render.diagram`; its style sheet and script are the
  package data files ``static/explain.css`` and ``static/explain.js``.

Examples:
  >>> import jaxbp
  >>> from jaxbp import render
  >>> trace, _ = jaxbp.explainer.explain_example("sigmoid-2-2-2")
  >>> print(render.render_text(trace).splitlines()[2])
  inputs   x1 = 0.1, x2 = 0.2
"""

from jaxbp.render.html import render_html
from jaxbp.render.json import render_json
from jaxbp.render.text import render_text

__all__ = (
    "render_html",
    "render_json",
    "render_text",
)
