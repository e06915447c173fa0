#!/usr/bin/env python3
"""One entry point for the course. Needs only Python 3.11+; everything else it installs.

    python3 course.py lab      # set up .venv (first time: about 2 minutes) and open JupyterLab
    python3 course.py test     # set up .venv and run the whole test suite, notebooks included
    python3 course.py setup    # only set up .venv
    python3 course.py slides 05 [--serve]  # notebook 05 as slides (reveal.js) in slides/, works offline
    python3 course.py build 00 # (authors) rebuild notebooks/00_*.ipynb from notebooks/src/, executed
    python3 course.py badges   # (authors) rewrite every notebook's Colab badge and setup cell (links.py)

The environment is the pinned requirements.txt plus the course itself (editable), in .venv/ next
to this file. It is reinstalled only when requirements.txt or pyproject.toml change.

`test` checks the notebooks as committed: in a git checkout, a notebook that differs from the last
commit (JupyterLab autosaves a notebook you ran, half-executed) is tested in its committed version,
and the command says so; notebooks that were never committed are not tested. Outside git (a zip
download) the files are tested as they are, and so they are with COURSE_TEST_WORKING_COPY=1 (authors).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
    # The pinned packages (numpy, scipy, matplotlib, IPython, import-linter) need 3.11.
    if sys.version_info < (3, 11):  # noqa: UP036 (course.py runs on any python3)
        sys.exit(f"the course needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing the pinned packages (requirements.txt) and the course; first time a few minutes ...",
          flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    if wants_cpu_wheels() and _install_cpu_torch(pip, requirements):
        requirements = cpu_requirements(requirements)
    with tempfile.TemporaryDirectory() as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        subprocess.run([*pip, "-r", str(req_file)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    STAMP.write_text(_fingerprint())


CPU_INDEX = "https://download.pytorch.org/whl/cpu"
GPU_ONLY_PACKAGES = ("nvidia-", "cuda-", "triton")  # what PyPI's Linux torch wheel pulls in for CUDA


def wants_cpu_wheels(platform: str = sys.platform, env: dict[str, str] | None = None) -> bool:
    """Linux without an NVIDIA GPU: PyPI's torch for Linux brings about 3 GB of CUDA libraries that such a
    machine never uses, so the course first tries PyTorch's CPU wheels. ``COURSE_TORCH=default`` keeps
    PyPI's wheels, ``COURSE_TORCH=cpu`` asks for the CPU wheels anyway. (macOS and Windows wheels on
    PyPI are CPU-only already.)"""
    choice = (os.environ if env is None else env).get("COURSE_TORCH", "auto")
    if choice in ("cpu", "default"):
        return choice == "cpu"
    has_gpu = shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()
    return platform.startswith("linux") and not has_gpu


def cpu_requirements(requirements: list[str]) -> list[str]:
    """requirements.txt without the CUDA packages; torch and torchvision stay pinned (a ``+cpu`` build
    satisfies ``torch==X``)."""
    return [line for line in requirements if not line.strip().lower().startswith(GPU_ONLY_PACKAGES)]


def _install_cpu_torch(pip: list[str], requirements: list[str]) -> bool:
    """Install the pinned torch and torchvision from PyTorch's CPU index; False (with a note) when that
    index cannot be reached or lacks those versions, and the default wheels are used instead."""
    pins = [f"{line.strip()}+cpu" for line in requirements if line.strip().startswith(("torch==", "torchvision=="))]
    print(f"no NVIDIA GPU: trying PyTorch's CPU wheels ({', '.join(pins)}) from {CPU_INDEX} ...", flush=True)
    done = subprocess.run([*pip, "--index-url", CPU_INDEX, "--retries", "1", "--timeout", "20", *pins],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        print(f"PyTorch's CPU wheels are not available here ({reason[:150]}); installing the default wheels",
              flush=True)
        return False
    return True


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


NOTEBOOK_PATH = re.compile(r"notebooks/[^/]+\.ipynb")  # the course's notebooks (not checkpoints, not src/)
TESTED_NOTEBOOKS_VAR = "COURSE_TEST_NOTEBOOKS"  # tells tests/ which notebook files to read (os.pathsep-separated)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    """``git -C root ARGS``, or None where git is missing or does not answer."""
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None


def _git_paths(root: Path, *args: str) -> list[str] | None:
    """The course notebooks among the NUL-separated paths a git command prints; None if it failed."""
    done = _git(root, *args)
    if done is None or done.returncode != 0:
        return None
    return sorted(p for p in done.stdout.decode("utf-8", "replace").split("\0") if NOTEBOOK_PATH.fullmatch(p))


def notebook_status(root: Path = ROOT) -> dict[str, list[str]] | None:
    """How ``root``'s notebooks/*.ipynb stand against the last commit, as paths relative to ``root``:
    ``committed`` (in HEAD), ``changed`` (committed, but the working copy differs or is deleted) and
    ``untracked`` (never committed, not ignored). None outside a git checkout with a commit that holds
    the notebooks (a zip download, no git): then the files are tested as they are."""
    committed = _git_paths(root, "ls-tree", "-r", "--name-only", "-z", "HEAD", "--", "notebooks")
    if not committed:
        return None
    changed = _git_paths(root, "diff", "--name-only", "--relative", "-z", "HEAD", "--", "notebooks")
    untracked = _git_paths(root, "ls-files", "-z", "--others", "--exclude-standard", "--", "notebooks")
    if changed is None or untracked is None:
        return None
    return {"committed": committed, "changed": [p for p in changed if p in committed], "untracked": untracked}


def committed_notebooks(root: Path, status: dict[str, list[str]],
                        folder: Path | None) -> tuple[list[Path], list[str]]:
    """The notebook files to test, each as committed: the working copy where it is unchanged, else
    the committed version written into ``folder`` (a sibling of notebooks/, so that the notebooks'
    relative paths such as ``../benchmarks`` still resolve). Also the lines that tell the learner."""
    paths: list[Path] = []
    notes: list[str] = []
    for rel in status["committed"]:
        if rel not in status["changed"]:
            paths.append(root / rel)
            continue
        if folder is None:
            raise ValueError(f"{rel} differs from the last commit: pass a folder for its committed version")
        blob = _git(root, "cat-file", "--filters", f"HEAD:./{rel}")
        if blob is None or blob.returncode != 0:
            raise RuntimeError(f"git cannot read the committed {rel}: {blob.stderr.decode() if blob else 'no git'}")
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / Path(rel).name
        copy.write_bytes(blob.stdout)
        paths.append(copy)
        state = "differs from the last commit" if (root / rel).exists() else "is deleted in the working copy"
        notes.append(f"{rel} {state}: testing the committed version; run `git diff notebooks/` to see your changes")
    notes += [f"{rel} is not committed: not tested (the tests check the committed notebooks)"
              for rel in status["untracked"]]
    if status["changed"]:
        notes.append("(authors: COURSE_TEST_WORKING_COPY=1 python3 course.py test tests the working copies)")
    return paths, notes


def test(args: list[str]) -> int:
    """Unit tests and every notebook under nbval, two workers, one notebook per worker at a time.
    The notebooks are checked as committed (see the module's docstring)."""
    setup()
    env = _env()
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COURSE_NO_PROGRESS": "1"})
    workers = os.environ.get("COURSE_TEST_WORKERS", "2")
    status = None if os.environ.get("COURSE_TEST_WORKING_COPY") == "1" else notebook_status(ROOT)
    folder = None
    if status is not None and status["changed"]:  # a sibling of notebooks/, removed afterwards
        folder = Path(tempfile.mkdtemp(prefix=".notebooks-committed-", dir=ROOT))
    try:
        notebooks: list[str] = ["notebooks"]
        if status is not None:
            paths, notes = committed_notebooks(ROOT, status, folder)
            for note in notes:
                print(note, flush=True)
            notebooks = [str(p) for p in paths]
            env[TESTED_NOTEBOOKS_VAR] = os.pathsep.join(notebooks)
        cmd = [str(PY), "-m", "pytest", "tests", *notebooks, "--nbval-lax", "--nbval-current-env",
               "--nbval-cell-timeout", "900", "-n", workers, "--dist", "loadfile", "-q", "-rfEs",
               "--durations", "15"]
        return subprocess.call([*cmd, *args], cwd=ROOT, env=env)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def build(args: list[str]) -> int:
    setup()
    return subprocess.call([str(PY), str(ROOT / "scripts" / "build_notebooks.py"), *args], cwd=ROOT, env=_env())


def slides(args: list[str]) -> int:
    """Build notebooks' slides (scripts/build_slides.py) in the course's environment: `slides 05 [--serve]`."""
    setup()
    return subprocess.call([str(PY), str(ROOT / "scripts" / "build_slides.py"), *args], cwd=ROOT, env=_env())


def badges(args: list[str]) -> int:
    setup()
    return subprocess.call([str(PY), str(ROOT / "scripts" / "build_notebooks.py"), "--badges-only", *args],
                           cwd=ROOT, env=_env())


COMMANDS = {"setup": lambda a: setup() or 0, "lab": lab, "test": test, "build": build, "badges": badges,
            "slides": slides}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2 if len(sys.argv) >= 2 else 0)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
