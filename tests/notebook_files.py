"""Which notebook files the notebook tests read.

``python3 course.py test`` checks the notebooks as committed: it lists the files to read in
``COURSE_TEST_NOTEBOOKS`` (the working copy of an unchanged notebook, a copy of the committed version
of a changed one). Without it (pytest run directly, a zip download), notebooks/NN_*.ipynb as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTED_NOTEBOOKS_VAR = "COURSE_TEST_NOTEBOOKS"  # set by course.py's `test`


def notebooks_under_test() -> list[Path]:
    """The course's numbered notebooks to check, sorted by file name."""
    listed = os.environ.get(TESTED_NOTEBOOKS_VAR)
    if listed:
        paths = [Path(p) for p in listed.split(os.pathsep) if p]
        return sorted((p for p in paths if p.name[:2].isdigit() and p.name[2:3] == "_"), key=lambda p: p.name)
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
