"""`python3 course.py test` checks the notebooks as committed (a learner's half-executed autosave does not
fail it), says so when a working copy differs, and tests the files as they are outside git.

These tests build small git repositories; no notebook is run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _load_course():
    spec = importlib.util.spec_from_file_location("course_entry_point", ROOT / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


course = _load_course()


def _notebook(text: str, executed: bool = True) -> str:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(f"print({text!r})")
    if executed:
        cell.execution_count = 1
        cell.outputs = [nbformat.v4.new_output("stream", text=text + "\n")]
    nb.cells = [cell]
    return nbformat.writes(nb)


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=course", "-c", "user.email=course@example.invalid",
                    "-c", "commit.gpgsign=false", *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A course-like checkout: two committed notebooks, a source file, a benchmarks folder."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    root = tmp_path / "course"
    (root / "notebooks" / "src").mkdir(parents=True)
    (root / "benchmarks").mkdir()
    (root / "notebooks" / "01_first.ipynb").write_text(_notebook("one"))
    (root / "notebooks" / "02_second.ipynb").write_text(_notebook("two"))
    (root / "notebooks" / "src" / "01_first.py").write_text("# %%\nprint('one')\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "course")
    return root


def test_a_clean_checkout_tests_the_files_in_place(repo):
    status = course.notebook_status(repo)
    assert status == {"committed": ["notebooks/01_first.ipynb", "notebooks/02_second.ipynb"],
                      "changed": [], "untracked": []}
    paths, notes = course.committed_notebooks(repo, status, None)
    assert paths == [repo / "notebooks" / "01_first.ipynb", repo / "notebooks" / "02_second.ipynb"]
    assert notes == []


def test_a_changed_notebook_is_tested_as_committed_and_named(repo, tmp_path):
    committed = (repo / "notebooks" / "01_first.ipynb").read_text()
    (repo / "notebooks" / "01_first.ipynb").write_text(_notebook("half-run", executed=False))  # JupyterLab autosave
    (repo / "notebooks" / "02_second.ipynb").unlink()
    (repo / "notebooks" / "01_first-Copy1.ipynb").write_text(_notebook("copy"))                 # "Duplicate"
    (repo / "notebooks" / ".ipynb_checkpoints").mkdir()
    (repo / "notebooks" / ".ipynb_checkpoints" / "01_first-checkpoint.ipynb").write_text(_notebook("x"))
    (repo / "notebooks" / "src" / "01_first.py").write_text("# %%\nprint('edited')\n")            # not a notebook

    status = course.notebook_status(repo)
    assert status["changed"] == ["notebooks/01_first.ipynb", "notebooks/02_second.ipynb"]
    assert status["untracked"] == ["notebooks/01_first-Copy1.ipynb"]
    folder = repo / ".notebooks-committed-test"
    paths, notes = course.committed_notebooks(repo, status, folder)
    assert paths == [folder / "01_first.ipynb", folder / "02_second.ipynb"]
    assert paths[0].read_text() == committed and "two" in paths[1].read_text()
    assert paths[0].parent.parent == repo  # a sibling of notebooks/: "../benchmarks" still resolves
    assert ("notebooks/01_first.ipynb differs from the last commit: testing the committed version; "
            "run `git diff notebooks/` to see your changes") in notes
    assert any(n.startswith("notebooks/02_second.ipynb is deleted in the working copy: testing the committed")
               for n in notes)
    assert any("01_first-Copy1.ipynb is not committed: not tested" in n for n in notes)
    assert "half-run" in (repo / "notebooks" / "01_first.ipynb").read_text()  # the learner's copy is untouched
    with pytest.raises(ValueError, match="folder"):
        course.committed_notebooks(repo, status, None)


def test_outside_git_the_files_are_tested_as_they_are(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    zipped = tmp_path / "course-main"  # a zip download: no .git
    (zipped / "notebooks").mkdir(parents=True)
    (zipped / "notebooks" / "01_first.ipynb").write_text(_notebook("one"))
    assert course.notebook_status(zipped) is None
    _git(zipped, "init", "-q")  # a repository without a commit: nothing committed to test against
    assert course.notebook_status(zipped) is None


def test_missing_git_means_the_files_as_they_are(repo, monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(course.subprocess, "run", no_git)
    assert course.notebook_status(repo) is None


def test_a_course_inside_a_bigger_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    outer = tmp_path / "work"
    root = outer / "courses" / "sd"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "01_first.ipynb").write_text(_notebook("one"))
    _git(outer, "init", "-q")
    _git(outer, "add", ".")
    _git(outer, "commit", "-q", "-m", "all")
    (root / "notebooks" / "01_first.ipynb").write_text(_notebook("changed"))
    status = course.notebook_status(root)
    assert status == {"committed": ["notebooks/01_first.ipynb"], "changed": ["notebooks/01_first.ipynb"],
                      "untracked": []}
    paths, _ = course.committed_notebooks(root, status, root / ".committed")
    assert "one" in paths[0].read_text()


def test_the_test_command_runs_pytest_on_the_committed_versions(repo, monkeypatch, capsys):
    """`course.py test` wiring: the pytest arguments, the variable for tests/, the printed line, cleanup."""
    committed = (repo / "notebooks" / "01_first.ipynb").read_text()
    (repo / "notebooks" / "01_first.ipynb").write_text(_notebook("half-run", executed=False))
    seen: dict = {}

    def fake_call(cmd, cwd, env):
        files = [Path(a) for a in cmd if a.endswith(".ipynb")]
        seen.update(files=files, texts=[f.read_text() for f in files], env=env[course.TESTED_NOTEBOOKS_VAR])
        return 0

    monkeypatch.setattr(course, "ROOT", repo)
    monkeypatch.setattr(course, "setup", lambda: None)
    monkeypatch.setattr(course.subprocess, "call", fake_call)
    monkeypatch.delenv("COURSE_TEST_WORKING_COPY", raising=False)
    assert course.test(["-x"]) == 0
    first, second = seen["files"]
    assert first.parent.name.startswith(".notebooks-committed-") and first.parent.parent == repo
    assert seen["texts"][0] == committed and second == repo / "notebooks" / "02_second.ipynb"
    assert seen["env"].split(os.pathsep) == [str(first), str(second)]
    assert not first.parent.exists(), "the folder of committed copies is removed afterwards"
    out = capsys.readouterr().out
    assert "notebooks/01_first.ipynb differs from the last commit: testing the committed version" in out

    monkeypatch.setenv("COURSE_TEST_WORKING_COPY", "1")  # authors: the working copies, as before
    seen.clear()

    def fake_call_working(cmd, cwd, env):
        seen.update(cmd=cmd, env=env.get(course.TESTED_NOTEBOOKS_VAR))
        return 0

    monkeypatch.setattr(course.subprocess, "call", fake_call_working)
    assert course.test([]) == 0
    assert "notebooks" in seen["cmd"] and not [a for a in seen["cmd"] if a.endswith(".ipynb")]


def test_the_notebook_tests_read_the_files_course_py_names(monkeypatch, tmp_path):
    from notebook_files import TESTED_NOTEBOOKS_VAR, notebooks_under_test

    assert TESTED_NOTEBOOKS_VAR == course.TESTED_NOTEBOOKS_VAR
    copy = tmp_path / "06_reverse_diffusion.ipynb"
    listed = [ROOT / "notebooks" / "00_welcome.ipynb", copy, tmp_path / "Untitled.ipynb"]
    monkeypatch.setenv(TESTED_NOTEBOOKS_VAR, os.pathsep.join(map(str, listed)))
    assert notebooks_under_test() == [ROOT / "notebooks" / "00_welcome.ipynb", copy]
    monkeypatch.delenv(TESTED_NOTEBOOKS_VAR)
    assert notebooks_under_test() == sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
