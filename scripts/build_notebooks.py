"""Build the course's notebooks from their sources in notebooks/src/, executed, outputs kept.

    python scripts/build_notebooks.py 00 03        # rebuild notebooks whose number is 00 or 03
    python scripts/build_notebooks.py --all
    python scripts/build_notebooks.py --all --no-execute --out-dir /tmp/nb   # only the cells, somewhere else
    python scripts/build_notebooks.py --badges-only   # only refresh Colab badges and setup cells
    python scripts/build_notebooks.py --slides-only   # only (re)write the slide metadata of the notebooks

A source is a Python file in jupytext's "percent" format, read by jupytext: cells start with ``# %%``
(code) or ``# %% [markdown]`` (markdown, every line commented with ``# ``). Cells whose first line is
``# NBVAL_CHECK_OUTPUT`` are compared by nbval in CI; ``# TAGS: a, b`` on a cell's first line sets cell
tags (e.g. nbval-ignore-output). ``{{REPO_URL}}`` in a cell is replaced by the repository's address.

What every notebook has in common is not written in the sources; the build adds it, from one place:

- the "Open in Colab" badge, as its own paragraph after the title line of the first cell (the source's
  first cell is a markdown cell that starts with ``# NN · Title``);
- the Colab setup cell (``COLAB_SETUP`` below) right after that first cell. A notebook that needs extras
  of the course's package on Colab (``reference``: diffusers and transformers) says so in a jupytext
  header at the very top of its source::

      # ---
      # jupyter:
      #   colab_extras: reference
      # ---

The repository, the branch and so the badge's address come from course_lib/core/links.py (``python3
course.py badges`` rewrites the badge and the setup cell of the committed notebooks after a change there).

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

import jupytext
import nbformat
from nbclient import NotebookClient

from course_lib.core.cli import HelpFormatter
from course_lib.core.links import REPO_URL, colab_badge

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"

COLAB_SETUP_MARK = '"google.colab" in sys.modules'  # the setup cell that only does something on Colab
COLAB_SETUP = """\
# Setup: on Google Colab, fetch the course and install what Colab lacks; elsewhere this does nothing.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    if not os.path.isdir("/content/course"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "{{REPO_URL}}", "/content/course"], check=True)
{{INSTALL}}
    sys.path.insert(0, "/content/course")
    os.chdir("/content/course/notebooks")"""
COLAB_INSTALL = ('    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/course{extras}"],'
                 ' check=True)')
# The extras a source may ask for (`colab_extras` in its header), each with the comment the setup cell shows.
COLAB_EXTRAS = {"reference": "adds diffusers and transformers, which this notebook compares against"}
BADGE_PLACEHOLDER = "{{COLAB_BADGE}}"  # what sources used to carry; the build now adds the badge itself
HEADING_RE = re.compile(r"\s*(#{1,6})\s")


def read_source(text: str) -> tuple[dict, list[tuple[str, str]]]:
    """A percent-format source, read by jupytext: its header's notebook metadata and its (cell_type,
    source) pairs. Empty code cells (blank lines between cells) are dropped; jupytext's own layout
    metadata (such as ``lines_to_next_cell``) is not kept."""
    nb = jupytext.reads(text, fmt="py:percent")
    cells = [(c.cell_type, c.source) for c in nb.cells if c.cell_type == "markdown" or c.source.strip()]
    meta = {k: v for k, v in nb.metadata.items() if k != "jupytext"}
    return meta, cells


def parse_source(text: str) -> list[tuple[str, str]]:
    """(cell_type, source) pairs of a percent-format file, as written (without the badge and the setup
    cell that ``make_notebook`` adds)."""
    return read_source(text)[1]


def fill(text: str) -> str:
    return text.replace("{{REPO_URL}}", REPO_URL)


def colab_setup(extras: str | list[str] | None = None) -> str:
    """The Colab setup cell's source; ``extras`` of the course's package to install there (see COLAB_EXTRAS)."""
    names = [extras] if isinstance(extras, str) else list(extras or [])
    unknown = [n for n in names if n not in COLAB_EXTRAS]
    if unknown:
        raise ValueError(f"unknown colab_extras {unknown}; known: {sorted(COLAB_EXTRAS)}")
    lines = [f"    # [{n}] {COLAB_EXTRAS[n]}" for n in names]
    lines.append(COLAB_INSTALL.format(extras=f"[{','.join(names)}]" if names else ""))
    return fill(COLAB_SETUP.replace("{{INSTALL}}", "\n".join(lines)))


def with_badge(title_cell: str, name: str) -> str:
    """The first cell with the Colab badge of notebook ``name`` as a paragraph after its title line."""
    title, _, rest = title_cell.partition("\n")
    rest = rest.lstrip("\n")
    return f"{title}\n\n{colab_badge(name)}" + (f"\n\n{rest}" if rest else "")


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


def check_source(src: Path, cells: list[tuple[str, str]]) -> None:
    """Refuse a source that lacks a title cell or still carries what the build adds."""
    if not cells or cells[0][0] != "markdown" or not re.match(r"# \S", cells[0][1]):
        raise ValueError(f"{src.name}: the first cell must be a markdown cell that starts with '# NN · Title'")
    for kind, body in cells:
        if BADGE_PLACEHOLDER in body:
            raise ValueError(f"{src.name}: remove {BADGE_PLACEHOLDER} from the source; the build adds the badge")
        if kind == "code" and COLAB_SETUP_MARK in body:
            raise ValueError(f"{src.name}: remove the Colab setup cell from the source; the build adds it "
                             "(COLAB_SETUP in scripts/build_notebooks.py; extras: `colab_extras` in the header)")


def make_notebook(src: Path) -> nbformat.NotebookNode:
    """The notebook of source ``src``, not executed: the badge and the Colab setup cell added, cell tags
    from ``# TAGS:`` lines, stable cell ids, slide metadata."""
    name = src.with_suffix(".ipynb").name
    meta, cells = read_source(src.read_text())
    check_source(src, cells)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.cells.append(nbformat.v4.new_markdown_cell(with_badge(fill(cells[0][1]), name)))
    nb.cells.append(nbformat.v4.new_code_cell(colab_setup(meta.get("colab_extras"))))
    for kind, body in cells[1:]:
        body = fill(body)
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
    """Rewrite the Colab badge and the Colab setup cell (repository URL, install line) in every committed
    notebook in place, from course_lib/core/links.py and the template here; nothing is executed."""
    badge_re = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
    url_re = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+(?=[\"'])")
    for path in sorted(OUT.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        src = SRC / path.with_suffix(".py").name
        setup = next((c.source for c in make_notebook(src).cells if skipped_on_slides(c)), None) \
            if src.exists() else None
        for cell in nb.cells:
            cell.source = badge_re.sub(colab_badge(path.name).replace("\\", "\\\\"), cell.source)
            if cell.cell_type == "code":
                cell.source = setup if setup is not None and skipped_on_slides(cell) else url_re.sub(REPO_URL,
                                                                                                       cell.source)
        nbformat.write(nb, path)
        print(f"refreshed {path.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("numbers", nargs="*", help="two-digit notebook numbers, e.g. 00 03")
    parser.add_argument("--all", action="store_true", help="rebuild every notebook")
    parser.add_argument("--no-execute", action="store_true", help="write the cells without running them (no outputs)")
    parser.add_argument("--out-dir", type=Path, default=OUT,
                        help="where to write the notebooks (executed ones run with notebooks/ as their folder)")
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
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for src in sources:
        nb = make_notebook(src)
        start = time.time()
        if not args.no_execute:
            execute(nb)
        out = args.out_dir / src.with_suffix(".ipynb").name
        nbformat.write(nb, out)
        done = "not executed" if args.no_execute else f"executed in {time.time() - start:.0f} s"
        print(f"{out}: {len(nb.cells)} cells, {done}")


if __name__ == "__main__":
    main()
