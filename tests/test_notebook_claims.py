"""A checked notebook cell (``# NBVAL_CHECK_OUTPUT``) that states a claim prints True when it holds.

nbval compares a checked cell's output with the committed one, so a committed
``library == by hand ...: False`` would be enforced forever, under text that says "the same". This
test reads the committed outputs and fails on a claim printed False. What counts as a claim:

* a bare ``False`` right after ``:``, ``->``, ``=>``, ``==``, ``!=`` or `` = ``
  (``by hand == diffusers: False``, ``max |difference| = 2e-3 -> equal: False``);
* a bare ``False`` that ends the line (the result column of a table, a cell's value ``False``);
* a bare ``False`` after a claim word on its line (``losses agree: True False``).

Not claims: ``False`` as a value in a printed object, ``name=False`` (keyword repr, e.g. a widget)
and ``'key': False`` (dict repr). A check that should fail a cell prints True or uses ``assert``.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from notebook_files import notebooks_under_test

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
FALSE = re.compile(r"\bFalse\b")
REPR_BEFORE = re.compile(r"(\w=|['\"]\s*:\s*)$")                      # skip=False, 'set_alpha_to_one': False
CLAIM_BEFORE = re.compile(r"(:|->|=>|==|!=|\s=)\s*$")                  # ...: False, -> False, == False, x = False
IN_A_SEQUENCE = re.compile(r"[\[(,]\s*$")                               # [True, False], (False, ...)
CLAIM_WORDS = re.compile(r"==|!=|\b(equal|equals|same|identical|match(es)?|agree[s]?|close|exact|bit[- ]for[- ]bit|"
                         r"bit-exact|consistent|correct|depends?|changes?)\b", re.I)
NOTEBOOKS = notebooks_under_test()


def failed_claims(text: str) -> list[str]:
    """The lines of a cell's output text that print a claim as False (see the module's docstring)."""
    hits = []
    for line in text.splitlines():
        for match in FALSE.finditer(line):
            before, after = line[:match.start()], line[match.end():]
            if REPR_BEFORE.search(before):
                continue
            ends_line = not after.strip(" .;") and not IN_A_SEQUENCE.search(before)
            if CLAIM_BEFORE.search(before) or ends_line or CLAIM_WORDS.search(before):
                hits.append(line.strip())
                break
    return hits


def output_text(output: dict) -> str:
    """The text a learner sees for one output: a stream, or the plain text of a result or display."""
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def checked_cell_claims(notebook: nbformat.NotebookNode) -> list[str]:
    """``cell N: line`` for each claim printed False by a checked code cell of ``notebook``."""
    hits = []
    for index, cell in enumerate(notebook.cells):
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        if cell.cell_type != "code" or CHECK_MARKER not in source:
            continue
        for output in cell.get("outputs", []):
            hits += [f"cell {index}: {line}" for line in failed_claims(output_text(output))]
    return hits


@pytest.mark.parametrize("text", [
    "library == by hand (max abs difference < 1e-2, pixels in [-1, 1]): False",
    "eta=0.0: library == by hand (max abs difference < 1e-3): False;  model calls: 50",
    "by hand    vs diffusers Transformer2DModel: max |difference| = 2.4e-07 -> equal: False",
    "same parameter names: False",
    "losses agree: True False",
    "the live seed-0 GAN equals the shipped one: False (bit-exact on the same kind of CPU)",
    "plms             20          21                                         False",
    "False",
    "the command line's image == the pipeline's: False",
])
def test_a_claim_printed_false_is_found(text):
    assert failed_claims(text) == [text.strip()]


@pytest.mark.parametrize("text", [
    "skip=False: 109,469 parameters, output (2, 5, 32, 32) for input (2, 3, 32, 32)",
    "skip=False: identical output: True",
    "VBox(children=(HBox(children=(IntSlider(value=200, continuous_update=False, description='t', max=999)",
    "ddim          {'timestep_spacing': 'leading', 'steps_offset': 1, 'set_alpha_to_one': False}",
    'config: {"clip_sample": False, "steps_offset": 1}',
    "which prompts were in the training set: [True, False, True]",
    "losses agree: True True",
    "Falsehood is not a token; neither is isFalse",
])
def test_legitimate_outputs_are_not_flagged(text):
    assert failed_claims(text) == []


def test_there_are_notebooks_to_read():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_checked_cell_prints_a_claim_as_false(path):
    hits = checked_cell_claims(nbformat.read(path, as_version=4))
    assert not hits, (f"{path.name}: a checked cell (# NBVAL_CHECK_OUTPUT) prints a claim as False; fix the claim or "
                      "the text, don't commit it:\n  " + "\n  ".join(hits))
