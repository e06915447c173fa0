"""The widgets of notebooks 05 and 07 call their drawing functions when a control changes.

Each widget is built by a function in the notebook's source (``make_noise_explorer`` in 05,
``make_sampler_explorer`` in 07) that takes the drawing function as an argument. Here we pull that
function and the imports of its cell out of the source, hand it a recording stand-in, and move the
controls: setting ``slider.value`` fires ``observe`` synchronously, no browser needed.
"""

import ast
import sys
from pathlib import Path

import pytest
from conftest import require

require("ipywidgets")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from build_notebooks import SRC, parse_source  # noqa: E402


def load_widget_factory(source_name: str, function_name: str, **namespace):
    """Exec the imports and the definition of ``function_name`` from its notebook cell."""
    path = SRC / source_name
    if not path.exists():
        pytest.skip(f"{source_name} not written yet")
    for kind, body in parse_source(path.read_text()):
        if kind != "code" or f"def {function_name}(" not in body:
            continue
        tree = ast.parse(body)
        keep = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
                or (isinstance(n, ast.FunctionDef) and n.name == function_name)]
        ns = dict(namespace)
        exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)
        return ns[function_name]
    raise AssertionError(f"{source_name} has no cell defining {function_name}")


def test_noise_explorer_redraws_on_every_change():
    calls = []
    make = load_widget_factory("05_forward_diffusion.py", "make_noise_explorer", T=1000,
                               noising_panel=lambda t, name: calls.append((t, name)))
    box, slider, menu = make(panel=lambda t, name: calls.append((t, name)))
    assert calls == [(200, "linear")]                 # drawn once when built
    slider.value = 750
    menu.value = "cosine"
    slider.value = 0
    assert calls == [(200, "linear"), (750, "linear"), (750, "cosine"), (0, "cosine")]
    assert slider.max == 999 and set(menu.options) == {"linear", "scaled_linear", "cosine"}


def test_sampler_explorer_redraws_on_every_change():
    calls = []
    make = load_widget_factory("07_plms_and_dpm_solver.py", "make_sampler_explorer", sampler_panel=None)
    box, menu, steps = make(panel=lambda name, n: calls.append((name, n)))
    first = calls[-1]
    steps.value = 5
    menu.value = "plms"
    assert calls[-2:] == [(first[0], 5), ("plms", 5)]
    assert "ddpm" in menu.options and "dpm-solver++" in menu.options
