"""Shared test settings: one torch thread per test worker, seeded, no progress bars; and ``require``."""

import importlib
import os

import pytest
import torch

os.environ.setdefault("COURSE_NO_PROGRESS", "1")
torch.set_num_threads(int(os.environ.get("COURSE_TEST_THREADS", "1")))


class MissingRequirement(ImportError):
    """A package of requirements.txt that the tests need is not installed."""


def require(module: str):
    """``module``, imported, for tests that compare with it (e.g. diffusers, transformers). Unlike
    ``pytest.importorskip`` it fails where the module is missing: every package of requirements.txt is
    part of the course's environment, and a skipped comparison would pass CI without checking anything."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingRequirement(
            f"{module} is not installed ({e}); the tests need every package of requirements.txt: "
            "run `python3 course.py setup` (or `pip install -r requirements.txt`)") from e


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
