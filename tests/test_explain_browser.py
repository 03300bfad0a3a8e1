"""The ``jaxbp explain`` web page in a real browser (headless Chromium).

Skipped, with the reason, when no Chromium is installed (``apt-get install chromium``;
``.ci/run`` installs it). The page's script marks ``<html data-ready="1">`` when it has
run and ``data-js-error`` on any script error; ``--dump-dom`` prints the page as the
browser left it.
"""

import json
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

import jaxbp
from jaxbp import explainer, render

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless Chromium on PATH (apt-get install chromium); the page is "
    "still checked without a browser in tests/test_explain.py",
)


def _dump_dom(page: pathlib.Path, fragment: str = "", window: str = "") -> str:
    """The DOM after load, as headless Chromium serialises it."""
    proc = subprocess.run(
        [
            BROWSER,
            "--headless",
            *([f"--window-size={window}"] if window else []),
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",  # small /dev/shm in containers
            "--no-first-run",
            "--virtual-time-budget=2000",
            "--dump-dom",
            page.resolve().as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _html_tag(dom: str) -> str:
    """The ``<html ...>`` tag, where the page's script leaves its marks."""
    return re.search(r"<html[^>]*>", dom).group(0)


@pytest.fixture(scope="module")
def textbook_page(tmp_path_factory) -> pathlib.Path:
    trace, checks = explainer.explain_example("sigmoid-2-2-2")
    page = tmp_path_factory.mktemp("page") / "step.html"
    page.write_text(render.render_html(trace, title="2-2-2", checks=checks))
    return page


def test_page_loads_without_errors_and_shows_the_numbers(textbook_page):
    dom = _dump_dom(textbook_page)
    head = _html_tag(dom)
    assert 'data-ready="1"' in head, head
    assert "data-js-error" not in head, head
    for number in ("0.51998934", "0.02397190", "0.02592286", "0.43703857"):
        assert number in dom, number
    assert dom.count('class="edge"') == 8  # every weight drawn


def test_selecting_a_weight_highlights_its_paths(textbook_page):
    dom = _dump_dom(textbook_page, "#select=W1")
    assert 'data-ready="1"' in _html_tag(dom)
    # W1 feeds h1; from h1 the paths run through W5 (to o1) and W7 (to o2) to E.
    lit = {
        line.split('data-param="')[1].split('"')[0]
        for line in dom.replace("<g ", "\n<g ").splitlines()
        if line.startswith('<g class="edge') and " on" in line.split(">")[0]
        and 'data-param="' in line.split(">")[0]
    }  # fmt: skip
    assert lit == {"W1", "W5", "W7"}
    assert '<svg id="net"' in dom and 'class="focus"' in dom
    assert '<tr data-param="W1" class="hl">' in dom


def test_a_script_error_is_caught(tmp_path, textbook_page):
    """The check can fail: a page whose script throws is reported as broken."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        textbook_page.read_text().replace(
            'document.getElementById("net")', 'document.getElementById("nope")'
        )
    )
    dom = _dump_dom(broken)
    head = _html_tag(dom)
    assert "data-js-error" in head and 'data-ready="1"' not in head


# ------------------------------------------------------------------ layout at 1400 px
# Run on load in the page as the browser lays it out at a 1400 px wide window: every
# element that reaches past the viewport; every pair of diagram texts whose boxes
# overlap; every weight label that another line crosses or its own line misses.
_MEASURE = r"""
window.addEventListener("load", function () {
  var vw = document.documentElement.clientWidth, wide = [];
  document.querySelectorAll("body *").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > vw + 0.5 || r.left < -0.5)) {
      wide.push(el.tagName.toLowerCase() + " " + Math.round(r.width) + " px");
    }
  });
  var svg = document.getElementById("net"), ctm = svg.getScreenCTM();
  function client(line) {
    function at(x, y) {
      var p = svg.createSVGPoint();
      p.x = +line.getAttribute(x); p.y = +line.getAttribute(y);
      return p.matrixTransform(ctm);
    }
    return [at("x1", "y1"), at("x2", "y2")];
  }
  function crosses(seg, r) {  // Liang-Barsky: does the segment enter the box?
    var a = seg[0], b = seg[1], t0 = 0, t1 = 1;
    var sides = [[a.x - b.x, a.x - r.left], [b.x - a.x, r.right - a.x],
                 [a.y - b.y, a.y - r.top], [b.y - a.y, r.bottom - a.y]];
    for (var i = 0; i < 4; i++) {
      var p = sides[i][0], q = sides[i][1];
      if (p === 0) { if (q < 0) return false; }
      else if (p < 0) t0 = Math.max(t0, q / p); else t1 = Math.min(t1, q / p);
    }
    return t0 < t1;
  }
  var texts = [], overlaps = [], crossed = [], astray = [];
  svg.querySelectorAll("text").forEach(function (t) {
    var r = t.getBoundingClientRect();
    if (r.width > 0) texts.push([t.textContent, r]);
  });
  texts.forEach(function (a, i) {
    texts.slice(i + 1).forEach(function (b) {
      var p = a[1], q = b[1];
      if (p.left < q.right - 0.5 && q.left < p.right - 0.5 &&
          p.top < q.bottom - 0.5 && q.top < p.bottom - 0.5) {
        overlaps.push(a[0] + " / " + b[0]);
      }
    });
  });
  var lines = Array.prototype.map.call(
    svg.querySelectorAll(".edge line:not(.hit)"),
    function (l) { return [l.closest(".edge"), client(l)]; });
  svg.querySelectorAll(".edge[data-param]").forEach(function (edge) {
    var text = edge.querySelector("text"), r = text.getBoundingClientRect();
    if (r.width === 0) return;  // shown only while highlighted
    var inner = {left: r.left + 1, right: r.right - 1, top: r.top + 1,
                 bottom: r.bottom - 1};
    lines.forEach(function (l) {
      if (l[0] === edge) {
        if (!crosses(l[1], r)) astray.push(text.textContent);
      } else if (crosses(l[1], inner)) {
        crossed.push(text.textContent + " by " + (l[0].dataset.param || "a tail"));
      }
    });
  });
  document.documentElement.dataset.layout = JSON.stringify({
    viewport: vw, scrollWidth: document.documentElement.scrollWidth, wide: wide,
    overlaps: overlaps, crossed: crossed, astray: astray});
});
"""


def _trace(sizes, batch=1, seed=0):
    """A tanh network with drawn parameters, inputs and targets."""
    rng = np.random.default_rng(seed)
    net = jaxbp.MLP(sizes, "tanh", "identity", "half_sse")
    params = [
        {"w": rng.normal(size=(m, n)).round(3), "b": rng.normal(size=n).round(3)}
        for m, n in zip(sizes, sizes[1:], strict=False)
    ]
    x = rng.normal(size=(batch, sizes[0]))
    return jaxbp.explain(net, params, x, rng.normal(size=(batch, sizes[-1])))


def _page_trace(name):
    if name in explainer.example_names():
        return explainer.explain_example(name)[0]
    sizes, _, batch = name.partition(" batch ")
    return _trace(tuple(map(int, sizes.split("-"))), int(batch or 1))


_LAYOUTS = {}


def _layout(name, tmp_path_factory) -> dict:
    """What :data:`_MEASURE` finds on the page of ``name`` (cached per session)."""
    if name not in _LAYOUTS:
        page = tmp_path_factory.mktemp("layout") / "page.html"
        html = render.render_html(_page_trace(name))
        page.write_text(html.replace("</body>", f"<script>{_MEASURE}</script></body>"))
        dom = _dump_dom(page, window="1400,900")
        found = re.search(r'data-layout="([^"]*)"', dom)
        assert found, _html_tag(dom)
        _LAYOUTS[name] = json.loads(found.group(1).replace("&quot;", '"'))
    return _LAYOUTS[name]


#: Small networks, where each label has a place on its line that no line crosses.
ROOMY = (
    "sigmoid-2-2-2",
    "mazur-2-2-2",
    "linear-regression",
    "2-3-1",
    "4-2-4",
    "1-8-1",
    "3-3-3",
    "2-2-2-2-2",
)


def test_the_largest_network_does_not_scroll_sideways(tmp_path_factory):
    """8 units in each of 4 layers and 4 examples: the widest page jaxbp writes."""
    layout = _layout("8-8-8-8-8 batch 4", tmp_path_factory)
    assert layout["wide"] == [], layout["wide"][:10]
    assert layout["scrollWidth"] <= layout["viewport"]


@pytest.mark.parametrize("name", [*ROOMY, "3-3-3-3-3"])
def test_no_two_labels_of_the_diagram_overlap(name, tmp_path_factory):
    layout = _layout(name, tmp_path_factory)
    assert layout["overlaps"] == []
    assert layout["wide"] == []


@pytest.mark.parametrize("name", ROOMY)
def test_each_weight_label_sits_on_its_own_line_off_crossings(name, tmp_path_factory):
    layout = _layout(name, tmp_path_factory)
    assert layout["astray"] == []
    assert layout["crossed"] == []
