"""`python -m course_lib.generate --lora`: a shipped LoRA by name or a file, and clear errors (notebook 13)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from course_lib.generate import main
from course_lib.models.lora import add_lora, save_lora
from course_lib.pipeline.shipped import load_shipped_pipeline
from course_lib.pipeline.text_to_image import load_image


def test_a_shipped_lora_by_name_changes_the_image(tmp_path, capsys):
    prompt = ["a large green circle in the center", "--steps", "4", "--seed", "3"]
    assert main([*prompt, "--out", str(tmp_path / "base.png")]) == 0
    assert main([*prompt, "--lora", "shapeworld_lora_green_circle", "--out", str(tmp_path / "lora.png")]) == 0
    base, lora = (load_image(tmp_path / f) for f in ("base.png", "lora.png"))    # (1, 3, 32, 32) in [0, 1]
    assert base.shape == lora.shape and (base - lora).abs().mean() > 0.01


def test_a_lora_file_from_the_same_model_loads(tmp_path):
    pipe = load_shipped_pipeline()
    add_lora(pipe.unet, rank=2, targets="cross")
    save_lora(tmp_path / "fresh.safetensors", pipe.unet, base_model="shapeworld_t2i_unet")
    assert main(["a red circle", "--steps", "2", "--lora", str(tmp_path / "fresh.safetensors"),
                 "--out", str(tmp_path / "x.png")]) == 0


def test_bad_loras_are_one_line_errors(tmp_path, capsys):
    assert main(["a red circle", "--steps", "2", "--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "neither a file nor" in capsys.readouterr().err
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    assert main(["a red circle", "--steps", "2", "--lora", str(tmp_path / "other.safetensors"),
                 "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and not Path(tmp_path / "y.png").exists()
