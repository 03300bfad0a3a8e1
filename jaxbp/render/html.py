"""A :class:`~jaxbp.explainer.Trace` as one self-contained web page.

The page needs no network: its style sheet and script (the package data files
``static/explain.css`` and ``static/explain.js``, copied in) and the network diagram
(inline SVG, drawn by :mod:`jaxbp.render.diagram`) are all in the one file. The
diagram labels every unit and weight with its value; hovering or clicking a weight
highlights every path from it to the loss and its row in the chain-rule table. Below
come the forward pass, the loss, the backward pass, the chain rule weight by weight,
the manual gradient beside ``jax.grad``'s and the step, each number next to the
equation it comes from. A print style sheet drops the interactive hints and keeps
table rows whole.
"""

import html
import importlib.resources
import re

from jaxbp.explainer.trace import Layer, Trace
from jaxbp.render import diagram
from jaxbp.render.formatting import (
    delta_rule_rows,
    fmt,
    fmt_factor,
    fmt_values,
    forward_numbers,
    loss_numbers,
    paren,
    path_sum,
)

_NAME = re.compile(r"\b([A-Za-z])(\d+)\b")
_SUB = re.compile(r"_\{?([A-Za-z0-9+\-]+)\}?")
_PARTIAL = re.compile(r"\bd([A-Za-z]\d*)/d([A-Za-z]\d*)")


def math(text: str) -> str:
    """Escapes ``text`` and typesets its names: ``dE/dW5`` -> ``∂E/∂W<sub>5</sub>``.

    Examples:
      >>> math("dE/dz3·W5 + delta_2")
      '∂E/∂z<sub>3</sub>·W<sub>5</sub> + δ<sub>2</sub>'
    """
    out = html.escape(text, quote=False)
    out = _PARTIAL.sub(r"∂\1/∂\2", out)
    out = out.replace("delta", "δ").replace("^T", "ᵀ").replace("^2", "²")
    out = out.replace(" ⊙ ", " ⊙ ").replace("sum_k", "Σ_k")
    out = _SUB.sub(r"<sub>\1</sub>", out)
    return _NAME.sub(r"\1<sub>\2</sub>", out)


def _num(text: str) -> str:
    return f'<span class="num">{html.escape(text)}</span>'


def static_text(name: str) -> str:
    """A file of the page's package data, ``static/explain.css`` or ``.js``."""
    return (importlib.resources.files("jaxbp.render") / "static" / name).read_text(
        encoding="utf-8"
    )


_ERROR_HOOK = (
    "window.addEventListener('error', function (e) {"
    " document.documentElement.dataset.jsError = String(e.message); });"
)


def render_html(
    trace: Trace,
    *,
    digits: int = 8,
    title=None,
    description=None,
    source=None,
    checks=None,
) -> str:
    """The trace as one self-contained HTML page.

    Args:
      trace: the :class:`~jaxbp.explainer.Trace`.
      digits: decimals of the numbers in the tables (the diagram shows up to 4).
      title: the page heading (an example's title), or ``None``.
      description: a paragraph under the heading, or ``None``.
      source: where the example's numbers come from (a URL becomes a link), or
        ``None``.
      checks: published-value checks to list, or ``None``.

    Returns:
      The page (UTF-8 text). Once its script has run, ``<html>`` carries
      ``data-ready="1"``; a script error sets ``data-js-error``.
    """
    d = digits
    heading = title or "One step of backpropagation"
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(heading)} · jaxbp explain</title>",
        f"<script>{_ERROR_HOOK}</script>",
        f"<style>\n{static_text('explain.css')}</style>",
        "</head>",
        "<body>",
        *_header(trace, d, heading, description, source),
        "<main>",
        *_network_section(trace, d),
        *_forward_section(trace, d),
        *_loss_section(trace, d),
        *_backward_section(trace, d),
        *_chain_section(trace, d),
        *_grads_section(trace, d),
        *_step_section(trace, d),
        *(_checks_section(checks) if checks else []),
        "</main>",
        "<footer>Written by <code>jaxbp explain</code>. Every value comes from "
        "jaxbp's forward pass and hand-derived delta rule (float64); the jax.grad "
        "column is automatic differentiation of the same loss.</footer>",
        f"<script>\n{static_text('explain.js')}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _header(trace: Trace, d: int, heading: str, description, source) -> list[str]:
    """The title, the setting, the source, and the verdict of manual vs jax.grad."""
    batch = trace.batch_size
    out = [
        "<header>",
        f"<h1>{html.escape(heading)}</h1>",
        f'<p class="sub">{html.escape(trace.network)} · one step of gradient descent, '
        f"learning rate {_num(fmt(trace.lr, d))} · {batch} example"
        f"{'s' if batch > 1 else ''}"
        + (f" (E is the mean over the {batch})" if batch > 1 else "")
        + "</p>",
    ]
    if description:
        out.append(f"<p>{math(description)}</p>")
    if source:
        where = html.escape(source)
        if source.startswith(("https://", "http://")):
            where = f'<a href="{where}">{where}</a>'
        out.append(f'<p class="sub">Source: {where}</p>')
    # Agreement within 1e-9 of the largest gradient (float64 gives ~1e-16).
    scale = max(1.0, max(abs(p.manual) for p in trace.params))
    ok = (
        trace.max_abs_manual_vs_autodiff <= 1e-9 * scale
        and trace.max_abs_chain_vs_manual <= 1e-9 * scale
    )
    verdict = (
        f"manual (delta rule) vs jax.grad: largest difference "
        f"{trace.max_abs_manual_vs_autodiff:.1e}"
    )
    out.append(
        f'<p><span class="verdict{"" if ok else " bad"}">{verdict}</span> '
        f'<span class="sub">E = {_num(fmt(trace.loss.value, d))} → '
        f"{_num(fmt(trace.loss_after, d))} after the step</span></p>"
    )
    out.append("</header>")
    return out


# ----------------------------------------------------------------------- sections
def _network_section(trace: Trace, d: int) -> list[str]:
    return [
        '<section id="network">',
        "<h2>The network</h2>",
        "<figure>",
        *diagram.network_svg(trace, d),
        f"<figcaption>{diagram.caption(trace)}</figcaption>",
        "</figure>",
        '<p class="hint">Hover over a weight (or click it, or a row of the chain-rule '
        "table, to pin it) to highlight every path from it to the loss E.</p>",
        "</section>",
    ]


#: Cell classes of a four-column table: two formulas, the numbers, the value.
_EQ_EQ_NUMS_N = ["eq", "eq", "nums", "n"]


def _row(*cells, param=None, classes=None) -> str:
    """A table row; a cell of class ``eq`` wraps only between the terms."""
    attr = f' data-param="{param}"' if param else ""
    classes = classes or [""] * len(cells)
    tds = "".join(
        f'<td class="{c}">{_terms_together(cell) if c == "eq" else cell}</td>'
        if c
        else f"<td>{cell}</td>"
        for cell, c in zip(cells, classes, strict=True)
    )
    return f"<tr{attr}>{tds}</tr>"


_OPERATORS = "+\\-=·⊙←−"
#: A space with no operator beside it: the space inside a term (``W5 h1``).
_INNER_SPACE = re.compile(rf"(?<=[^\s{_OPERATORS}]) (?=[^\s{_OPERATORS}])")


def _terms_together(cell: str) -> str:
    """Makes the spaces inside terms non-breaking, so a line breaks only at ``+``.

    Examples:
      >>> _terms_together("z1 = W1 x1 + W2 x2 + b1")
      'z1 = W1&nbsp;x1 + W2&nbsp;x2 + b1'
    """
    return _INNER_SPACE.sub("&nbsp;", cell)


def _forward_section(trace: Trace, d: int) -> list[str]:
    out = [
        '<section id="forward">',
        "<h2>1. Forward pass</h2>",
        "<p>Each unit adds up its weighted inputs and its bias, "
        f"{math('z = sum of W · a + b')}, and applies its activation, "
        f"{math('a = f(z)')}.</p>",
        '<table><tr><th>equation</th><th class="n">with the numbers</th>'
        '<th class="n">value</th></tr>',
    ]
    for layer in trace.layers:
        for u in layer.units:
            numbers = forward_numbers(trace, layer, u, d)
            cls = ["eq", "nums", "n"]
            out.append(
                _row(math(u.equation), _num(numbers), fmt_values(u.z, d), classes=cls)
            )
            out.append(
                _row(
                    math(f"{u.name} = {u.activation}({u.z_name})"),
                    _num(f"{u.activation}({fmt_values(u.z, d)})"),
                    fmt_values(u.a, d),
                    classes=cls,
                )
            )
    out += ["</table>", "</section>"]
    return out


def _loss_section(trace: Trace, d: int) -> list[str]:
    loss = trace.loss
    out = [
        '<section id="loss">',
        f"<h2>2. Loss ({html.escape(loss.name)})</h2>",
        f"<p>{math(loss.formula)}"
        + (
            f"; E is the mean of l over the {trace.batch_size} examples"
            if trace.batch_size > 1
            else ""
        )
        + ".</p>",
        '<table><tr><th>term</th><th class="n">with the numbers</th>'
        '<th class="n">value</th>'
        "</tr>",
    ]
    cls = ["eq", "nums", "n"]
    if loss.probs is not None:
        for k in range(len(trace.targets)):
            values = [row[k] for row in loss.probs]
            out.append(
                _row(
                    math(f"p{k + 1} = softmax(o)_{k + 1}"),
                    "",
                    fmt_values(values, d),
                    classes=cls,
                )
            )
    for k, formula in enumerate(loss.term_formula):
        out.append(
            _row(
                math(f"E{k + 1} = {formula}"),
                _num(loss_numbers(trace, k, d)),
                fmt_values([row[k] for row in loss.terms], d),
                classes=cls,
            )
        )
    total = " + ".join(f"E{k + 1}" for k in range(len(trace.targets)))
    if trace.batch_size > 1:
        out.append(
            _row(math(f"l = {total}"), "", fmt_values(loss.per_example, d), classes=cls)
        )
        out.append(
            _row("E = mean of l", "", f"<b>{fmt(loss.value, d)}</b>", classes=cls)
        )
    else:
        out.append(
            _row(math(f"E = {total}"), "", f"<b>{fmt(loss.value, d)}</b>", classes=cls)
        )
    out += ["</table>", "</section>"]
    return out


def _backward_section(trace: Trace, d: int) -> list[str]:
    out = [
        '<section id="backward">',
        "<h2>3. Backward pass: the error signal δ = ∂E/∂z of every unit</h2>",
        *_output_deltas(trace, d),
    ]
    for layer in reversed(trace.layers[:-1]):
        out += _hidden_deltas(trace, layer, d)
    if len(trace.layers) > 1:
        # Routes are defined (in _routes) only where they differ from the paths.
        forms = "sum over paths and matrix form"
        if _has_routes(trace):
            forms = "Sum over paths, matrix form and sum over routes"
        out.append(
            f"<p>{forms.capitalize()} agree: largest "
            f"difference {_num(f'{trace.max_abs_paths_vs_matrix:.1e}')}.</p>"
        )
    out.append("</section>")
    return out


def _output_deltas(trace: Trace, d: int) -> list[str]:
    """The output layer's δ: the loss's slope times the activation's (or fused)."""
    fused = trace.loss.probs is not None
    if fused:
        how = (
            "Softmax and cross-entropy together give "
            + math("dE/dz = p - t")
            + " in one step."
        )
    else:
        how = (
            math("dE/dz = dE/do · do/dz") + ": the loss's slope times the activation's."
        )
    out = [
        f"<h3>Output layer</h3><p>{how}</p>",
        "<table><tr><th>error signal</th><th>formula</th>"
        '<th class="n">with the numbers</th>'
        '<th class="n">value</th></tr>',
    ]
    for u in trace.layers[-1].units:
        # The bias's chain rule holds the unit's factors: dE/do · do/dz (· 1).
        p = next(p for p in trace.params if p.kind == "b" and p.target == u.name)
        if fused:
            f = p.factors[0]
            cells = (
                math(f"dE/d{u.z_name}"),
                math(f.formula),
                _num(fmt_values(f.values, d)),
            )
        else:
            f_out, f_act = p.factors[0], p.factors[1]
            cells = (
                math(f"dE/d{u.z_name} = {f_out.symbol} · {f_act.symbol}"),
                math(f"{paren(f_out.formula)} · {paren(f_act.formula)}"),
                _num(f"{fmt_factor(f_out.values, d)} · {fmt_factor(f_act.values, d)}"),
            )
        out.append(_row(*cells, fmt_values(u.delta, d), classes=_EQ_EQ_NUMS_N))
    out.append("</table>")
    return out


def _hidden_deltas(trace: Trace, layer: Layer, d: int) -> list[str]:
    """A hidden layer's δ: the sum over paths, the routes, then the matrix form."""
    lo, hi = layer.index, layer.index + 1
    out = [
        f"<h3>Hidden layer {lo}: sum over paths</h3>",
        "<p>A hidden unit reaches the loss through every unit it feeds, so its "
        "slope is a sum with one term per path (Rumelhart, Hinton &amp; Williams "
        "1986, eq. 7); then the activation's slope turns it into δ.</p>",
        "<table><tr><th>quantity</th><th>sum over paths / chain rule</th>"
        '<th class="n">with the numbers</th><th class="n">value</th></tr>',
    ]
    for u in layer.units:
        symbolic, numbers = path_sum(u, d)
        out.append(
            _row(
                math(f"dE/d{u.name}"),
                math(symbolic),
                _num(numbers),
                fmt_values(u.dE_da, d),
                classes=_EQ_EQ_NUMS_N,
            )
        )
        out.append(
            _row(
                math(f"dE/d{u.z_name}"),
                math(f"dE/d{u.name} · {paren(u.derivative)}"),
                _num(f"{fmt_factor(u.dE_da, d)} · {fmt_factor(u.fprime, d)}"),
                fmt_values(u.delta, d),
                classes=_EQ_EQ_NUMS_N,
            )
        )
    out.append("</table>")
    out += _routes(layer, d)
    out.append(
        f"<p>The same in matrix form, the delta rule: "
        f"{math(f'delta_{lo} = (delta_{hi} W_{hi}^T) ⊙ f′(z_{lo})')}</p>"
    )
    for n in range(trace.batch_size):
        label = f"example {n + 1}<br>" if trace.batch_size > 1 else ""
        rows = delta_rule_rows(trace, layer, n, d, prime="′")
        # One row of a matrix per line.
        body = "".join(
            f"<div>{math(name)} = {_num(value).replace('; ', ';<br>')}</div>"
            for name, value in rows
        )
        out.append(f'<div class="matrix">{label}{body}</div>')
    return out


def _routes(layer: Layer, d: int) -> list[str]:
    """The sum over paths unrolled through every later layer, where that differs."""
    routes = [u for u in layer.units if u.routes > len(u.paths)]
    if not routes:
        return []
    return [
        "<p>Unrolled through every later layer, the sum over paths becomes a sum "
        "over <em>routes</em>: a route runs from the unit through one unit of each "
        "later layer to an output, and adds the product of the weights and "
        "activation slopes along it. "
        + "; ".join(
            f"{math(f'dE/d{u.name}')} is the sum over {u.routes} routes = "
            f"{_num(fmt_values(u.routes_sum, d))}"
            for u in routes
        )
        + ".</p>"
    ]


def _has_routes(trace: Trace) -> bool:
    """Whether a hidden unit reaches the outputs by more routes than paths."""
    return any(
        u.routes > len(u.paths) for layer in trace.layers[:-1] for u in layer.units
    )


def _chain_section(trace: Trace, d: int) -> list[str]:
    batch = trace.batch_size
    out = [
        '<section id="chain">',
        "<h2>4. Chain rule, weight by weight</h2>",
        "<p>"
        + math("dE/dW = dE/da · da/dz · dz/dW")
        + ", where the last factor is the input the weight multiplies (1 for a bias)"
        + (f"; the products of the {batch} examples are summed" if batch > 1 else "")
        + '. <span class="hint">Click a row to see the weight in the diagram.</span>'
        "</p>",
        "<table><tr><th>gradient</th><th>chain rule</th>"
        '<th class="n">with the numbers</th>'
        '<th class="n">product</th></tr>',
    ]
    cls = ["eq", "eq", "nums", "n"]
    for layer in reversed(trace.layers):
        for p in trace.params:
            if p.layer != layer.index:
                continue
            symbols = " · ".join(f.symbol for f in p.factors)
            numbers = " · ".join(fmt_factor(f.values, d) for f in p.factors)
            value = fmt(sum(p.chain), d)
            if batch > 1:
                numbers = f"sum {numbers} = sum {fmt_values(p.chain, d)}"
            out.append(
                _row(
                    math(f"dE/d{p.name}"),
                    math(symbols),
                    _num(numbers),
                    value,
                    param=p.name,
                    classes=cls,
                )
            )
    out += ["</table>", "</section>"]
    return out


def _grads_section(trace: Trace, d: int) -> list[str]:
    out = [
        '<section id="grads">',
        "<h2>5. Manual gradient and jax.grad, side by side</h2>",
        "<p>The chain rule above, the library's delta rule "
        "(<code>net.manual_grad</code>) and automatic differentiation "
        "(<code>jax.grad(net.loss)</code>).</p>",
        '<table><tr><th>parameter</th><th class="n">chain rule</th>'
        '<th class="n">manual (delta rule)</th><th class="n">jax.grad</th>'
        '<th class="n">|manual − jax.grad|</th></tr>',
    ]
    cls = ["", "n", "n", "n", "n"]
    for p in trace.params:
        out.append(
            _row(
                math(p.name),
                fmt(sum(p.chain), d),
                fmt(p.manual, d),
                fmt(p.autodiff, d),
                f"{abs(p.manual - p.autodiff):.1e}",
                param=p.name,
                classes=cls,
            )
        )
    out.append("</table>")
    out.append(
        f"<p>Largest |manual − jax.grad| = "
        f"{_num(f'{trace.max_abs_manual_vs_autodiff:.1e}')}; largest "
        f"|chain rule − manual| = {_num(f'{trace.max_abs_chain_vs_manual:.1e}')}.</p>"
    )
    out.append("</section>")
    return out


def _step_section(trace: Trace, d: int) -> list[str]:
    lr = fmt(trace.lr, d)
    out = [
        '<section id="step">',
        f"<h2>6. One step of gradient descent, learning rate {lr}</h2>",
        f"<p>{math(f'W ← W - {lr} · dE/dW')} for every weight and bias.</p>",
        '<table><tr><th>parameter</th><th class="n">with the numbers</th>'
        '<th class="n">before</th><th class="n">after</th></tr>',
    ]
    cls = ["", "nums", "n", "n"]
    for p in trace.params:
        numbers = f"{fmt(p.value, d)} - {lr} · {fmt_factor([p.manual], d)}"
        out.append(
            _row(
                math(p.name),
                _num(numbers),
                fmt(p.value, d),
                f"<b>{fmt(p.updated, d)}</b>",
                param=p.name,
                classes=cls,
            )
        )
    out.append("</table>")
    out.append(
        f"<p>The loss after the step: E = {_num(fmt(trace.loss_after, d))} "
        f"(before: {_num(fmt(trace.loss.value, d))}).</p>"
    )
    out.append("</section>")
    return out


def _checks_section(checks) -> list[str]:
    passed = sum(c.ok for c in checks)
    out = [
        '<section id="checks">',
        "<h2>Checks against the published values</h2>",
        f"<p>{passed} of {len(checks)} published numbers reproduced.</p>",
        '<table><tr><th>value</th><th class="n">published</th>'
        '<th class="n">this trace</th><th class="n">|difference|</th><th></th></tr>',
    ]
    for c in checks:
        out.append(
            _row(
                math(c.name),
                fmt(c.expected, 12),
                fmt(c.got, 12),
                f"{abs(c.got - c.expected):.1e}",
                "ok" if c.ok else "<b>FAIL</b>",
                classes=["", "n", "n", "n", ""],
            )
        )
    out += ["</table>", "</section>"]
    return out
