"""The ``jaxbp explain`` web page in a real browser (headless Chromium).

Skipped, with the reason, when no Chromium is installed (``apt-get install chromium``;
``.ci/run`` installs it). The page's script marks ``<html data-ready="1">`` when it has
run and ``data-js-error`` on any script error; ``--dump-dom`` prints the page as the
browser left it.
"""

import pathlib
import re
import shutil
import subprocess

import pytest

from jaxbp import explainer, render

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless Chromium on PATH (apt-get install chromium); the page is "
    "still checked without a browser in tests/test_explain.py",
)


def _dump_dom(page: pathlib.Path, fragment: str = "") -> str:
    """The DOM after load, as headless Chromium serialises it."""
    proc = subprocess.run(
        [
            BROWSER,
            "--headless",
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
