"""jaxbp.explain: the trace of one step against textbook and hand-computed values."""

import doctest
import importlib
import importlib.resources
import json
import math
import pathlib
import re
import subprocess
import sys
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp import explainer, render
from jaxbp.explainer import examples, inputs
from jaxbp.render import diagram

TEXTBOOK = {
    "sizes": (2, 2, 2),
    "params": [
        {"w": [[0.3, 0.4], [0.25, 0.35]], "b": [0.0, 0.0]},
        {"w": [[0.45, 0.7], [0.4, 0.6]], "b": [0.0, 0.0]},
    ],
    "x": [0.1, 0.2],
    "y": [0.4, 0.6],
}


def _textbook_trace(lr=0.5):
    net = jaxbp.MLP(TEXTBOOK["sizes"], "sigmoid", "sigmoid", "half_sse")
    return jaxbp.explain(net, TEXTBOOK["params"], TEXTBOOK["x"], TEXTBOOK["y"], lr=lr)


# ----------------------------------------------------------------- the 2-2-2 textbook
def test_textbook_values_to_eight_decimals():
    trace = _textbook_trace()
    published = {
        "z1": 0.08,
        "z2": 0.11,
        "h1": 0.51998934,
        "h2": 0.52747230,
        "z3": 0.44498412,
        "o1": 0.60944600,
        "o2": 0.66384491,
        "E1": 0.02193381,
        "E2": 0.00203809,
        "E": 0.02397190,
        "dE/dz3": 0.04985267,
        "dE/dz4": 0.01424730,
        "dE/dh1": 0.03240681,
        "dE/dW5": 0.02592286,
        "dE/dW1": 0.00080888,
        "new W5": 0.43703857,
    }
    for name, value in published.items():
        assert round(trace.value(name), 8) == pytest.approx(value, abs=1e-12), name


def test_textbook_chain_rule_factors():
    trace = _textbook_trace()
    w5 = trace.param("W5")
    assert [f.symbol for f in w5.factors] == ["dE/do1", "do1/dz3", "dz3/dW5"]
    assert [f.formula for f in w5.factors] == ["o1 - t1", "o1 (1 - o1)", "h1"]
    got = [round(f.values[0], 8) for f in w5.factors]
    assert got == [0.20944600, 0.23802157, 0.51998934]
    assert round(w5.chain[0], 8) == 0.02592286
    # W1 sits in the hidden layer: dE/dh1 is the sum over the two paths through
    # z3 (weight W5) and z4 (weight W7).
    w1 = trace.param("W1")
    assert [f.symbol for f in w1.factors] == ["dE/dh1", "dh1/dz1", "dz1/dW1"]
    assert w1.factors[0].formula == "dE/dz3·W5 + dE/dz4·W7"
    h1 = trace.layers[0].units[0]
    assert [(p.via, p.weight, p.weight_value) for p in h1.paths] == [
        ("z3", "W5", 0.45),
        ("z4", "W7", 0.7),
    ]
    assert sum(p.product[0] for p in h1.paths) == pytest.approx(h1.dE_da[0], abs=0)
    # The matrix form (delta_2 W_2^T) gives the same number.
    assert h1.matrix_form[0] == pytest.approx(h1.dE_da[0], rel=1e-15)
    assert round(h1.dE_da[0], 8) == 0.03240681


def test_textbook_gradients_match_jax_grad_and_step():
    trace = _textbook_trace()
    assert trace.max_abs_manual_vs_autodiff < 1e-15
    assert trace.max_abs_chain_vs_manual < 1e-15
    assert trace.max_abs_paths_vs_matrix < 1e-15
    names = [p.name for p in trace.params]
    assert names == [f"W{k}" for k in range(1, 9)] + [f"b{k}" for k in range(1, 5)]
    for p in trace.params:
        assert p.updated == pytest.approx(p.value - 0.5 * p.manual, abs=1e-16)
    net = jaxbp.MLP((2, 2, 2), "sigmoid", "sigmoid", "half_sse")
    with jax.enable_x64(True):
        after = float(net.loss(trace.updated_params(), jnp.array([TEXTBOOK["x"]]),
                               jnp.array([TEXTBOOK["y"]])))  # fmt: skip
    assert trace.loss_after == pytest.approx(after, rel=1e-14)
    assert trace.loss_after < trace.loss.value


# ----------------------------------------------------------------- hand-computed nets
TANH_PARAMS = [
    {"w": [[0.5, -0.4], [0.3, 0.8]], "b": [0.1, -0.2]},
    {"w": [[1.2], [-0.7]], "b": [0.05]},
]


def _hand_2_2_1(act, dact, x, t, lr):
    """A 2-2-1 network with biases, identity output, half_sse, worked by hand."""
    (w1, b1), (w2, b2) = ((p["w"], p["b"]) for p in TANH_PARAMS)
    z = [w1[0][j] * x[0] + w1[1][j] * x[1] + b1[j] for j in range(2)]
    h = [act(v) for v in z]
    o = w2[0][0] * h[0] + w2[1][0] * h[1] + b2[0]
    e = 0.5 * (o - t) ** 2
    d_o = o - t  # dE/do = dE/dz3 (identity output)
    d_h = [d_o * w2[j][0] for j in range(2)]  # one path per hidden unit
    d_z = [d_h[j] * dact(z[j], h[j]) for j in range(2)]
    grads = {
        "W1": x[0] * d_z[0],
        "W2": x[1] * d_z[0],
        "W3": x[0] * d_z[1],
        "W4": x[1] * d_z[1],
        "W5": h[0] * d_o,
        "W6": h[1] * d_o,
        "b1": d_z[0],
        "b2": d_z[1],
        "b3": d_o,
    }
    values = {"z1": z[0], "z2": z[1], "h1": h[0], "h2": h[1], "o1": o, "E": e}
    values.update({f"dE/d{k}": v for k, v in grads.items()})
    values.update({"dE/dz1": d_z[0], "dE/dz2": d_z[1], "dE/dz3": d_o})
    old = {"W1": 0.5, "W2": 0.3, "W3": -0.4, "W4": 0.8, "W5": 1.2, "W6": -0.7}
    old.update({"b1": 0.1, "b2": -0.2, "b3": 0.05})
    values.update({f"new {k}": old[k] - lr * g for k, g in grads.items()})
    return values


@pytest.mark.parametrize(
    "activation, act, dact",
    [
        ("tanh", math.tanh, lambda z, a: 1 - a * a),
        ("relu", lambda z: max(z, 0.0), lambda z, a: 1.0 if z > 0 else 0.0),
    ],
)
def test_hand_computed_network_with_biases(activation, act, dact):
    x, t, lr = [1.0, -0.5], 0.3, 0.1
    net = jaxbp.MLP((2, 2, 1), activation, "identity", "half_sse")
    trace = jaxbp.explain(net, TANH_PARAMS, x, [t], lr=lr)
    hand = _hand_2_2_1(act, dact, x, t, lr)
    for name, value in hand.items():
        assert trace.value(name) == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert trace.max_abs_manual_vs_autodiff < 1e-15
    assert trace.max_abs_chain_vs_manual < 1e-15
    if activation == "relu":
        # z2 = -0.4 - 0.4 - 0.2 = -1 < 0: unit h2 is dead, its weights get no gradient.
        assert trace.value("z2") == pytest.approx(-1.0)
        for name in ("W3", "W4", "b2"):
            assert trace.param(name).manual == 0.0
        assert trace.layers[0].units[1].derivative == "1 if z2 > 0 else 0"


def _hand_losses(loss, o, t):
    """``(per-output terms, dE/do)`` of one example, by hand."""
    if loss == "half_sse":
        return 0.5 * (o - t) ** 2, o - t
    if loss == "mse":
        return (o - t) ** 2 / len(o), 2 * (o - t) / len(o)
    p = np.exp(o) / np.sum(np.exp(o))
    return -t * np.log(p), p - t


@pytest.mark.parametrize("loss", ["half_sse", "mse", "softmax_cross_entropy"])
def test_each_loss_against_hand_computation(loss):
    params = [
        {"w": [[0.2, -0.5], [0.7, 0.1]], "b": [0.3, -0.1]},
        {"w": [[0.9, -0.3], [-0.6, 0.4]], "b": [0.0, 0.2]},
    ]
    x = np.array([0.5, -1.5])
    t = (
        np.array([0.0, 1.0])
        if loss == "softmax_cross_entropy"
        else np.array([0.2, 0.8])
    )
    net = jaxbp.MLP((2, 2, 2), "sigmoid", "identity", loss)
    # softmax cross-entropy takes an integer label as well as a one-hot row.
    y = 1 if loss == "softmax_cross_entropy" else t
    trace = jaxbp.explain(net, params, x, y, lr=0.5)

    w1, b1 = np.array(params[0]["w"]), np.array(params[0]["b"])
    w2, b2 = np.array(params[1]["w"]), np.array(params[1]["b"])
    h = 1 / (1 + np.exp(-(x @ w1 + b1)))
    o = h @ w2 + b2
    terms, delta_o = _hand_losses(loss, o, t)
    delta_h = (delta_o @ w2.T) * h * (1 - h)
    grads = [np.outer(x, delta_h), delta_h, np.outer(h, delta_o), delta_o]

    np.testing.assert_allclose(trace.loss.terms[0], terms, rtol=1e-12)
    assert trace.loss.value == pytest.approx(terms.sum(), rel=1e-12)
    np.testing.assert_allclose(trace.layers[-1].delta[0], delta_o, rtol=1e-12)
    np.testing.assert_allclose(trace.layers[0].delta[0], delta_h, rtol=1e-12)
    for p in trace.params:
        g = grads[2 * (p.layer - 1) + (p.kind == "b")]
        want = g[p.row, p.col] if p.kind == "w" else g[p.col]
        assert p.manual == pytest.approx(want, rel=1e-12, abs=1e-16), p.name
        assert sum(p.chain) == pytest.approx(want, rel=1e-12, abs=1e-16), p.name
        assert p.autodiff == pytest.approx(want, rel=1e-12, abs=1e-16), p.name
    if loss == "softmax_cross_entropy":
        assert trace.param("W5").factors[0].symbol == "dE/dz3"  # fused: p - t
        assert trace.param("W5").factors[0].formula == "p1 - t1"
        p = np.exp(o) / np.exp(o).sum()
        np.testing.assert_allclose(trace.loss.probs[0], p, rtol=1e-12)
    else:
        assert trace.loss.probs is None


# ----------------------------------------------------------------- any small network
@pytest.mark.parametrize("activation", sorted(jaxbp.ACTIVATIONS))
def test_every_activation_agrees_with_jax_grad(activation):
    net = jaxbp.MLP((3, 4, 2), activation, "identity", "softmax_cross_entropy")
    params = [
        {k: np.asarray(v, np.float64) for k, v in layer.items()}
        for layer in net.init(jax.random.key(3))
    ]
    trace = jaxbp.explain(net, params, [[0.3, -0.2, 0.9], [1.0, 0.5, -0.4]], [0, 1])
    assert trace.max_abs_manual_vs_autodiff < 1e-12
    assert trace.max_abs_chain_vs_manual < 1e-12
    assert trace.max_abs_paths_vs_matrix < 1e-12


def test_deep_network_paths_routes_and_matrix_form_agree():
    net = jaxbp.MLP((2, 3, 3, 2, 2), "tanh", "sigmoid", "mse")
    with jax.enable_x64(True):
        params = net.init(jax.random.key(7), dtype=jnp.float64)
    trace = jaxbp.explain(net, params, [[0.5, -1.0], [0.2, 0.3]], [[0.1, 0.9]] * 2)
    assert trace.max_abs_manual_vs_autodiff < 1e-14
    assert trace.max_abs_paths_vs_matrix < 1e-15
    first = trace.layers[0].units[0]
    assert first.routes == 3 * 2 * 2  # through every unit of every later layer
    assert len(first.paths) == 3  # one term per unit it feeds
    np.testing.assert_allclose(first.routes_sum, first.dE_da, rtol=1e-13)
    assert [u.name for u in trace.units] == [f"h{k}" for k in range(1, 9)] + [
        "o1",
        "o2",
    ]
    assert trace.layers[2].units[0].equation == "z7 = W16 h4 + W17 h5 + W18 h6 + b7"


def test_batch_sums_the_chain_rule_over_examples():
    net = jaxbp.MLP((2, 2, 1), "sigmoid", "identity", "mse")
    x = [[0.1, 0.2], [0.3, -0.4], [1.0, 0.0]]
    y = [[1.0], [0.0], [0.5]]
    trace = jaxbp.explain(net, TANH_PARAMS, x, y, lr=0.1)
    assert trace.batch_size == 3
    assert len(trace.param("W1").chain) == 3
    assert trace.param("W1").factors[0].formula == "dE/dz3·W5"
    assert trace.param("W5").factors[0].formula == "2 (o1 - t1) / 3"
    for p in trace.params:
        assert sum(p.chain) == pytest.approx(p.manual, rel=1e-12, abs=1e-16)
    assert trace.max_abs_manual_vs_autodiff < 1e-15
    assert trace.loss.value == pytest.approx(np.mean(trace.loss.per_example))


def test_float32_parameters_are_traced_in_float64_and_agree_loosely():
    net = jaxbp.MLP((2, 3, 2), "sigmoid", "identity", "softmax_cross_entropy")
    params32 = net.init(jax.random.key(0))  # float32
    x = jnp.array([[0.3, 0.7]], jnp.float32)
    trace = jaxbp.explain(net, params32, x, jnp.array([1]))
    grads32 = jax.grad(net.loss)(params32, x, jnp.array([1]))
    for p in trace.params:
        leaf = grads32[p.layer - 1][p.kind]
        want = float(leaf[p.row, p.col] if p.kind == "w" else leaf[p.col])
        assert sum(p.chain) == pytest.approx(want, rel=1e-4, abs=1e-6), p.name
    assert trace.max_abs_manual_vs_autodiff < 1e-15  # both in float64


def test_a_wrong_manual_gradient_shows_in_the_stated_differences(monkeypatch):
    """The stated differences are measured, not assumed: break manual_grad."""
    real = jaxbp.MLP.manual_grad

    def off_by_a_bit(self, params, x, y):
        grads = real(self, params, x, y)
        return jax.tree.map(lambda g: g * 1.01, grads)

    monkeypatch.setattr(jaxbp.MLP, "manual_grad", off_by_a_bit)
    trace = _textbook_trace()
    assert trace.max_abs_manual_vs_autodiff > 1e-6
    assert trace.max_abs_chain_vs_manual > 1e-6


# ----------------------------------------------------------------- limits and errors
@pytest.mark.parametrize(
    "sizes, batch, match",
    [
        ((2, 9, 1), 1, "layer 1 of .* has 9 units; .* up to 8"),
        ((9, 2), 1, "the input .* has 9 units"),
        ((2, 2, 2, 2, 2, 2), 1, "5 weight layers; .* up to 4"),
        ((2, 2, 1), 5, "5 examples; .* up to 4"),
    ],
)
def test_too_large_is_refused_with_the_reason(sizes, batch, match):
    net = jaxbp.MLP(sizes, "sigmoid", "identity", "half_sse")
    params = [
        {"w": np.zeros((m, n)), "b": np.zeros(n)}
        for m, n in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    x = np.zeros((batch, sizes[0]))
    y = np.zeros((batch, sizes[-1]))
    with pytest.raises(ValueError, match=match):
        jaxbp.explain(net, params, x, y)


def test_parameters_that_do_not_fit_are_refused():
    net = jaxbp.MLP((2, 2, 2), "sigmoid", "sigmoid", "half_sse")
    params = [dict(TEXTBOOK["params"][0]), dict(TEXTBOOK["params"][0])]
    params[1] = {"w": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], "b": [0.0, 0.0, 0.0]}
    with pytest.raises(ValueError, match=r"params\[1\]\['w'\] has shape \(2, 3\)"):
        jaxbp.explain(net, params, [0.1, 0.2], [0.4, 0.6])
    with pytest.raises(ValueError, match="x has 3 features"):
        jaxbp.explain(net, TEXTBOOK["params"], [0.1, 0.2, 0.3], [0.4, 0.6])
    with pytest.raises(ValueError, match="lr must be a finite number"):
        jaxbp.explain(net, TEXTBOOK["params"], [0.1, 0.2], [0.4, 0.6], lr=math.nan)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"w": [[1.0]], "b": [0.0]}, "must be a non-empty list"),
        ([{"w": [[1.0]]}], 'exactly the keys "w" and "b"'),
        ([{"w": [1.0, 2.0], "b": [0.0]}], "must be a list of rows"),
        ([{"w": [[1.0, 2.0], [3.0]], "b": [0.0, 0.0]}], "row 1 has 1 numbers"),
        ([{"w": [[1.0, 2.0]], "b": [0.0]}], "has 1 numbers but .* 2 columns"),
        ([{"w": [["a"]], "b": [0.0]}], "must hold only numbers"),
        ([{"w": [[True]], "b": [0.0]}], "not true/false"),
        (
            [{"w": [[1.0, 2.0]], "b": [0.0, 0.0]}, {"w": [[1.0]], "b": [0.0]}],
            r"params\[1\]\[\"w\"\] has 1 rows but params\[0\] feeds 2 units",
        ),
    ],
)
def test_parse_params_names_the_problem(obj, match):
    with pytest.raises(ValueError, match=match):
        inputs.parse_params(obj)


def test_read_params_reports_bad_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"w": [[0.1]], "b": [0.0],}]')
    with pytest.raises(ValueError, match="not valid JSON: .* line 1 column"):
        inputs.read_params(path)
    with pytest.raises(ValueError, match="cannot read"):
        inputs.read_params(tmp_path / "missing.json")


# ----------------------------------------------------------------- shipped examples
@pytest.mark.parametrize("name", examples.example_names())
def test_shipped_examples_reproduce_their_published_numbers(name):
    trace, checks = examples.explain_example(name)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert trace.max_abs_manual_vs_autodiff < 1e-12


def test_examples_include_the_issue_examples():
    assert {"sigmoid-2-2-2", "linear-regression"} <= set(examples.example_names())
    trace, _ = examples.explain_example("linear-regression")
    assert trace.sizes == (1, 1) and trace.batch_size == 4
    assert trace.value("dE/dW1") == pytest.approx(-35.0, abs=1e-12)
    assert trace.value("E after") == pytest.approx(28.45315, abs=1e-12)


def test_published_check_fails_on_a_wrong_number():
    example = examples.load_example("sigmoid-2-2-2")
    wrong = example._replace(published={**example.published, "h1": 0.51998935})
    trace, _ = examples.explain_example("sigmoid-2-2-2")
    checks = examples.check_published(trace, wrong)
    assert [c.name for c in checks if not c.ok] == ["h1"]


def test_other_learning_rate_skips_the_published_step():
    trace, checks = examples.explain_example("sigmoid-2-2-2", lr=0.1)
    assert trace.lr == 0.1
    assert "new W5" not in {c.name for c in checks} and all(c.ok for c in checks)


def test_unknown_example_lists_the_known_ones():
    with pytest.raises(ValueError, match="choose one of: linear-regression"):
        examples.load_example("nope")


# ----------------------------------------------------------------- records
def test_value_lookup_and_json_record():
    trace = _textbook_trace()
    assert trace.value("x2") == 0.2 and trace.value("t1") == 0.4
    assert trace.value("W7") == 0.7 and trace.value("b1") == 0.0
    with pytest.raises(KeyError):
        trace.value("W9")
    record = json.loads(render.render_json(trace, title="t"))
    assert record["title"] == "t" and record["batch_size"] == 1
    assert record["loss_terms"]["value"] == trace.loss.value
    assert record["params"][4]["name"] == "W5"
    assert record["params"][4]["factors"][1]["formula"] == "o1 (1 - o1)"


def test_text_shows_every_step():
    out = render.render_text(_textbook_trace())
    for line in (
        "z1 = W1 x1 + W2 x2 + b1 = 0.3·0.1 + 0.25·0.2 + 0 = 0.08",
        "E1 = 1/2 (o1 - t1)^2 = 1/2 (0.60944600 - 0.4)^2 = 0.02193381",
        "dE/dh1 = dE/dz3·W5 + dE/dz4·W7 = 0.04985267·0.45 + 0.01424730·0.7 = "
        "0.03240681",
        "delta_2 W_2^T = [0.03240681, 0.02848945]",
        "dE/dW5 = dE/do1 · do1/dz3 · dz3/dW5 = 0.20944600 · 0.23802157 · "
        "0.51998934 = 0.02592286",
        "W5 = 0.45 - 0.5 · 0.02592286 = 0.43703857",
        "largest |manual - jax.grad| = 0.0e+00",
    ):
        assert line in out, line


def test_html_is_self_contained():
    page = render.render_html(_textbook_trace(), title="2-2-2")
    assert page.startswith("<!doctype html>")
    lowered = page.lower()
    for external in ("<script src", "<link", "@import", "url(", "http://", "https://"):
        assert external not in lowered, external
    assert "<svg" in page and 'data-param="W5"' in page
    for number in ("0.51998934", "0.02397190", "0.02592286", "0.43703857"):
        assert number in page
    assert "@media print" in page


# ----------------------------------------------------------------- library and page
def test_import_jaxbp_loads_no_renderer_cli_or_plotting():
    """Presentation sits on top: ``import jaxbp`` computes traces but renders none."""
    code = (
        "import sys, jaxbp; jaxbp.explain; "
        "print(sorted(m for m in sys.modules if m.startswith(('jaxbp.render', "
        "'jaxbp.cli', 'matplotlib'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_old_renderer_names_still_resolve():
    assert explainer.render_text is render.render_text
    assert explainer.render_json is render.render_json
    assert explainer.render_html is render.render_html
    with pytest.raises(AttributeError):
        explainer.render_pdf  # noqa: B018


@pytest.mark.parametrize("name", ["explain.css", "explain.js"])
def test_page_style_and_script_are_package_data(name):
    """The files ship inside the package (a wheel has them) and go into the page."""
    resource = importlib.resources.files("jaxbp.render") / "static" / name
    assert resource.is_file(), resource
    content = resource.read_text(encoding="utf-8")
    assert len(content) > 500
    assert content in render.render_html(_textbook_trace())


def test_wheel_declares_the_package_data():
    """pyproject.toml names the data files, so a wheel built from it holds them."""
    pyproject = tomllib.loads(
        (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    )
    declared = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["artifacts"]
    assert "jaxbp/render/static/*.css" in declared
    assert "jaxbp/render/static/*.js" in declared
    assert "jaxbp/explainer/examples/*.json" in declared


@pytest.mark.parametrize(
    "module",
    [
        "jaxbp.explainer.examples",
        "jaxbp.explainer.inputs",
        "jaxbp.explainer.trace",
        "jaxbp.render",
        "jaxbp.render.diagram",
        "jaxbp.render.formatting",
        "jaxbp.render.html",
    ],
)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0, result


def test_routes_are_named_only_where_the_page_defines_them():
    """One hidden layer: routes are the paths, so neither text nor page names them."""
    trace = _textbook_trace()
    assert "routes" not in render.render_text(trace)
    assert "routes" not in render.render_html(trace)
    assert "sum over paths = matrix form: largest" in render.render_text(trace)
    net = jaxbp.MLP((2, 3, 2, 2), "tanh", "sigmoid", "mse")
    with jax.enable_x64(True):
        params = net.init(jax.random.key(7), dtype=jnp.float64)
    deep = jaxbp.explain(net, params, [0.5, -1.0], [0.1, 0.9])
    text, page = render.render_text(deep), render.render_html(deep)
    assert "(the same as the sum over all 4 routes from h1" in text
    assert "sum over paths = matrix form = sum over routes: largest" in text
    assert "over <em>routes</em>: a route runs from the unit through one unit" in page
    assert "sum over routes agree" in page


def test_textbook_example_says_its_biases_are_trained():
    example = examples.load_example("sigmoid-2-2-2")
    assert "no biases" not in example.title + example.description
    assert "biases starting at zero" in example.title
    trace, _ = examples.explain_example("sigmoid-2-2-2")
    biases = [p for p in trace.params if p.kind == "b"]
    assert [p.name for p in biases] == ["b1", "b2", "b3", "b4"]
    assert all(p.value == 0 and p.updated != 0 for p in biases)


def test_a_matrix_shows_one_row_per_line():
    page = render.render_html(_textbook_trace())
    assert "[0.45, 0.7;<br>0.4, 0.6]" in page


def test_the_text_of_the_largest_network_fits_100_columns_and_keeps_every_number():
    """8-8-8-8 (the largest allowed): equations wrap, a matrix prints row by row."""
    net = jaxbp.MLP((8, 8, 8, 8), "sigmoid", "identity", "softmax_cross_entropy")
    params = net.init(jax.random.key(0))
    x = [0.1 * (i + 1) for i in range(8)]
    trace = jaxbp.explain(net, params, x, 3)
    text = render.render_text(trace)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    w3 = next(i for i, line in enumerate(lines) if line.lstrip().startswith("W_3 "))
    assert lines[w3].rstrip().endswith(",") and lines[w3 + 1].rstrip().endswith(";")
    column = lines[w3].index("[") + 1
    assert all(lines[w3 + k][column - 1 : column] == " " for k in (1, 2))
    # The wrapping moves line breaks and nothing else.
    assert text.split() == render.render_text(trace, width=0).split()
    assert (
        max(len(line) for line in render.render_text(trace, width=0).splitlines()) > 100
    )


def test_weight_labels_stay_on_their_lines():
    """Each label is centred on its weight's line (the browser test checks more)."""
    svg = "\n".join(diagram.network_svg(_textbook_trace(), 8))
    edges = re.findall(
        r'data-param="(W\d+)".*?<line x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" '
        r'y2="([\d.]+)"/>.*?<text x="([\d.]+)" y="([\d.]+)"',
        svg,
    )
    assert [e[0] for e in edges] == [f"W{k}" for k in range(1, 9)]
    for _, *numbers in edges:
        x0, y0, x1, y1, x, baseline = map(float, numbers)
        assert x0 < x < x1
        # The text's baseline sits 4 below its centre.
        on_line = y0 + (x - x0) / (x1 - x0) * (y1 - y0)
        assert baseline - 4 == pytest.approx(on_line, abs=0.11)
