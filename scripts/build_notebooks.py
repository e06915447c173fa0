"""Build the course's notebooks from their sources in notebooks/src/, executed, outputs kept.

    python scripts/build_notebooks.py 00 03        # rebuild notebooks whose number is 00 or 03
    python scripts/build_notebooks.py --all
    python scripts/build_notebooks.py --badges-only   # only refresh Colab badges and setup cells
    python scripts/build_notebooks.py --slides-only   # only (re)write the slide metadata of the notebooks

A source is a Python file in the "percent" format: cells start with ``# %%`` (code) or
``# %% [markdown]`` (markdown, every line commented with ``# ``). Two placeholders are filled from
course_lib/core/links.py, so the repository is named in one place: ``{{COLAB_BADGE}}`` and
``{{REPO_URL}}``. Cells whose first line is ``# NBVAL_CHECK_OUTPUT`` are compared by nbval in CI;
``# TAGS: a, b`` on a cell's first line sets cell tags (e.g. nbval-ignore-output).

Every cell gets slide metadata (``slideshow.slide_type``, used by `python3 course.py slides NN`) from one
rule, so authors never write it: see ``slide_type``. ``--slides-only`` rewrites only that metadata in the
existing notebooks, without executing them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from course_lib.core.cli import HelpFormatter
from course_lib.core.links import REPO_URL, colab_badge

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"
CELL_RE = re.compile(r"^# %%( \[markdown\])?[^\n]*$", re.M)


def parse_source(text: str) -> list[tuple[str, str]]:
    """(cell_type, source) pairs of a percent-format file."""
    marks = list(CELL_RE.finditer(text))
    cells = []
    for i, m in enumerate(marks):
        body = text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip("\n")
        if m.group(1):
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines()]
            cells.append(("markdown", "\n".join(lines).strip("\n")))
        elif body.strip():
            cells.append(("code", body))
    return cells


def fill(text: str, name: str) -> str:
    return text.replace("{{COLAB_BADGE}}", colab_badge(name)).replace("{{REPO_URL}}", REPO_URL)


COLAB_SETUP_MARK = '"google.colab" in sys.modules'  # the setup cell that only does something on Colab
HEADING_RE = re.compile(r"\s*(#{1,6})\s")


def slide_type(cells: list, i: int) -> str:
    """The reveal.js slide type of ``cells[i]``, by the course's rule (one idea a slide, code with its output):

    - the first cell (title and goals) and a markdown cell that opens with a ``#`` or ``##`` heading: "slide"
      (a new section: a new column of slides, left to right);
    - a markdown cell that opens with a ``###`` (or deeper) heading, a markdown cell that follows a code cell,
      and a code cell that follows a code cell: "subslide" (the next slide down the column);
    - the Colab setup cell: "skip" (it does nothing outside Colab);
    - anything else (a code cell after the markdown that introduces it, markdown after markdown): "-", on the
      slide of the cell before.

    A code cell's output is part of the cell, so it is always on the slide of its code. "The cell before"
    ignores skipped cells.
    """
    cell = cells[i]
    if i == 0:
        return "slide"
    if skipped_on_slides(cell):
        return "skip"
    previous = next((c for c in reversed(cells[:i]) if not skipped_on_slides(c)), None)
    after_code = previous is not None and previous.cell_type == "code"
    if cell.cell_type == "markdown":
        heading = HEADING_RE.match(cell.source)
        if heading and len(heading.group(1)) <= 2:
            return "slide"
        return "subslide" if heading or after_code else "-"
    return "subslide" if after_code else "-"


def skipped_on_slides(cell) -> bool:
    """Whether a cell never shows on a slide: the Colab setup cell."""
    return cell.cell_type == "code" and COLAB_SETUP_MARK in cell.source


def apply_slide_metadata(nb: nbformat.NotebookNode) -> bool:
    """Write every cell's ``metadata.slideshow.slide_type`` by ``slide_type``; whether anything changed."""
    changed = False
    for i, cell in enumerate(nb.cells):
        wanted = slide_type(nb.cells, i)
        if cell.metadata.get("slideshow") != {"slide_type": wanted}:
            cell.metadata["slideshow"] = {"slide_type": wanted}
            changed = True
    return changed


def refresh_slides(numbers: list[str] | None = None) -> None:
    """Rewrite only the slide metadata of the committed notebooks (all, or those numbered ``numbers``)."""
    for path in sorted(OUT.glob("[0-9][0-9]_*.ipynb")):
        if numbers and path.name[:2] not in numbers:
            continue
        nb = nbformat.read(path, as_version=4)
        if apply_slide_metadata(nb):
            nbformat.write(nb, path)
        types = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
        print(f"{path.name}: {types.count('slide')} slides, {types.count('subslide')} subslides"
              f" ({types.count('slide') + types.count('subslide')} in all)")


def make_notebook(src: Path) -> nbformat.NotebookNode:
    name = src.with_suffix(".ipynb").name
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    for kind, body in parse_source(src.read_text()):
        body = fill(body, name)
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
            first = body.splitlines()[0]
            if first.startswith("# TAGS:"):
                cell.metadata["tags"] = [t.strip() for t in first[len("# TAGS:"):].split(",") if t.strip()]
        nb.cells.append(cell)
    # Stable cell ids keep diffs of rebuilt notebooks small.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    apply_slide_metadata(nb)
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 1800) -> None:
    env_before = dict(os.environ)
    # The same settings as `course.py test`, so that checked outputs are reproduced exactly in CI.
    os.environ.update({"COURSE_NO_PROGRESS": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
                       "MKL_NUM_THREADS": "1"})
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend must draw the figures
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}
                       ).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)


def refresh_badges() -> None:
    """Rewrite the Colab badge and repository URL in every committed notebook in place."""
    badge_re = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
    url_re = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+(?=[\"'])")
    for path in sorted(OUT.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            cell.source = badge_re.sub(colab_badge(path.name).replace("\\", "\\\\"), cell.source)
            if cell.cell_type == "code":
                cell.source = url_re.sub(REPO_URL, cell.source)
        nbformat.write(nb, path)
        print(f"refreshed {path.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("numbers", nargs="*", help="two-digit notebook numbers, e.g. 00 03")
    parser.add_argument("--all", action="store_true", help="rebuild every notebook")
    parser.add_argument("--no-execute", action="store_true", help="write the cells without running them (no outputs)")
    parser.add_argument("--badges-only", action="store_true", help="only refresh the Colab badges and setup cells")
    parser.add_argument("--slides-only", action="store_true",
                        help="only rewrite the notebooks' slide metadata (all, or the numbers given); no execution")
    args = parser.parse_args()
    if args.badges_only:
        refresh_badges()
        return
    if args.slides_only:
        refresh_slides(args.numbers)
        return
    sources = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if not args.all:
        sources = [s for s in sources if s.name[:2] in args.numbers]
    if not sources:
        sys.exit(f"no notebook sources matched; available: {[s.name for s in sorted(SRC.glob('*.py'))]}")
    for src in sources:
        nb = make_notebook(src)
        start = time.time()
        if not args.no_execute:
            execute(nb)
        out = OUT / src.with_suffix(".ipynb").name
        nbformat.write(nb, out)
        print(f"{out.relative_to(ROOT)}: {len(nb.cells)} cells, executed in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
