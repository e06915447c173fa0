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
    built = make_notebook(src)  # what the build makes of the source now: badge and Colab setup cell added
    want = [(c.cell_type, _text(c), c.metadata.get("tags", [])) for c in built.cells]
    found = [(c.cell_type, _text(c), c.metadata.get("tags", [])) for c in notebook.cells]
    if want != found:
        i = next((i for i, (w, f) in enumerate(zip(want, found, strict=False)) if w != f), min(len(want), len(found)))
        where = (f"cell {i}: built {want[i] if i < len(want) else 'nothing'!r:.300}\n"
                 f"  committed {found[i] if i < len(found) else 'nothing'!r:.300}")
        pytest.fail(f"{path.name} differs from {src.name} ({len(want)} cells built, {len(found)} committed; "
                    f"first difference at {where}); run `python3 course.py build {path.name[:2]}`")


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


def _builder():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import build_notebooks

    return build_notebooks


def test_the_build_adds_the_badge_and_the_colab_setup_cell(tmp_path):
    """Sources carry neither: the build puts the badge after the title line and the setup cell after the title cell."""
    from course_lib.core.links import REPO_URL, colab_badge

    build = _builder()
    src = tmp_path / "14_new_topic.py"
    src.write_text("# %% [markdown]\n# # 14 · New\n#\n# You will be able to:\n# - build\n\n# %%\nx = 1\n\n"
                   "# %%\n# TAGS: nbval-ignore-output\nprint(x)\n")
    nb = build.make_notebook(src)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "code"]
    assert nb.cells[0].source == f"# 14 · New\n\n{colab_badge('14_new_topic.ipynb')}\n\nYou will be able to:\n- build"
    setup = nb.cells[1].source
    assert setup == build.colab_setup() and build.COLAB_SETUP_MARK in setup and "{{" not in setup
    assert f'"{REPO_URL}"' in setup and '"-e", "/content/course"]' in setup
    assert nb.cells[3].metadata["tags"] == ["nbval-ignore-output"]
    assert [c.metadata["slideshow"]["slide_type"] for c in nb.cells] == ["slide", "skip", "-", "subslide"]
    assert [c.id for c in nb.cells] == ["cell-000", "cell-001", "cell-002", "cell-003"]


def test_colab_extras_come_from_the_sources_header(tmp_path):
    build = _builder()
    src = tmp_path / "14_new_topic.py"
    src.write_text("# ---\n# jupyter:\n#   colab_extras: reference\n# ---\n\n# %% [markdown]\n# # 14 · New\n\n"
                   "# %%\nx = 1\n")
    nb = build.make_notebook(src)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert '"/content/course[reference]"]' in nb.cells[1].source
    assert "# [reference] adds diffusers and transformers" in nb.cells[1].source
    assert nb.metadata == {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                           "language_info": {"name": "python"}, "colab": {"provenance": []}}
    src.write_text(src.read_text().replace("reference", "everything"))
    with pytest.raises(ValueError, match="unknown colab_extras"):
        build.make_notebook(src)


@pytest.mark.parametrize("text, complaint", [
    ("# %% [markdown]\n# # 14 · New\n#\n# {{COLAB_BADGE}}\n", "the build adds the badge"),
    ('# %% [markdown]\n# # 14 · New\n\n# %%\nimport sys\nif "google.colab" in sys.modules:\n    pass\n',
     "the build adds it"),
    ("# %%\nx = 1\n", "first cell must be a markdown cell"),
])
def test_a_source_that_carries_what_the_build_adds_is_refused(tmp_path, text, complaint):
    src = tmp_path / "14_new_topic.py"
    src.write_text(text)
    with pytest.raises(ValueError, match=complaint):
        _builder().make_notebook(src)


def test_every_source_builds_without_a_copy_of_the_common_cells():
    build = _builder()
    sources = sorted(build.SRC.glob("[0-9][0-9]_*.py"))
    assert sources, "no sources in notebooks/src/"
    for src in sources:
        text = src.read_text()
        assert "google.colab" not in text and "{{COLAB_BADGE}}" not in text, f"{src.name} carries a copy"
        nb = build.make_notebook(src)
        assert sum(build.skipped_on_slides(c) for c in nb.cells) == 1, src.name
