"""A :class:`~jaxbp.explainer.Trace` as terminal text.

The text reads like a worked example on paper: the forward pass unit by unit, the loss
term by term, the error signals (sum over paths and matrix form), the chain rule weight
by weight, the manual gradient beside ``jax.grad``'s, and the step.
"""

import re
import textwrap

from jaxbp.explainer.trace import Layer, Param, Trace
from jaxbp.render.formatting import (
    delta_rule_rows,
    fmt,
    fmt_factor,
    fmt_values,
    forward_numbers,
    loss_numbers,
    paren,
    path_sum,
    product,
)


def _heading(lines: list[str], text: str) -> None:
    lines += ["", text, "-" * len(text)]


def render_text(
    trace: Trace,
    *,
    digits: int = 8,
    title=None,
    description=None,
    checks=None,
    width: int | None = None,
) -> str:
    """The trace as plain text (UTF-8), lines at most ``width`` columns wide.

    A longer equation breaks before its ``+`` and ``=`` signs (or after a comma),
    continuing under the right-hand side of its first ``=``; a matrix that does not
    fit prints one row per line.

    Args:
      trace: the :class:`~jaxbp.explainer.Trace`.
      digits: decimals of every computed number.
      title: a heading line (an example's title), or ``None``.
      description: a paragraph under it, wrapped to ``width`` columns, or ``None``.
      checks: :class:`~jaxbp.explainer.examples.Check` results to list at the end.
      width: the widest line, :data:`WIDTH` (100) by default; ``0`` leaves every
        line whole.

    Returns:
      The text, ending in a newline.
    """
    d = digits
    width = WIDTH if width is None else width
    lines = []
    if title:
        lines += [title, "=" * len(title)]
    if description:
        lines += [*textwrap.wrap(description, width or WIDTH), ""]
    _setting(lines, trace, d)
    _forward(lines, trace, d)
    _loss(lines, trace, d)
    _backward(lines, trace, d)
    _gradients(lines, trace, d)
    _step(lines, trace, d)
    if checks:
        _checks(lines, checks)
    if width:
        lines = [part for line in lines for part in _wrap(line, width)]
    return "\n".join(lines) + "\n"


#: The widest line of the text.
WIDTH = 100

# Where an equation may break: before " + " and " = ", after ", ".
_BREAKS = re.compile(r"(?= \+ )|(?= = )|(?<=, )")


def _wrap(line: str, width: int) -> list[str]:
    """``line`` broken into lines of at most ``width`` columns where it can be.

    Continuation lines start under the right-hand side of the first `` = `` (or a
    few columns in, where that is far to the right); a matrix ``[a, b; c, d]`` that
    does not fit starts each row on a line of its own. A single term wider than the
    line stays whole.
    """
    if len(line) <= width:
        return [line]
    indent = len(line) - len(line.lstrip())
    eq = line.find(" = ")
    hang = " " * (eq + 3 if 0 <= eq < width // 2 else indent + 4)
    if line[len(hang) : len(hang) + 1] == "[":
        hang += " "  # a vector or matrix continues under its first number
    out: list[str] = []
    rows = line.split("; ")
    for r, row in enumerate(rows):
        text = row + (";" if r < len(rows) - 1 else "")
        current = text if r == 0 else hang + text
        pieces = _BREAKS.split(current)
        current = pieces[0]
        for piece in pieces[1:]:
            if len(current) + len(piece.rstrip()) > width:
                out.append(current.rstrip())
                current = hang + piece.lstrip()
            else:
                current += piece
        out.append(current.rstrip())
    return out


def _setting(lines: list[str], trace: Trace, d: int) -> None:
    """The network, the step, the inputs and targets, every parameter's value."""
    batch = trace.batch_size
    lines.append(
        f"{trace.network}: one step of gradient descent, learning rate "
        f"{fmt(trace.lr, d)}, {batch} example{'s' if batch > 1 else ''}"
    )
    if batch > 1:
        lines.append(
            "Values of each example are listed [example 1, example 2, ...]; "
            f"E is the mean over the {batch} examples."
        )
    lines.append("")
    lines.append(
        "inputs   "
        + ", ".join(
            f"{n} = {fmt_values([row[i] for row in trace.x], d)}"
            for i, n in enumerate(trace.inputs)
        )
    )
    lines.append(
        "targets  "
        + ", ".join(
            f"{n} = {fmt_values([row[k] for row in trace.y], d)}"
            for k, n in enumerate(trace.targets)
        )
    )
    for layer in trace.layers:
        weights = [p for p in trace.params if p.layer == layer.index]
        # One item per parameter; wrapped between items only (no-break spaces inside).
        text = ", ".join(
            (
                f"{p.name} = {fmt(p.value, d)}"
                + (f" ({p.source}->{p.target})" if p.kind == "w" else "")
            ).replace(" ", "\u00a0")
            for p in weights
        )
        wrapped = textwrap.wrap(
            text,
            88,
            initial_indent=f"layer {layer.index}  ",
            subsequent_indent=" " * 9,
            break_on_hyphens=False,
        )
        lines += [line.replace("\u00a0", " ") for line in wrapped]


def _checks(lines: list[str], checks) -> None:
    """Each published number beside the trace's, and how many agree."""
    tol = max(abs(c.got - c.expected) for c in checks)
    _heading(lines, "Checks against the published values")
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        lines.append(
            f"  {mark} {c.name:9} published {fmt(c.expected, 12):>14}   "
            f"trace {fmt(c.got, 12):>16}"
        )
    passed = sum(c.ok for c in checks)
    lines.append(f"  {passed} of {len(checks)} agree (largest difference {tol:.1e})")


def _forward(lines: list[str], trace: Trace, d: int) -> None:
    _heading(lines, "1. Forward pass: z = sum of weight · input + bias, a = f(z)")
    for layer in trace.layers:
        for u in layer.units:
            numbers = forward_numbers(trace, layer, u, d)
            lines.append(f"  {u.equation} = {numbers} = {fmt_values(u.z, d)}")
            lines.append(
                f"  {u.name} = {u.activation}({u.z_name}) = {fmt_values(u.a, d)}"
            )


def _loss(lines: list[str], trace: Trace, d: int) -> None:
    loss = trace.loss
    batch = trace.batch_size
    _heading(lines, f"2. Loss ({loss.name}): {loss.formula}")
    outputs = trace.layers[-1].units
    if loss.probs is not None:
        for k in range(len(outputs)):
            lines.append(
                f"  p{k + 1} = softmax(o)_{k + 1} = "
                f"{fmt_values([row[k] for row in loss.probs], d)}"
            )
    for k in range(len(outputs)):
        term = [row[k] for row in loss.terms]
        numbers = loss_numbers(trace, k, d)
        lines.append(
            f"  E{k + 1} = {loss.term_formula[k]} = {numbers} = {fmt_values(term, d)}"
        )
    names = " + ".join(f"E{k + 1}" for k in range(len(outputs)))
    if batch == 1:
        lines.append(f"  E  = {names} = {fmt(loss.value, d)}")
    else:
        lines.append(
            f"  l  = {names} = {fmt_values(loss.per_example, d)} (each example)"
        )
        lines.append(
            f"  E  = mean of l over the {batch} examples = {fmt(loss.value, d)}"
        )


def _backward(lines: list[str], trace: Trace, d: int) -> None:
    _heading(lines, "3. Backward pass: the error signal delta = dE/dz of every unit")
    _output_deltas(lines, trace, d)
    for layer in reversed(trace.layers[:-1]):
        _hidden_deltas(lines, trace, layer, d)
    if len(trace.layers) > 1:
        # Routes are named (beside dE/dh) only where they differ from the paths.
        routes = any(
            u.routes > len(u.paths) for layer in trace.layers[:-1] for u in layer.units
        )
        forms = "sum over paths = matrix form" + (" = sum over routes" * routes)
        lines.append(
            f"  {forms}: largest difference {trace.max_abs_paths_vs_matrix:.1e}"
        )


def _output_deltas(lines: list[str], trace: Trace, d: int) -> None:
    """The output layer's delta: the loss's slope times the activation's (or fused)."""
    fused = trace.loss.probs is not None
    if fused:
        lines.append(
            "  output layer: softmax and cross-entropy together give dE/dz = p - t"
        )
    else:
        lines.append("  output layer: dE/dz = dE/do · do/dz")
    for u in trace.layers[-1].units:
        # The bias's chain rule holds the unit's factors: dE/do · do/dz (· 1).
        p = next(p for p in trace.params if p.kind == "b" and p.target == u.name)
        if fused:
            lines.append(
                f"  dE/d{u.z_name} = {p.factors[0].formula} = {fmt_values(u.delta, d)}"
            )
        else:
            f_out, f_act = p.factors[0], p.factors[1]
            lines.append(
                f"  dE/d{u.z_name} = {f_out.symbol} · {f_act.symbol} = "
                f"{paren(f_out.formula)} · {paren(f_act.formula)} = "
                f"{product([f_out.values, f_act.values], d)} = "
                f"{fmt_values(u.delta, d)}"
            )


def _hidden_deltas(lines: list[str], trace: Trace, layer: Layer, d: int) -> None:
    """A hidden layer's delta: the sum over paths (and routes), then matrix form."""
    lines.append("")
    lines.append(
        f"  hidden layer {layer.index}: sum over paths, one term per unit it feeds"
    )
    for u in layer.units:
        symbolic, numbers = path_sum(u, d)
        lines.append(
            f"  dE/d{u.name} = {symbolic} = {numbers} = {fmt_values(u.dE_da, d)}"
        )
        if u.routes > len(u.paths):
            lines.append(
                f"      (the same as the sum over all {u.routes} routes from "
                f"{u.name} to the outputs: {fmt_values(u.routes_sum, d)})"
            )
        lines.append(
            f"  dE/d{u.z_name} = dE/d{u.name} · d{u.name}/d{u.z_name} = "
            f"{fmt_values(u.dE_da, d)} · {paren(u.derivative)} = "
            f"{fmt_values(u.dE_da, d)} · {fmt_values(u.fprime, d)} = "
            f"{fmt_values(u.delta, d)}"
        )
    lo, hi = layer.index, layer.index + 1
    lines.append(
        f"  matrix form (delta rule): delta_{lo} = (delta_{hi} W_{hi}^T) ⊙ f'(z_{lo})"
    )
    for n in range(trace.batch_size):
        if trace.batch_size > 1:
            lines.append(f"  example {n + 1}:")
        rows = delta_rule_rows(trace, layer, n, d)
        width = max(len(label) for label, _ in rows)
        lines += [f"    {label:{width}} = {text}" for label, text in rows]


def _chain_line(p: Param, d: int, batch: int) -> list[str]:
    symbols = " · ".join(f.symbol for f in p.factors)
    values = [f.values for f in p.factors]
    if batch == 1:
        return [
            f"  dE/d{p.name} = {symbols} = {product(values, d)} = {fmt(p.chain[0], d)}"
        ]
    return [
        f"  dE/d{p.name} = sum over examples of {symbols}",
        f"         = sum {product(values, d)}",
        f"         = sum {fmt_values(p.chain, d)} = {fmt(sum(p.chain), d)}",
    ]


def _gradients(lines: list[str], trace: Trace, d: int) -> None:
    _heading(lines, "4. Chain rule, weight by weight")
    batch = trace.batch_size
    for layer in reversed(trace.layers):
        for p in trace.params:
            if p.layer == layer.index:
                lines += _chain_line(p, d, batch)
    _heading(lines, "5. Gradients: chain rule above, library delta rule, jax.grad")
    width = max(len(p.name) for p in trace.params)
    col = d + 5
    lines.append(
        f"  {'':{width}} {'chain rule':>{col}} {'manual':>{col}} "
        f"{'jax.grad':>{col}} {'|diff|':>9}"
    )
    for p in trace.params:
        lines.append(
            f"  {p.name:{width}} {fmt(sum(p.chain), d):>{col}} "
            f"{fmt(p.manual, d):>{col}} {fmt(p.autodiff, d):>{col}} "
            f"{abs(p.manual - p.autodiff):9.1e}"
        )
    lines.append(
        f"  largest |manual - jax.grad| = {trace.max_abs_manual_vs_autodiff:.1e}; "
        f"largest |chain rule - manual| = {trace.max_abs_chain_vs_manual:.1e}"
    )


def _step(lines: list[str], trace: Trace, d: int) -> None:
    lr = fmt(trace.lr, d)
    _heading(lines, f"6. One step: W <- W - {lr} · dE/dW")
    for p in trace.params:
        lines.append(
            f"  {p.name} = {fmt(p.value, d)} - {lr} · {fmt_factor([p.manual], d)} = "
            f"{fmt(p.updated, d)}"
        )
    lines.append(
        f"  E after the step = {fmt(trace.loss_after, d)} "
        f"(before: {fmt(trace.loss.value, d)})"
    )
