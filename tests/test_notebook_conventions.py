"""Every notebook follows the course's conventions (COURSE_DESIGN.md, "Notebook conventions")."""

import ast
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
from notebook_files import notebooks_under_test

from course_lib.core.links import colab_url

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebooks_under_test()  # as committed under `python3 course.py test` (tests/notebook_files.py)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def _text(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def nb(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_first_cell_has_title_badge_and_goals(nb):
    path, notebook = nb
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    text = _text(first)
    assert re.match(r"# \S", text), "the first cell starts with a '# Title'"
    assert f"]({colab_url(path.name)})" in text and "colab-badge.svg" in text, "Open in Colab badge for this file"
    assert re.search(r"you will be able to", text, re.I), "says what the learner will be able to do"
    assert re.search(r"^\s*[-*1-9]", text, re.M), "...as a list"


def test_colab_setup_cell_does_nothing_elsewhere(nb, monkeypatch):
    _, notebook = nb
    code = [_text(c) for c in notebook.cells if c.cell_type == "code"]
    setup = next((c for c in code[:3] if '"google.colab" in sys.modules' in c), None)
    assert setup is not None, "one of the first code cells is the Colab-only setup cell"
    tree = ast.parse(setup)
    for node in tree.body:  # everything that installs is inside `if IN_COLAB` / `if "google.colab" ...`
        assert isinstance(node, ast.Import | ast.ImportFrom | ast.If | ast.Assign | ast.Expr), ast.dump(node)[:80]

    def refuse(*args, **kwargs):
        raise AssertionError("the setup cell ran a command outside Colab")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "check_call", refuse)
    exec(compile(tree, "setup-cell", "exec"), {})


def test_summary_and_checkable_exercises(nb):
    _, notebook = nb
    headings = [_text(c) for c in notebook.cells if c.cell_type == "markdown"]
    assert any(re.search(r"^#+ .*summary", h, re.I | re.M) for h in headings), "a Summary section"
    idx = next((i for i, c in enumerate(notebook.cells)
                if c.cell_type == "markdown" and re.search(r"^#+ .*exercises", _text(c), re.I | re.M)), None)
    assert idx is not None, "an Exercises section"
    after = [_text(c) for c in notebook.cells[idx:] if c.cell_type == "code"]
    assert sum("check(" in c or "assert " in c for c in after) >= 2, "at least two exercises with a check cell"


def test_committed_with_outputs_and_no_errors(nb):
    path, notebook = nb
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code" and _text(cell).strip():
            assert cell.execution_count is not None, f"{path.name}: a code cell is committed unexecuted"
            assert not [o for o in cell.outputs if o.output_type == "error"], f"{path.name}: error output"


def test_notebook_matches_its_source(nb):
    """A notebook built from notebooks/src/ is not edited by hand afterwards (it would drift)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from build_notebooks import SRC, make_notebook

    path, notebook = nb
    src = SRC / path.with_suffix(".py").name
    if not src.exists():
        pytest.skip(f"{path.name} has no source in notebooks/src/")
    built = make_notebook(src)
    assert [(c.cell_type, _text(c)) for c in built.cells] == [(c.cell_type, _text(c)) for c in notebook.cells], \
        f"{path.name} differs from {src.name}: run `python3 course.py build {path.name[:2]}`"


def test_slide_metadata_follows_the_rule(nb):
    """Every cell carries the slide type that scripts/build_notebooks.py's rule gives it (`course.py slides`)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from build_notebooks import slide_type

    path, notebook = nb
    found = [c.metadata.get("slideshow", {}).get("slide_type") for c in notebook.cells]
    wanted = [slide_type(notebook.cells, i) for i in range(len(notebook.cells))]
    wrong = [f"cell {i} ({c.cell_type}, {_text(c)[:40]!r}): {f!r}, the rule says {w!r}"
             for i, (c, f, w) in enumerate(zip(notebook.cells, found, wanted, strict=True)) if f != w]
    assert not wrong, (f"{path.name}: slide metadata differs from the rule; run `python scripts/build_notebooks.py "
                       f"--slides-only {path.name[:2]}`:\n" + "\n".join(wrong[:10]))
    assert found.count("slide") + found.count("subslide") > 1, f"{path.name}: a deck of one slide"
