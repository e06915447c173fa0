"""`python3 course.py setup` on a machine without an NVIDIA GPU tries PyTorch's CPU wheels first (no 3 GB of
CUDA libraries) and falls back to the default wheels when that index cannot be reached (as on the course's
build machine, which has only a local package mirror). The CPU-wheel install itself needs the internet and
is not exercised here; these tests check the choice, the requirement list and the fallback."""

from __future__ import annotations

import sys
from pathlib import Path

from test_committed_notebooks import course  # course.py, loaded once for the tests of the entry point

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_wheels_are_wanted_only_on_linux_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(course.shutil, "which", lambda name: None)
    no_driver = tmp_path / "no-such-driver"
    monkeypatch.setattr(course, "Path", lambda p: no_driver if p == "/proc/driver/nvidia" else Path(p))
    assert course.wants_cpu_wheels("linux", env={})
    assert not course.wants_cpu_wheels("darwin", env={})       # PyPI's macOS and Windows wheels are CPU-only
    assert not course.wants_cpu_wheels("win32", env={})
    assert not course.wants_cpu_wheels("linux", env={"COURSE_TORCH": "default"})
    assert course.wants_cpu_wheels("darwin", env={"COURSE_TORCH": "cpu"})
    monkeypatch.setattr(course.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert not course.wants_cpu_wheels("linux", env={})


def test_cpu_requirements_drop_the_cuda_packages_and_keep_the_pins():
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    cpu = course.cpu_requirements(requirements)
    assert not [line for line in cpu if line.lower().startswith(("nvidia-", "cuda-", "triton"))]
    assert any(line.startswith("torch==") for line in cpu) and any(line.startswith("torchvision==") for line in cpu)
    dropped = set(requirements) - set(cpu)
    assert dropped and all(line.lower().startswith(("nvidia-", "cuda-", "triton")) for line in dropped)


def test_an_unreachable_cpu_index_falls_back_with_one_line(capsys):
    failing_pip = [sys.executable, "-c", "import sys; sys.stderr.write('ERROR: no route to host\\n'); sys.exit(1)"]
    assert course._install_cpu_torch(failing_pip, ["torch==2.14.1", "torchvision==0.29.1", "numpy==2.0"]) is False
    out = capsys.readouterr().out
    assert "torch==2.14.1+cpu, torchvision==0.29.1+cpu" in out
    assert "not available here (ERROR: no route to host); installing the default wheels" in out
