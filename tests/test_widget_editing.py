"""The generator widget's editing controls (notebook 13): img2img and inpainting from named sources."""

from __future__ import annotations

import pytest
import torch
from conftest import require

require("ipywidgets")

from course_lib.pipeline.shipped import load_shipped_pipeline  # noqa: E402
from course_lib.pipeline.text_to_image import img2img_steps  # noqa: E402
from course_lib.pipeline.widgets import MASK_PRESETS, make_generator, mask_preset  # noqa: E402
from course_lib.worlds.shapeworld import ShapeWorld  # noqa: E402


@pytest.fixture(scope="module")
def ui():
    pipe = load_shipped_pipeline()
    source = (ShapeWorld().render_caption("a red circle above a blue square", seed=1).tensors() + 1) / 2
    return make_generator(pipe, sources={"red circle above blue square": source})


def test_text_to_image_by_default(ui):
    assert ui.source.value.startswith("none") and ui.settings().strength is None
    assert ui.last_result.model_calls == ui.settings().steps


def test_img2img_and_inpainting_from_the_controls(ui):
    ui.steps.value, ui.strength.value = 10, 0.5
    ui.source.value = "red circle above blue square"
    ui.button.click()
    assert ui.last_result.model_calls == img2img_steps(10, 0.5), ui.status.value
    img2img = ui.last_result.images
    ui.mask.value = "top half"
    ui.button.click()
    assert "error" not in ui.status.value
    inpainted = ui.last_result.images
    source = ui.sources["red circle above blue square"]
    bottom = slice(20, 32)             # rows the top-half mask leaves alone, 4 rows from its edge
    kept, edited = ((x - source)[..., bottom, :].abs().mean().item() for x in (inpainted, img2img))
    assert kept < 0.02 and kept < edited / 2, (kept, edited)


def test_mask_presets():
    assert mask_preset("none", 32) is None
    for name in MASK_PRESETS[1:]:
        m = mask_preset(name, 32)
        assert m.shape == (1, 1, 32, 32) and 0 < m.mean() < 1
    assert torch.equal(mask_preset("left half", 32) + mask_preset("right half", 32), torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown mask preset"):
        mask_preset("everything", 32)
