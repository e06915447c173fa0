"""The shipped text-to-image model (data/shapeworld_t2i_unet.*, made by scripts/train_text_to_image.py).

It loads from the course's YAML config with checksums verified, its prompts steer the images
(guided adherence far above the unconditional model's), and the command line turns a prompt into
a PNG on a fresh install.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from course_lib.paths import REPO_ROOT
from course_lib.pipeline import load_shipped_pipeline
from course_lib.prompt_eval import evaluate_prompts

# Thresholds a little below what benchmarks/results/text_to_image_quality.json measured (n=200).
RESULTS = json.loads((REPO_ROOT / "benchmarks" / "results" / "text_to_image_quality.json").read_text())
MEASURED = {(r["split"], r["guidance"]): r for r in RESULTS["rows"]}


@pytest.fixture(scope="module")
def pipe():
    return load_shipped_pipeline()


def test_prompts_steer_the_images(pipe):
    guided = evaluate_prompts(pipe, 48, "train", guidance_scale=4.0)
    unconditional = evaluate_prompts(pipe, 48, "train", guidance_scale=0.0)
    assert guided.adherence["single_object"] >= 0.8 * MEASURED[("train", 4.0)]["single_object"]
    assert guided.adherence["overall"] >= 0.8 * MEASURED[("train", 4.0)]["overall"]
    assert guided.adherence["overall"] > unconditional.adherence["overall"] + 0.15


def test_benchmark_rows_cover_the_sweep():
    for split in ("train", "heldout"):
        for g in (0.0, 1.0, 4.0):
            row = MEASURED[(split, g)]
            assert 0 <= row["overall"] <= 1 and row["n"] >= 200
    assert MEASURED[("train", 4.0)]["overall"] > MEASURED[("train", 0.0)]["overall"]


def test_command_line_makes_a_png_from_the_shipped_weights(tmp_path: Path):
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, "-m", "course_lib.generate", "a red circle above a blue square",
                          "--sampler", "dpm-solver++", "--steps", "20", "--guidance", "4", "--seed", "0",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "saved 1 image(s)" in run.stdout
    img = Image.open(out)
    assert img.size == (32, 32)
    pixels = torch.tensor(list(img.getdata()), dtype=torch.float32)
    assert pixels.std() > 5            # not a blank image


def test_command_line_errors_are_one_line(tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "course_lib.generate", "x", "--guidance", "-1",
                          "--out", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: guidance scale")
    assert "Traceback" not in run.stderr
