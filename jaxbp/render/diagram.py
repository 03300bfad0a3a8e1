"""The network of a trace drawn as inline SVG, every unit and weight with its value.

Columns of units from the inputs to the outputs, then the loss ``E``; a line per
weight (labelled with its name and value), a dashed line from each output to ``E``.
Each unit shows its activation below it, its bias above it and its error signal
``δ = ∂E/∂z`` in red. The page's script (``static/explain.js``) highlights the paths
from a weight to the loss, following ``data-from`` and ``data-to``.
"""

import html
import re
from typing import NamedTuple

from jaxbp.explainer.trace import Param, Trace
from jaxbp.render.formatting import fmt

#: Layers with more connections than this label a weight only while it is
#: highlighted (every weight is still in the tables).
LABELLED_EDGES = 9

_WIDTH, _PAD_X, _TOP = 960, 60, 46
#: The radius of a unit's circle.
_R = 24


class Layout(NamedTuple):
    """Where the diagram puts things: the view box and each unit's centre."""

    width: float
    height: float
    pos: dict[str, tuple[float, float]]


def layout(trace: Trace) -> Layout:
    """Units in columns (inputs, each layer, the loss), each column centred."""
    sizes = trace.sizes
    cols = len(sizes) + 1  # plus the loss node
    tallest = max(sizes)
    gap_y = 112 if tallest <= 3 else 100
    height = _TOP + gap_y * (tallest - 1) + 76
    xs = [_PAD_X + i * (_WIDTH - 2 * _PAD_X) / (cols - 1) for i in range(cols)]

    def ys(n):
        mid = _TOP + gap_y * tallest / 2 - gap_y / 2
        return [mid + (k - (n - 1) / 2) * gap_y for k in range(n)]

    names = [list(trace.inputs)] + [
        [u.name for u in layer.units] for layer in trace.layers
    ]
    pos = {}
    for c, layer_names in enumerate(names):
        for name, y in zip(layer_names, ys(len(layer_names)), strict=True):
            pos[name] = (xs[c], y)
    pos["E"] = (xs[-1], ys(1)[0])
    return Layout(_WIDTH, height, pos)


def network_svg(trace: Trace, digits: int) -> list[str]:
    """The ``<svg id="net">`` element, one item per line of the page.

    Weights show ``min(digits, 4)`` decimals in the diagram; their titles (shown on
    hover) show ``digits``.
    """
    lay = layout(trace)
    # Which unit each bias adds into: the script starts a bias's paths there.
    unit_of = "".join(
        f' data-unit-of-{p.name.lower()}="{p.target}"'
        for p in trace.params
        if p.kind == "b"
    )
    out = [
        f'<svg id="net" viewBox="0 0 {lay.width} {lay.height}" role="img" '
        f'aria-label="{html.escape(trace.network)}"{unit_of}>'
    ]
    out += [_weight_edge(trace, p, lay, digits) for p in trace.params if p.kind == "w"]
    out += _tail_edges(trace, lay)
    out += _units(trace, lay, min(digits, 4))
    out += _target_labels(trace, lay, min(digits, 4))
    out.append("</svg>")
    return out


def caption(trace: Trace) -> str:
    """The figure's caption: what the diagram shows (one sentence, no markup)."""
    text = (
        "Each unit shows its activation, its bias and (red) its error signal "
        "δ = ∂E/∂z; each line its weight"
    )
    sizes = trace.sizes
    if any(m * n > LABELLED_EDGES for m, n in zip(sizes, sizes[1:], strict=False)):
        text += (
            f" (in layers with more than {LABELLED_EDGES} connections, while it is "
            "highlighted)"
        )
    if trace.batch_size > 1:
        text += ", for the first example of the batch"
    return text + "."


def _weight_edge(trace: Trace, p: Param, lay: Layout, digits: int) -> str:
    """One weight: its line, a wider invisible line to hover, its label."""
    (x0, y0), (x1, y1) = lay.pos[p.source], lay.pos[p.target]
    fan_in, fan_out = trace.sizes[p.layer - 1], trace.sizes[p.layer]
    # Labels spread along the lines by the unit fed, so that they rarely meet.
    t = 0.22 + (0.5 * p.col / (fan_out - 1) if fan_out > 1 else 0.1)
    dense = fan_in * fan_out > LABELLED_EDGES
    lx, ly = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    line = f'x1="{x0 + _R:.1f}" y1="{y0:.1f}" x2="{x1 - _R:.1f}" y2="{y1:.1f}"'
    return (
        f'<g class="edge{" dense" if dense else ""}" data-param="{p.name}" '
        f'data-from="{p.source}" '
        f'data-to="{p.target}"><title>{p.name}: {p.source} → {p.target} = '
        f"{fmt(p.value, digits)}</title>"
        f"<line {line}/>"
        f'<line class="hit" {line}/>'
        f'<text x="{lx:.1f}" y="{ly - 4:.1f}" text-anchor="middle">'
        f"{svg_name(p.name, ' = ' + fmt(p.value, min(digits, 4)))}</text></g>"
    )


def _tail_edges(trace: Trace, lay: Layout) -> list[str]:
    """The dashed lines from each output to the loss ``E``."""
    ex, ey = lay.pos["E"]
    out = []
    for u in trace.layers[-1].units:
        x0, y0 = lay.pos[u.name]
        out.append(
            f'<g class="edge tail" data-from="{u.name}" data-to="E">'
            f'<line x1="{x0 + _R:.1f}" y1="{y0:.1f}" x2="{ex - _R:.1f}" '
            f'y2="{ey:.1f}"/></g>'
        )
    return out


def _units(trace: Trace, lay: Layout, dd: int) -> list[str]:
    """Every unit: the inputs, each layer's units (bias, δ), the loss."""
    out = []
    for i, name in enumerate(trace.inputs):
        x, y = lay.pos[name]
        out.append(_unit_svg(name, x, y, fmt(trace.x[0][i], dd), kind="input"))
    for layer in trace.layers:
        for u in layer.units:
            x, y = lay.pos[u.name]
            out.append(
                _unit_svg(
                    u.name,
                    x,
                    y,
                    fmt(u.a[0], dd),
                    bias=(u.bias, f" = {fmt(layer.b[u.index], dd)}"),
                    delta=f"δ = {fmt(u.delta[0], dd)}",
                )
            )
    ex, ey = lay.pos["E"]
    out.append(_unit_svg("E", ex, ey, fmt(trace.loss.value, dd), kind="loss"))
    return out


def _target_labels(trace: Trace, lay: Layout, dd: int) -> list[str]:
    """``t_k = value`` beside each output."""
    out = []
    ey = lay.pos["E"][1]
    for k, name in enumerate(trace.targets):
        x, y = lay.pos[trace.layers[-1].units[k].name]
        # Above the unit when the dashed line to E runs down from it, else below.
        ty = y - 8 if y <= ey else y + 18
        out.append(
            f'<text x="{x + _R + 6:.1f}" y="{ty:.1f}" class="sub">'
            f"{svg_name(name, ' = ' + fmt(trace.y[0][k], dd))}</text>"
        )
    return out


def _unit_svg(name, x, y, value, *, bias=None, delta=None, kind="") -> str:
    """One unit: its circle and name, its value below, its bias above, its δ."""
    parts = [
        f'<g class="unit {kind}" data-unit="{name}">',
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{_R}"/>',
        f'<text class="name" x="{x:.1f}" y="{y + 5:.1f}" text-anchor="middle">'
        f"{svg_name(name)}</text>",
        f'<text class="val" x="{x:.1f}" y="{y + _R + 13:.1f}" text-anchor="middle">'
        f"{html.escape(value)}</text>",
    ]
    if bias:
        parts.append(
            f'<text class="val" x="{x:.1f}" y="{y - _R - 6:.1f}" text-anchor="middle">'
            f"{svg_name(*bias)}</text>"
        )
    if delta:
        parts.append(
            f'<text class="delta" x="{x:.1f}" y="{y + _R + 26:.1f}" '
            f'text-anchor="middle">{html.escape(delta)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def svg_name(name: str, rest: str = "") -> str:
    """SVG text for ``W5`` + ``rest``: ``<sub>`` is not SVG, so a shifted tspan.

    Examples:
      >>> svg_name("W5", " = 0.45")
      'W<tspan dy="3" font-size="75%">5</tspan><tspan dy="-3"> = 0.45</tspan>'
    """
    match = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
    if not match:
        return html.escape(name + rest)
    letters, digits = match.groups()
    out = f'{letters}<tspan dy="3" font-size="75%">{digits}</tspan>'
    if rest:
        out += f'<tspan dy="-3">{html.escape(rest)}</tspan>'
    return out
