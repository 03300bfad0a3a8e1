"""``jaxbp explain``: one training step of a small network, every number shown."""

from jaxbp.explainer.trace import Trace
from jaxbp.explainer.trace import explain

__all__ = ("Trace", "explain")
