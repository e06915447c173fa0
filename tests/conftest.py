"""Shared test settings: one torch thread per test worker, seeded, no progress bars."""

import os

import pytest
import torch

os.environ.setdefault("COURSE_NO_PROGRESS", "1")
torch.set_num_threads(int(os.environ.get("COURSE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
