"""A :class:`~jaxbp.explainer.Trace` as JSON, every number at full float64 precision."""

import json


def render_json(trace, *, title=None, checks=None) -> str:
    """The whole trace as indented JSON (full float64 precision).

    The record is :meth:`~jaxbp.explainer.Trace.to_dict`, plus ``title`` and
    ``checks`` (``[{"name", "expected", "got", "ok"}]``) when given.
    """
    record = {"title": title} if title else {}
    record.update(trace.to_dict())
    if checks is not None:
        record["checks"] = [c._asdict() for c in checks]
    return json.dumps(record, indent=2) + "\n"
