"""Numbers and formulas as a trace shows them, shared by the text and HTML renderers.

Every number of :func:`jaxbp.render.render_text` and :func:`jaxbp.render.render_html`
is written by :func:`fmt`; the formulas with their numbers substituted (a forward sum,
a loss term, a sum over paths, the delta rule in matrix form) are built here once, so
that the terminal and the web page show the same arithmetic.
"""

import math
import re

from jaxbp.explainer.trace import Layer, Trace, Unit


# ----------------------------------------------------------------------- numbers
def fmt(value: float, digits: int = 8) -> str:
    """A number as a learner writes it: ``0.3`` stays ``0.3``; others get ``digits``.

    A number too small to show in ``digits`` decimals is written in scientific form
    rather than as 0.

    Examples:
      >>> fmt(0.3), fmt(0.51998934015558), fmt(-35.0), fmt(1 / 3, 4), fmt(3e-11)
      ('0.3', '0.51998934', '-35', '0.3333', '3.00e-11')
    """
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) < 0.5 * 10.0**-digits:
        return f"{value:.2e}"
    fixed = f"{value:.{digits}f}"
    # Short numbers (0.3, 0.35 = 0.35000000000000003) keep their short form.
    if abs(float(fixed) - value) <= 4e-16 * abs(value) or float(fixed) == 0:
        fixed = fixed.rstrip("0").rstrip(".") if "." in fixed else fixed
    if fixed in ("-0", ""):
        fixed = "0"
    return fixed


def fmt_values(values, digits: int = 8) -> str:
    """One number for one example, ``[v1, v2, ...]`` for a batch."""
    if len(values) == 1:
        return fmt(values[0], digits)
    return "[" + ", ".join(fmt(v, digits) for v in values) + "]"


def fmt_factor(values, digits: int) -> str:
    """Like :func:`fmt_values`, with a negative single number in parentheses."""
    text = fmt_values(values, digits)
    return f"({text})" if text.startswith("-") else text


def vector(row, digits: int) -> str:
    """``[v1, v2, ...]``."""
    return "[" + ", ".join(fmt(v, digits) for v in row) + "]"


def matrix(rows, digits: int) -> str:
    """``[w11, w12; w21, w22]``: rows separated by semicolons."""
    return "[" + "; ".join(", ".join(fmt(v, digits) for v in r) for r in rows) + "]"


def product(values_list, digits: int) -> str:
    """``v1 · v2 · ...``, negative single numbers in parentheses."""
    return " · ".join(fmt_factor(v, digits) for v in values_list)


def paren(formula: str) -> str:
    """``formula`` in parentheses where a product would misread it.

    Examples:
      >>> paren("1 - h1^2"), paren("h1 (1 - h1)"), paren("x1")
      ('(1 - h1^2)', 'h1 (1 - h1)', 'x1')
    """
    if re.fullmatch(r"\w+ \(.*\)", formula) or not re.search(r" [-+] | if ", formula):
        return formula
    return f"({formula})"


# ------------------------------------------------------ formulas with numbers in
def forward_numbers(trace: Trace, layer: Layer, unit: Unit, digits: int) -> str:
    """``z`` of ``unit`` with its numbers: ``0.3·0.1 + 0.25·0.2 + 0``."""
    if layer.index == 1:
        sources = [[row[i] for row in trace.x] for i in range(len(trace.inputs))]
    else:
        below = trace.layers[layer.index - 2]
        sources = [[row[i] for row in below.a] for i in range(len(below.units))]
    terms = " + ".join(
        f"{fmt_factor([layer.w[i][unit.index]], digits)}·{fmt_factor(src, digits)}"
        for i, src in enumerate(sources)
    )
    return f"{terms} + {fmt_factor([layer.b[unit.index]], digits)}"


def loss_numbers(trace: Trace, k: int, digits: int) -> str:
    """The loss term of output ``k`` with its numbers substituted."""
    o = fmt_factor([row[k] for row in trace.layers[-1].a], digits)
    t = fmt_factor([row[k] for row in trace.y], digits)
    if trace.loss.name == "half_sse":
        return f"1/2 ({o} - {t})^2"
    if trace.loss.name == "mse":
        n_out = len(trace.targets)
        return f"({o} - {t})^2" + (f" / {n_out}" if n_out > 1 else "")
    p = fmt_factor([row[k] for row in trace.loss.probs], digits)
    return f"-{t} log {p}"


def path_sum(unit: Unit, digits: int) -> tuple[str, str]:
    """``dE/dh`` of a hidden unit as a sum over paths: the symbols and the numbers."""
    symbolic = " + ".join(f"dE/d{p.via}·{p.weight}" for p in unit.paths)
    numbers = " + ".join(
        f"{fmt_factor(p.delta, digits)}·{fmt_factor([p.weight_value], digits)}"
        for p in unit.paths
    )
    return symbolic, numbers


def delta_rule_rows(
    trace: Trace, layer: Layer, example: int, digits: int, *, prime: str = "'"
) -> list[tuple[str, str]]:
    """The delta rule in matrix form for one example: ``[(name, value)]``.

    ``delta_l = (delta_{l+1} W_{l+1}^T) ⊙ f'(z_l)``, each quantity with its numbers;
    ``prime`` is the mark written in ``f'`` (the web page uses ``′``).
    """
    nxt = trace.layers[layer.index]
    lo, hi = layer.index, nxt.index
    return [
        (f"delta_{hi}", vector(nxt.delta[example], digits)),
        (f"W_{hi}", matrix(nxt.w, digits)),
        (f"delta_{hi} W_{hi}^T", vector(layer.back[example], digits)),
        (f"f{prime}(z_{lo})", vector(layer.fprime[example], digits)),
        (f"delta_{lo}", vector(layer.delta[example], digits)),
    ]
