"""Build the course's notebooks from their sources in notebooks/src/, executed, outputs kept.

    python scripts/build_notebooks.py 00 03        # rebuild notebooks whose number is 00 or 03
    python scripts/build_notebooks.py --all
    python scripts/build_notebooks.py --badges-only   # only refresh Colab badges and setup cells

A source is a Python file in the "percent" format: cells start with ``# %%`` (code) or
``# %% [markdown]`` (markdown, every line commented with ``# ``). Two placeholders are filled from
course_lib/links.py, so the repository is named in one place: ``{{COLAB_BADGE}}`` and
``{{REPO_URL}}``. Cells whose first line is ``# NBVAL_CHECK_OUTPUT`` are compared by nbval in CI;
``# TAGS: a, b`` on a cell's first line sets cell tags (e.g. nbval-ignore-output).
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

from course_lib.cli import HelpFormatter
from course_lib.links import REPO_URL, colab_badge

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
    args = parser.parse_args()
    if args.badges_only:
        refresh_badges()
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
