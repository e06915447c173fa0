#!/usr/bin/env python3
"""One entry point for the course. Needs only Python 3.10+; everything else it installs.

    python3 course.py lab      # set up .venv (first time: about 2 minutes) and open JupyterLab
    python3 course.py test     # set up .venv and run the whole test suite, notebooks included
    python3 course.py setup    # only set up .venv
    python3 course.py build 00 # (authors) rebuild notebooks/00_*.ipynb from notebooks/src/, executed
    python3 course.py badges   # (authors) rewrite every notebook's Colab badge from course_lib/links.py

The environment is the pinned requirements.txt plus the course itself (editable), in .venv/ next
to this file. It is reinstalled only when requirements.txt or pyproject.toml change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".course-installed"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def setup() -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 (course.py runs on any python3)
        sys.exit(f"the course needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing the pinned packages (requirements.txt) and the course; first time about 2 minutes ...",
          flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements.txt")], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    STAMP.write_text(_fingerprint())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.pop("MPLBACKEND", None)  # notebooks draw with the kernel's inline backend
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def lab(args: list[str]) -> int:
    setup()
    cmd = [str(PY), "-m", "jupyterlab", "--notebook-dir", str(ROOT), str(ROOT / "notebooks" / "00_welcome.ipynb")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # JupyterLab refuses root without this
        cmd.append("--allow-root")
    env = _env()
    return subprocess.call([*cmd, *args], cwd=ROOT, env=env)


def test(args: list[str]) -> int:
    """Unit tests and every notebook under nbval, two workers, one notebook per worker at a time."""
    setup()
    env = _env()
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COURSE_NO_PROGRESS": "1"})
    workers = os.environ.get("COURSE_TEST_WORKERS", "2")
    cmd = [str(PY), "-m", "pytest", "tests", "notebooks", "--nbval-lax", "--nbval-current-env",
           "--nbval-cell-timeout", "900", "-n", workers, "--dist", "loadfile", "-q", "-rfEs",
           "--durations", "15"]
    return subprocess.call([*cmd, *args], cwd=ROOT, env=env)


def build(args: list[str]) -> int:
    setup()
    return subprocess.call([str(PY), str(ROOT / "scripts" / "build_notebooks.py"), *args], cwd=ROOT, env=_env())


def badges(args: list[str]) -> int:
    setup()
    return subprocess.call([str(PY), str(ROOT / "scripts" / "build_notebooks.py"), "--badges-only", *args],
                           cwd=ROOT, env=_env())


COMMANDS = {"setup": lambda a: setup() or 0, "lab": lab, "test": test, "build": build, "badges": badges}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2 if len(sys.argv) >= 2 else 0)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
