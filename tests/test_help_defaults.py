"""``--help`` of the course's command lines names each option's default (course_lib/core/cli.py)."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.core.cli import HelpFormatter
from course_lib.pipeline.text_to_image import GenerationSettings

ROOT = Path(__file__).resolve().parent.parent
COMMAND_LINES = sorted([*(ROOT / "scripts").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def _help(*cmd: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    done = subprocess.run([sys.executable, *cmd, "--help"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return " ".join(done.stdout.split())  # argparse wraps lines; compare with single spaces


def test_generate_help_shows_the_defaults():
    text = _help("-m", "course_lib.generate")
    d = GenerationSettings()
    for expected in (f"--steps STEPS (default: {d.steps})", "(default: the model's own: dpm-solver++, or flow-euler",
                     f"--seed SEED (default: {d.seed})",
                     f"classifier-free guidance scale (default: {d.guidance_scale})",
                     f"--num-images NUM_IMAGES (default: {d.images_per_prompt})", "(default: out.png)",
                     "cpu, cuda, cuda:N or mps (default: cpu)", 'negative prompt (default: "")',
                     "(default: configs/shapeworld-inference.yaml)"):
        assert expected in text, f"{expected!r} not in --help"
    assert "Text to image from the command line" in text and "(default: False)" not in text


def test_a_training_script_help_shows_the_defaults():
    text = _help(str(ROOT / "scripts" / "train_mnist_diffusion.py"))
    assert "--steps STEPS (default: 6000)" in text and "--lr LR (default: 0.002)" in text
    assert "--name NAME (default: mnist_unet)" in text and "(default: constant)" in text


@pytest.mark.parametrize("path", COMMAND_LINES, ids=[f"{p.parent.name}/{p.name}" for p in COMMAND_LINES])
def test_every_command_line_uses_the_course_help_formatter(path):
    tree = ast.parse(path.read_text())
    parsers = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
               and ast.unparse(node.func).endswith("ArgumentParser")
               and not any(k.arg == "add_help" for k in node.keywords)]
    for parser in parsers:
        formatter = next((k.value for k in parser.keywords if k.arg == "formatter_class"), None)
        assert formatter is not None and ast.unparse(formatter) == "HelpFormatter", (
            f"{path.name}: use ArgumentParser(..., formatter_class=HelpFormatter) (course_lib.core.cli): "
            "--help then shows the defaults")


def test_the_formatter_shows_what_a_learner_types():
    p = argparse.ArgumentParser(prog="x", description="line one\n    indented line two", formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=20)                              # no help: the default alone
    p.add_argument("--calls", type=int, nargs="*", default=[5, 10, 20])          # a list, as typed
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--folder", default=None, help="where to save")                # None: not set, not shown
    p.add_argument("--out", default="a.json", help="the output (default: next to the input)")  # says it already
    p.add_argument("--fast", action="store_true", help="a switch")                # off by default: not shown
    p.add_argument("--mask", action=argparse.BooleanOptionalAction, default=True, help="mask it")
    p.add_argument("--rate", default="5%", help="a percentage")
    p.add_argument("prompt", help="the prompt")                                   # required: no default
    text = p.format_help()
    assert "line one\n    indented line two" in text  # the description keeps its layout
    flat = " ".join(text.split())
    for expected in ("--steps STEPS (default: 20)", "(default: 5 10 20)", "learning rate (default: 0.001)",
                     "where to save --out", "the output (default: next to the input) --fast",
                     "a switch --mask", "mask it (default: True)", "a percentage (default: 5%)", "prompt the prompt"):
        assert expected in flat, (expected, text)
    assert flat.count("(default:") == 6  # five shown, one the help's own
