"""The library's shape and the repository's lint, as tests (part of `python3 course.py test`):

- the import rules of pyproject.toml's ``[tool.importlinter]``, checked by ``lint-imports``: course_lib's
  layers (generate > pipeline > train > evaluate > models | diffusion | worlds > core), worlds and
  evaluators import no generative model, and only the converter imports diffusers or transformers;
- no module of course_lib/ is longer than MAX_LINES lines (a longer one is split by topic);
- ``ruff check`` passes over the whole repository, the notebooks' sources in notebooks/src/ included.

The tools are the pinned ones of requirements.txt, run from the environment that runs the tests.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "course_lib"
MAX_LINES = 350
INSTALL = "install requirements.txt (`python3 course.py setup`)"


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _script(name: str) -> str:
    """A console script of the environment that runs the tests (the venv's ``bin/``)."""
    folder = Path(sys.executable).parent
    for candidate in (folder / name, folder / f"{name}.exe"):
        if candidate.exists():
            return str(candidate)
    pytest.fail(f"`{name}` is not installed next to {sys.executable}: {INSTALL}")


def test_import_rules_hold():
    """`lint-imports` with the contracts of pyproject.toml; on failure, its report names every broken import."""
    done = _run([_script("lint-imports"), "--no-logo", "--no-cache"])
    report = done.stdout + done.stderr
    if "Broken contracts" in report:  # the list of kept and broken contracts, then each broken one's imports
        report = report[report.find("Contracts:"):]
    assert done.returncode == 0, \
        f"course_lib breaks its import rules (pyproject.toml, [tool.importlinter]); `lint-imports` says:\n{report}"


def test_converter_modules_that_import_reference_libraries_are_named_in_the_contract():
    """Only the converter (course_lib.pipeline.convert, a module or a package, or modules convert_*.py beside it)
    may import diffusers or transformers. import-linter's wildcards match whole name parts only (``convert*`` is
    not a module expression), so each convert_*.py module that does must be named in pyproject.toml's contract;
    this says which lines to add (lint-imports alone would only call it a broken contract)."""
    import grimp

    contract = next(c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
                    if "diffusers" in c.get("forbidden_modules", []))
    allowed = {re.sub(r"\s+", " ", line.strip()) for line in contract.get("ignore_imports", [])}
    graph = grimp.build_graph("course_lib", include_external_packages=True, cache_dir=None)
    missing = [f"{module} -> {package}" for module in sorted(graph.modules)
               if re.fullmatch(r"course_lib\.pipeline\.convert_\w+(\..+)?", module)
               for package in sorted(graph.find_modules_directly_imported_by(module) & {"diffusers", "transformers"})
               if f"{module} -> {package}" not in allowed]
    assert not missing, ("converter modules import reference libraries; add to the ignore_imports of the "
                         "diffusers/transformers contract in pyproject.toml: " + ", ".join(f'"{m}"' for m in missing))


# The prefixes of public state-dict keys (transformers' CLIP, diffusers' U-Net/VAE, SD's original checkpoints).
PUBLIC_KEY = re.compile(r"text_model\.|vision_model\.|down_blocks\.|up_blocks\.|mid_block\.|transformer_blocks\.|"
                        r"model\.diffusion_model|first_stage_model|cond_stage_model|encoder\.layers\.|"
                        r"embeddings\.token_embedding|final_layer_norm\.")
CONVERTER = LIBRARY / "pipeline" / "convert"


def _strings_outside_docstrings(tree: ast.Module) -> list[ast.Constant]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_only_the_converter_maps_public_weight_names():
    """A string naming a public checkpoint's keys (``text_model.``, ``down_blocks.`` ...) is a rule for renaming
    public weights: those live in course_lib/pipeline/convert/ and nowhere else. (The networks use SD's names
    as attribute names, which needs no string.)"""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}"
             for path in sorted(LIBRARY.rglob("*.py")) if CONVERTER not in path.parents
             for node in _strings_outside_docstrings(ast.parse(path.read_text())) if PUBLIC_KEY.search(node.value)]
    assert not found, "public weight names mapped outside course_lib/pipeline/convert/:\n" + "\n".join(found)
    inside = [node for path in CONVERTER.rglob("*.py")
              for node in _strings_outside_docstrings(ast.parse(path.read_text())) if PUBLIC_KEY.search(node.value)]
    assert inside, "the check found no public key names in the converter either: has PUBLIC_KEY gone stale?"


def test_no_library_module_is_longer_than_the_limit():
    lengths = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
               for p in sorted(LIBRARY.rglob("*.py"))}
    assert lengths, "no modules found in course_lib/"
    long = sorted(((n, path) for path, n in lengths.items() if n > MAX_LINES), reverse=True)
    assert not long, (f"{len(long)} module(s) of course_lib/ longer than {MAX_LINES} lines (split them by topic):\n"
                      + "\n".join(f"  {path}: {n} lines" for n, path in long))


def test_ruff_check_passes():
    """`ruff check` over the repository (pyproject.toml's [tool.ruff]; notebooks/src/ included)."""
    done = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."])
    if done.returncode != 0 and re.search(r"No module named ruff", done.stderr):
        pytest.fail(f"ruff is not installed: {INSTALL}")
    assert done.returncode == 0, f"`ruff check` found problems (`ruff check --fix` fixes those marked [*]):\n" \
        f"{done.stdout}{done.stderr}"
