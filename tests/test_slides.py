"""`python3 course.py slides NN`: the slide rule, the deck's files, and the deck in a real browser without network.

The browser test builds notebook 05's deck (it has display and inline math) into a temporary folder, opens it
from disk (file://) in headless Chromium with every request that is not a file aborted and recorded, and
checks: no request left the machine, no script error, reveal.js started with more than one slide, the keyboard
moves to the next slide, and MathJax typeset every formula (no ``$$...$$`` or ``$...$`` left in any slide's text).

Needs Chromium at /usr/bin/chromium and the ``playwright`` package, like tests/test_browser.py (same
COURSE_REQUIRE_BROWSER=1 to fail instead of skip where they are missing, same COURSE_CHROMIUM).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from notebook_files import notebooks_under_test
from test_browser import CHROMIUM_ARGS, require_chromium

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_slides  # noqa: E402
from build_notebooks import apply_slide_metadata, make_notebook, slide_type  # noqa: E402

MATH_NOTEBOOK = "05"       # forward diffusion: display and inline formulas
BUDGET_S = 30              # the browser test, deck build included


def _cells(*specs: str) -> list:
    """Cells from short specs: 'md:# Title', 'code:x = 1'."""
    cells = []
    for spec in specs:
        kind, body = spec.split(":", 1)
        cells.append(nbformat.v4.new_markdown_cell(body) if kind == "md" else nbformat.v4.new_code_cell(body))
    return cells


def test_the_slide_rule():
    cells = _cells(
        "md:# 13 · Title\n\ngoals",
        'code:# Setup\nimport sys\nif "google.colab" in sys.modules:\n    pass',
        "code:import torch",                      # after the skipped setup: still on the title slide
        "md:## 1. A section",
        "md:more prose",                          # markdown after markdown: the same slide
        "code:x = 1",                             # code after its introduction: the same slide
        "code:print(x)",                          # code after code: the next slide down
        "md:What the output shows",               # markdown after code: the next slide down
        "md:### 1.1 A subsection",
        "md:  ## Summary",
    )
    assert [slide_type(cells, i) for i in range(len(cells))] == [
        "slide", "skip", "-", "slide", "-", "-", "subslide", "subslide", "subslide", "slide"]


def test_a_new_notebook_gets_slide_metadata_from_the_build(tmp_path):
    """A notebook added later (e.g. notebooks/src/13_*.py) needs no hand-written slide metadata."""
    src = tmp_path / "13_new_topic.py"
    src.write_text("# %% [markdown]\n# # 13 · New\n\n# %%\nx = 1\n\n# %%\nprint(x)\n\n"
                   "# %% [markdown]\n# ## 1. Next\n")
    nb = make_notebook(src)  # the build adds the Colab setup cell after the title: skipped on slides
    assert [c.metadata["slideshow"]["slide_type"] for c in nb.cells] == ["slide", "skip", "-", "subslide", "slide"]
    assert not apply_slide_metadata(nb), "applying the rule twice changes nothing"


def _math_notebook() -> Path:
    found = [p for p in notebooks_under_test() if p.name.startswith(f"{MATH_NOTEBOOK}_")]
    assert found, f"notebook {MATH_NOTEBOOK} is missing"
    return found[0]


def test_the_deck_loads_only_vendored_files(tmp_path):
    deck = build_slides.build(_math_notebook(), tmp_path)
    html = deck.read_text(encoding="utf-8")
    loads = re.findall(r"<(?:script|img|iframe)\b[^>]*\bsrc=\"([^\"]+)\"", html)
    loads += re.findall(r"<link\b[^>]*\bhref=\"([^\"]+)\"", html)
    loads += re.findall(r"(?:import\s[^;]*?from\s*|@import\s+url\()['\"]?([^'\")\s]+)", html)
    remote = [u for u in loads if re.match(r"(https?:)?//", u)]
    assert not remote, f"the deck loads from the network: {remote}"
    local = [u for u in loads if not u.startswith("data:")]
    assert local, "the deck loads nothing from slides/vendor/?"
    for url in local:
        assert (deck.parent / url).resolve().is_file(), f"{url} (from {deck.name}) does not exist"
    for required in ("reveal.js/dist/reveal.js", "reveal.js/plugin/notes/notes.js"):   # loaded by require.js
        assert (build_slides.VENDOR / required).is_file()


def test_course_py_slides_writes_the_deck(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_slides.py"), MATH_NOTEBOOK,
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    decks = list(tmp_path.glob(f"{MATH_NOTEBOOK}_*.slides.html"))
    assert len(decks) == 1 and decks[0].name in done.stdout


@pytest.fixture
def chromium():
    return require_chromium()


def test_the_deck_renders_offline_in_a_browser(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    start = time.monotonic()
    deck = build_slides.build(_math_notebook(), tmp_path)
    network, failed, errors = [], [], []

    def only_files(route):
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            network.append(route.request.url)
            route.abort()

    def wait(page, condition: str, what: str, timeout_s: float = 15) -> None:
        try:
            page.wait_for_function(condition, timeout=1000 * timeout_s)
        except Exception as e:  # playwright's TimeoutError: say what the page asked for and what failed
            raise AssertionError(f"{what} did not happen within {timeout_s} s; requests to the network: {network}; "
                                 f"failed loads: {failed}; script errors: {errors}") from e

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS,
                                     timeout=20_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route("**/*", only_files)
            page.on("requestfailed", lambda r: failed.append(f"{r.url[:120]}: {r.failure}"))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(deck.as_uri(), wait_until="load", timeout=15_000)
            wait(page, "window.Reveal && Reveal.isReady && Reveal.isReady()", "reveal.js starting")
            wait(page, "window.MathJax && MathJax.startup && MathJax.startup.promise", "MathJax loading", 5)
            page.evaluate("MathJax.startup.promise.then(() => true)")

            total = page.evaluate("Reveal.getTotalSlides()")
            assert total > 1, f"the deck has {total} slide(s)"
            page.keyboard.press("ArrowRight")
            wait(page, "Reveal.getIndices().h === 1", "moving to the next slide with the right arrow key", 5)
            assert page.evaluate("Reveal.getCurrentSlide().innerText.trim().length") > 0, "the second slide is empty"

            # Every slide, one after the other: what a learner sees has its math typeset.
            slides = page.evaluate("""() => {
                const out = [];
                Reveal.getSlides().forEach(s => {
                    const idx = Reveal.getIndices(s);
                    Reveal.slide(idx.h, idx.v);
                    const cur = Reveal.getCurrentSlide();
                    const md = Array.from(cur.querySelectorAll('.jp-MarkdownOutput')).map(e => e.innerText).join('\\n');
                    const mjx = cur.querySelectorAll('mjx-container');
                    const shown = Array.from(mjx).filter(m => m.getBoundingClientRect().width > 0).length;
                    out.push({h: idx.h, v: idx.v, md: md, math: mjx.length, shown: shown,
                              errors: cur.querySelectorAll('mjx-merror, [data-mjx-error]').length});
                });
                return out;
            }""")
        finally:
            browser.close()

    assert not network, f"the deck asked for the network: {network}"
    assert not failed, f"files the deck could not load: {failed}"
    assert not errors, f"script errors: {errors}"
    assert len(slides) == total
    tex = re.compile(r"\$\$|\$[^$\s][^$\n]*\$")       # $$...$$ or $...$ still in a slide's text
    raw = [(s["h"], s["v"], m.group()[:80]) for s in slides for m in [tex.search(s["md"])] if m]
    assert not raw, f"TeX left untypeset on slides (slide h, v, text): {raw}"
    assert sum(s["math"] for s in slides) >= 10, "MathJax typeset (almost) no formulas"
    assert all(s["shown"] == s["math"] for s in slides), "a formula on a slide is not visible"
    assert not any(s["errors"] for s in slides), "MathJax reported a TeX error"
    assert time.monotonic() - start < BUDGET_S, f"the test took {time.monotonic() - start:.0f} s"
