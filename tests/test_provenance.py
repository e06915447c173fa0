"""Provenance that cannot drift: where course_lib says "Defined in notebook NN_name", that notebook builds it.

Every docstring in ``course_lib`` that names the notebook defining a function, class or module is
checked against the notebook's source (``notebooks/src/NN_name.py``, the file the notebook is built
from): the notebook must exist and its code (not only its prose) must use the name; a method counts
through its class's name too. For a module's docstring, the notebook must import the module or use
one of the public names the module defines (or a module that hands them on). A part that a notebook
uses only inside something else (a VAE's ``Encoder``) says "Supports notebook NN_name"; then the
notebook must use its module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "course_lib"
SOURCES = ROOT / "notebooks" / "src"
CLAIM = re.compile(r"Defined in notebook (\d\d_[a-z0-9_]+)")
SUPPORTS = re.compile(r"Supports notebook (\d\d_[a-z0-9_]+)")


def _code_of(source: Path) -> str:
    """The code of a percent-format notebook source: every line that is not a comment (markdown cells
    are comments there), so that a name mentioned only in prose does not count."""
    return "\n".join(line for line in source.read_text().splitlines() if not line.lstrip().startswith("#"))


def _importers() -> dict[str, set[str]]:
    """For each module stem, the stems of the course_lib modules that import from it (its re-exporters): a
    notebook that imports ``samplers`` uses ``dpm_solver``, whose functions ``samplers`` hands on."""
    found: dict[str, set[str]] = {}
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("course_lib."):
                stem = path.parent.name if path.stem == "__init__" else path.stem
                found.setdefault(node.module.rsplit(".", 1)[-1], set()).add(stem)
    return found


def _claims() -> list[tuple[str, str, str, set[str]]]:
    """(where, notebook, name, names) for every "Defined in notebook" claim: ``name`` is the function or
    class (or, for a module docstring, the module), ``names`` the public names that count as using it."""
    found = []
    importers = _importers()
    for path in sorted(LIB.rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        public = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)
                  and not node.name.startswith("_")}
        module_names = public | {path.stem} | importers.get(path.stem, set())
        doc = ast.get_docstring(tree) or ""
        for notebook in CLAIM.findall(doc) + SUPPORTS.findall(doc):
            found.append((module, notebook, path.stem, module_names))
        for node, owner in _definitions(tree):
            doc = ast.get_docstring(node) or ""
            where = f"{module}.{owner + '.' if owner else ''}{node.name}"
            names = {n for n in (node.name, owner) if n and not n.startswith("__")}
            for notebook in CLAIM.findall(doc):
                found.append((where, notebook, node.name, names))
            for notebook in SUPPORTS.findall(doc):
                found.append((where, notebook, path.stem, module_names))
    return found


def _definitions(tree: ast.Module) -> list[tuple[ast.AST, str | None]]:
    """Every function and class, with the class it is a method of (None at the top level)."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.append((node, None))
        if isinstance(node, ast.ClassDef):
            out += [(item, node.name) for item in ast.walk(node)
                    if item is not node and isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    return out


CLAIMS = _claims()


def test_there_are_claims_to_check():
    assert len(CLAIMS) > 100, "the provenance lines were not found: did the phrase 'Defined in notebook' change?"


@pytest.mark.parametrize("where,notebook,name,names", CLAIMS, ids=[f"{c[0]}@{c[1][:2]}" for c in CLAIMS])
def test_the_named_notebook_builds_it(where: str, notebook: str, name: str, names: set[str]):
    source = SOURCES / f"{notebook}.py"
    assert source.exists(), f"{where} says it is defined in notebook {notebook}, which does not exist"
    code = _code_of(source)
    used = sorted(n for n in names if re.search(rf"\b{re.escape(n)}\b", code))
    assert used, (f"{where} says 'Defined in notebook {notebook}', but that notebook's code never uses "
                  f"{name!r}; name the notebook that builds it, or say 'Supports notebook NN' for a part "
                  "it uses only inside another")
