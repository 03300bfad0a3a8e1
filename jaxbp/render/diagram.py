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
#: The least distance between two layers' columns, and from the outputs to E.
_MIN_GAP, _LOSS_GAP = 280, 130
#: The radius of a unit's circle.
_R = 24


class Layout(NamedTuple):
    """Where the diagram puts things: the view box and each unit's centre."""

    width: float
    height: float
    pos: dict[str, tuple[float, float]]


def layout(trace: Trace) -> Layout:
    """Units in columns (inputs, each layer, the loss), each column centred.

    The layers' columns are at least :data:`_MIN_GAP` apart, so that a labelled
    weight has room beside its neighbours: a deep network makes a wider view box
    (the page scales it to fit). The loss sits :data:`_LOSS_GAP` after the outputs.
    """
    sizes = trace.sizes
    tallest = max(sizes)
    gap_y = 112 if tallest <= 3 else 100
    height = _TOP + gap_y * (tallest - 1) + 76
    gaps = len(sizes) - 1
    width = max(_WIDTH, 2 * _PAD_X + gaps * _MIN_GAP + _LOSS_GAP)
    gap_x = (width - 2 * _PAD_X - _LOSS_GAP) / gaps
    xs = [_PAD_X + i * gap_x for i in range(len(sizes))] + [width - _PAD_X]

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
    return Layout(width, height, pos)


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
    labels = label_positions(trace, lay, digits)
    out += [
        _weight_edge(trace, p, lay, labels[p.name], digits)
        for p in trace.params
        if p.kind == "w"
    ]
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


def _weight_edge(trace: Trace, p: Param, lay: Layout, at, digits: int) -> str:
    """One weight: its line, a wider invisible line to hover, its label ``at``."""
    (x0, y0), (x1, y1) = lay.pos[p.source], lay.pos[p.target]
    dense = trace.sizes[p.layer - 1] * trace.sizes[p.layer] > LABELLED_EDGES
    lx, ly = at
    line = f'x1="{x0 + _R:.1f}" y1="{y0:.1f}" x2="{x1 - _R:.1f}" y2="{y1:.1f}"'
    # The label sits on its line, on a white ground that hides the line behind it.
    ground = _ground(lx, ly, len(f"{p.name} = {fmt(p.value, min(digits, 4))}"))
    return (
        f'<g class="edge{" dense" if dense else ""}" data-param="{p.name}" '
        f'data-from="{p.source}" '
        f'data-to="{p.target}"><title>{p.name}: {p.source} → {p.target} = '
        f"{fmt(p.value, digits)}</title>"
        f"<line {line}/>"
        f'<line class="hit" {line}/>'
        f'<rect class="ground" x="{ground.x0:.1f}" y="{ground.y0:.1f}" '
        f'width="{ground.x1 - ground.x0:.1f}" height="{ground.y1 - ground.y0:.1f}" '
        'rx="3"/>'
        f'<text x="{lx:.1f}" y="{ly + _BASELINE:.1f}" text-anchor="middle">'
        f"{svg_name(p.name, ' = ' + fmt(p.value, min(digits, 4)))}</text></g>"
    )


def _ground(x: float, y: float, chars: int) -> "_Box":
    """The white ground under a label of ``chars`` characters centred at (x, y)."""
    half = chars * 6.4 / 2 + 2
    return _Box(x - half, y - 7.5, x + half, y + 7.5)


# ------------------------------------------------------------------ weight labels
# Where each weight's label goes: on its own line, clear of every other line, label
# and unit. Boxes are estimated in the view box's units from the font sizes of
# static/explain.css (11 px labels, 11 px monospace unit values, 12 px names).

#: A label's text sits this far below the point it is centred on (its baseline).
_BASELINE = 4
_LABEL_UP, _LABEL_DOWN = 11, 5  # a text's box above and below its baseline
_CHAR = 6.6  # the width of one character of an 11 px label, generously
_T_STEPS = [i / 40 for i in range(4, 37)]  # candidate places along a line


class _Box(NamedTuple):
    x0: float
    y0: float
    x1: float
    y1: float

    def meets(self, other: "_Box", margin: float = 0.0) -> bool:
        return (
            self.x0 < other.x1 + margin
            and other.x0 < self.x1 + margin
            and self.y0 < other.y1 + margin
            and other.y0 < self.y1 + margin
        )

    def crossed_by(self, a, b) -> bool:
        """Whether the segment ``a``-``b`` passes through the box."""
        (ax, ay), (bx, by) = a, b
        t0, t1 = 0.0, 1.0
        # Liang-Barsky: clip the segment's parameter range to each side of the box.
        for p, q in (
            (-(bx - ax), ax - self.x0),
            (bx - ax, self.x1 - ax),
            (-(by - ay), ay - self.y0),
            (by - ay, self.y1 - ay),
        ):
            if p == 0:
                if q < 0:
                    return False
            elif p < 0:
                t0 = max(t0, q / p)
            else:
                t1 = min(t1, q / p)
        return t0 < t1


def _text_box(x, baseline, chars, *, char=_CHAR, anchor="middle") -> _Box:
    left = x - chars * char / 2 if anchor == "middle" else x
    return _Box(
        left - 2, baseline - _LABEL_UP - 1, left + chars * char + 2, baseline + 3
    )


def _unit_boxes(trace: Trace, lay: Layout, digits: int) -> list[_Box]:
    """What a label must not cover: circles, and the values around each unit."""
    dd = min(digits, 4)
    boxes = [_Box(x - _R, y - _R, x + _R, y + _R) for x, y in lay.pos.values()]
    for layer in trace.layers:
        for u in layer.units:
            x, y = lay.pos[u.name]
            below = max(len(fmt(u.a[0], dd)), len(f"δ = {fmt(u.delta[0], dd)}"))
            boxes.append(_text_box(x, y + _R + 26, below, char=6.8))
            boxes[-1] = boxes[-1]._replace(y0=y + _R)
            bias = len(f"{u.bias} = {fmt(layer.b[u.index], dd)}")
            boxes.append(_text_box(x, y - _R - 6, bias, char=6.8))
    for i, name in enumerate(trace.inputs):
        x, y = lay.pos[name]
        boxes.append(_text_box(x, y + _R + 13, len(fmt(trace.x[0][i], dd)), char=6.8))
    ey = lay.pos["E"][1]
    for k, name in enumerate(trace.targets):
        x, y = lay.pos[trace.layers[-1].units[k].name]
        ty = y - 8 if y <= ey else y + 18
        chars = len(f"{name} = {fmt(trace.y[0][k], dd)}")
        boxes.append(_text_box(x + _R + 6, ty, chars, char=7.2, anchor="start"))
    return boxes


def _segments(trace: Trace, lay: Layout) -> dict[str, tuple]:
    """Every line of the diagram by the weight it draws (``"->o1"`` for a tail)."""
    segments = {}
    for p in trace.params:
        if p.kind == "w":
            (x0, y0), (x1, y1) = lay.pos[p.source], lay.pos[p.target]
            segments[p.name] = ((x0 + _R, y0), (x1 - _R, y1))
    ex, ey = lay.pos["E"]
    for u in trace.layers[-1].units:
        x0, y0 = lay.pos[u.name]
        segments[f"->{u.name}"] = ((x0 + _R, y0), (ex - _R, ey))
    return segments


def label_positions(trace: Trace, lay: Layout, digits: int) -> dict[str, tuple]:
    """The centre of each weight's label, on its own line.

    A label may go to any point of its line among :data:`_T_STEPS` that covers no
    unit. Layer by layer, a search gives each label of the layer such a place clear
    of every label placed so far, first among the places that no other line crosses
    (so that a label never sits on a crossing), else among all, the fewest crossed
    first; ties go to the place nearest the middle of the line. In a layer whose
    labels show only while highlighted (more than :data:`LABELLED_EDGES`
    connections) each label takes its best place, not kept apart from the others.
    """
    units = _unit_boxes(trace, lay, digits)
    segments = _segments(trace, lay)
    placed: list[_Box] = []
    out = {}
    for layer in trace.layers:
        weights = [p for p in trace.params if p.kind == "w" and p.layer == layer.index]
        places = {p.name: _places(p, segments, units, digits) for p in weights}
        if len(weights) > LABELLED_EDGES:
            chosen = {name: options[0] for name, options in places.items()}
        else:
            clean = {n: [o for o in opts if o[0] == 0] for n, opts in places.items()}
            chosen = _fit(clean, placed) or _fit(places, placed) or _greedy(places)
            placed += [box for _, _, box in chosen.values() if box is not None]
        out.update({name: centre for name, (_, centre, _) in chosen.items()})
    return out


def _places(p: Param, segments, units, digits: int) -> list[tuple]:
    """``[(lines crossed, (x, y), box)]``: where ``p``'s label may go, best first."""
    a, b = segments[p.name]
    chars = len(f"{p.name} = {fmt(p.value, min(digits, 4))}") - 0.4
    options = []
    for t in sorted(_T_STEPS, key=lambda t: abs(t - 0.5)):
        x, y = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        box = _text_box(x, y + _BASELINE, chars)
        if _meets_any(box, units, margin=0):
            continue
        crossed = sum(
            box.crossed_by(*seg) for name, seg in segments.items() if name != p.name
        )
        options.append((crossed, (x, y), box))
    # Stable: of the places crossed by as few lines, the one nearest the middle.
    return sorted(options, key=lambda o: o[0]) or [(0, _middle(a, b), None)]


def _middle(a, b) -> tuple[float, float]:
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2


def _fit(places: dict, placed: list[_Box], budget: int = 20_000):
    """A place for every label, apart from each other and ``placed``, or None.

    A depth-first search over each label's places in order, the label with the
    fewest places first.
    """
    free = {
        name: [o for o in options if o[2] and not _meets_any(o[2], placed)]
        for name, options in places.items()
    }
    order = sorted(free, key=lambda name: len(free[name]))
    chosen: dict = {}
    steps = 0

    def search(i: int) -> bool:
        nonlocal steps
        if i == len(order):
            return True
        for option in free[order[i]]:
            steps += 1
            if steps > budget:
                return False
            if not _meets_any(option[2], [o[2] for o in chosen.values()]):
                chosen[order[i]] = option
                if search(i + 1):
                    return True
                del chosen[order[i]]
        return False

    return {name: chosen[name] for name in places} if search(0) else None


def _greedy(places: dict) -> dict:
    """Each label at its best place, overlaps or not (when nothing fits)."""
    return {name: options[0] for name, options in places.items()}


def _meets_any(box: _Box, boxes: list[_Box], margin: float = 2) -> bool:
    return any(box.meets(q, margin=margin) for q in boxes if q is not None)


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
