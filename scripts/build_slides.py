"""Build a notebook's slides (reveal.js) that work from disk, without a server and without network.

    python scripts/build_slides.py 05            # slides/05_forward_diffusion.slides.html
    python scripts/build_slides.py --all
    python scripts/build_slides.py 05 --serve    # and open it in a browser (a local server on 127.0.0.1)

(`python3 course.py slides 05` runs this in the course's environment.) The slides are the notebook's
cells with their saved outputs: the notebook is not executed. Where a slide starts is in each
cell's metadata (``slideshow.slide_type``), written by scripts/build_notebooks.py from the course's rule
(a ``#``/``##`` heading starts a slide, ``###`` a vertical subslide, ...; see ``slide_type`` there); a
slide taller than the screen scrolls.

Everything the deck loads is in slides/vendor/ (reveal.js, require.js, MathJax 3; where each comes from:
slides/vendor/README.md), referenced by a relative path, so the HTML file can be opened from disk or
copied together with the vendor folder. The template (slides/templates/course_reveal/) is nbconvert's
reveal template without its other CDN loads (jQuery, mermaid, the ipywidgets manager). For the deck the
Colab badge is left out, and the icon font of matplotlib's animation controls is replaced by text glyphs.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import sys
import threading
import webbrowser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SLIDES = ROOT / "slides"
VENDOR = SLIDES / "vendor"
TEMPLATES = SLIDES / "templates"
TEMPLATE = "course_reveal"
REVEAL = "reveal.js"                            # reveal.js 4.0.2, the version nbconvert's template names
REQUIRE_JS = "require.js/require.js"            # require.js 2.1.10, ditto
MATHJAX = "mathjax/tex-svg-full.js"             # MathJax 3.2.2, one file, SVG output (no fonts)

COLAB_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\s*")
# matplotlib's Animation.to_jshtml() loads Font Awesome from a CDN for its buttons' icons.
FONT_AWESOME_RE = re.compile(r"<link[^>]*href=\"https?://[^\"]*font-awesome[^\"]*\"[^>]*>")
ANIMATION_ICONS = {"minus": "\u2212", "plus": "+", "fast-backward": "|\u25c0\u25c0", "step-backward": "|\u25c0",
                   "play": "\u25b6", "pause": "\u275a\u275a", "step-forward": "\u25b6|",
                   "fast-forward": "\u25b6\u25b6|"}
ANIMATION_ICONS_CSS = "<style>.fa{font-style:normal}" + "".join(
    f'.fa-{name}:before{{content:"{glyph}"}}' for name, glyph in ANIMATION_ICONS.items()) + \
    ".fa-flip-horizontal{display:inline-block;transform:scaleX(-1)}</style>"


def offline_cells(nb, resources):
    """nbconvert preprocessor (on nbconvert's copy of the notebook): what would load from the network."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = COLAB_BADGE_RE.sub("", cell.source)
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html")
            if html is not None:
                html = html if isinstance(html, str) else "".join(html)
                output["data"]["text/html"] = FONT_AWESOME_RE.sub(ANIMATION_ICONS_CSS, html)
    return nb, resources


def exporter(out_dir: Path):
    """nbconvert's SlidesExporter with the course's template and the vendored files, by relative path."""
    from nbconvert import SlidesExporter
    from traitlets.config import Config

    vendor = Path(os.path.relpath(VENDOR, out_dir)).as_posix()
    c = Config()
    c.TemplateExporter.extra_template_basedirs = [str(TEMPLATES)]
    c.SlidesExporter.template_name = TEMPLATE
    c.SlidesExporter.reveal_url_prefix = f"{vendor}/{REVEAL}"
    c.SlidesExporter.reveal_theme = "white"
    c.SlidesExporter.reveal_scroll = True
    c.SlidesExporter.reveal_number = "c/t"
    c.SlidesExporter.reveal_width = "1120"      # 16:10, wide enough for the course's code lines
    c.SlidesExporter.reveal_height = "700"
    c.SlidesExporter.require_js_url = f"{vendor}/{REQUIRE_JS}"
    c.SlidesExporter.mathjax_url = f"{vendor}/{MATHJAX}"
    exp = SlidesExporter(config=c)
    exp.register_preprocessor(offline_cells, enabled=True)
    return exp


def build(notebook: Path, out_dir: Path = SLIDES) -> Path:
    """Write ``out_dir/<notebook name>.slides.html`` and return its path."""
    import nbformat

    needed = (VENDOR / REVEAL / "dist" / "reveal.js", VENDOR / REQUIRE_JS, VENDOR / MATHJAX)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"the vendored files are missing: {missing} (see slides/vendor/README.md)")
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)
    body, _ = exporter(out_dir).from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    out = out_dir / f"{notebook.stem}.slides.html"
    out.write_text(body, encoding="utf-8")
    return out


def serve(deck: Path, port: int = 0) -> None:
    """Serve slides/ (the decks and vendor/) on 127.0.0.1 and open ``deck`` in the browser; Ctrl-C stops.
    (A convenience: the file works from disk as well, e.g. on a machine that blocks local servers.)"""
    deck = deck.resolve()
    if not deck.is_relative_to(SLIDES.resolve()):
        sys.exit(f"--serve serves slides/ only; open {deck.as_uri()} in a browser instead")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SLIDES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/{deck.relative_to(SLIDES.resolve()).as_posix()}"
    print(f"serving {url}  (Ctrl-C stops)", flush=True)
    threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    from course_lib.core.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("numbers", nargs="*", help="two-digit notebook numbers, e.g. 05 06")
    parser.add_argument("--all", action="store_true", help="build the slides of every notebook")
    parser.add_argument("--out-dir", type=Path, default=SLIDES, help="where the decks are written")
    parser.add_argument("--serve", action="store_true",
                        help="then serve slides/ on 127.0.0.1 and open the (first) deck in a browser")
    args = parser.parse_args(argv)
    available = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    notebooks = available if args.all else [p for p in available if p.name[:2] in args.numbers]
    if not notebooks:
        parser.error(f"no notebook matched {args.numbers}; available: {[p.name[:2] for p in available]}")
    decks = []
    for notebook in notebooks:
        deck = build(notebook, args.out_dir.resolve())
        decks.append(deck)
        shown = deck.relative_to(ROOT) if deck.is_relative_to(ROOT) else deck
        print(f"{shown}  (open it in a browser: {deck.as_uri()})", flush=True)
    if args.serve:
        serve(decks[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
