"""Where the course keeps its shipped data. Defined in notebook 00_welcome."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "COURSE_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]   # course_lib/core/paths.py -> the repository


def data_dir() -> Path:
    """The course's ``data/`` folder (override with the ``COURSE_DATA_DIR`` environment variable).

    Supports notebook 00_welcome.
    """
    folder = Path(os.environ.get(DATA_ENV_VAR, REPO_ROOT / "data"))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the course's data folder {folder} does not exist. course_lib is meant to be installed "
            f"from a clone of the course repository (pip install -e .), or point {DATA_ENV_VAR} at "
            "the repository's data/ folder.")
    return folder
