"""An interactive text-to-image generator for Jupyter (ipywidgets). Defined in notebook 10_full_sampler.

    from course_lib.pipeline.widgets import make_generator
    ui = make_generator(pipe)      # the last line of a cell: shows the controls and the image
    ui.prompt.value = "two green squares"; ui.button.click()    # or drive it from code / tests

Every control maps to one field of ``GenerationSettings``; pressing *Generate* runs the pipeline
and shows the image, the prompt the text encoder saw and the time. With ``sources`` (named images),
it also offers img2img and inpainting (notebook 13): a source image, ``strength`` and a mask preset.
For a LoRA, pass a pipeline it was applied to (``course_lib.pipeline.lora.apply_lora``).
Errors (an over-long prompt, a bad setting) are shown in the output, not raised.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch

from course_lib.diffusion.guidance import available_styles
from course_lib.pipeline.settings import GenerationSettings
from course_lib.pipeline.text_to_image import TextToImagePipeline

__all__ = ["GeneratorUI", "make_generator", "MASK_PRESETS", "mask_preset"]

NO_SOURCE = "none: text to image"
MASK_PRESETS = ("none", "left half", "right half", "top half", "bottom half", "center")


def mask_preset(name: str, size: int) -> torch.Tensor | None:
    """A (1, 1, size, size) inpainting mask (1 = repaint) by name, or None for "none". Defined in
    notebook 13_beyond_text_to_image."""
    if name not in MASK_PRESETS:
        raise ValueError(f"unknown mask preset {name!r}; presets: {', '.join(MASK_PRESETS)}")
    if name == "none":
        return None
    m, h = torch.zeros(1, 1, size, size), size // 2
    region = {"left half": (slice(None), slice(0, h)), "right half": (slice(None), slice(h, None)),
              "top half": (slice(0, h), slice(None)), "bottom half": (slice(h, None), slice(None)),
              "center": (slice(size // 4, size - size // 4), slice(size // 4, size - size // 4))}[name]
    m[0, 0, region[0], region[1]] = 1.0
    return m


@dataclass
class GeneratorUI:
    """The generator's widgets; ``box`` is what the notebook displays. Supports notebook 10_full_sampler."""

    box: object
    prompt: object
    negative_prompt: object
    style: object
    sampler: object
    steps: object
    guidance_scale: object
    seed: object
    button: object
    image: object
    status: object
    last_result: object = None
    source: object = None       # img2img / inpainting controls, when make_generator got sources
    strength: object = None
    mask: object = None
    sources: dict | None = None

    def editing(self) -> bool:
        """Whether a source image is chosen (img2img or inpainting) rather than text to image."""
        return self.source is not None and self.source.value != NO_SOURCE

    def settings(self) -> GenerationSettings:
        return GenerationSettings(negative_prompt=self.negative_prompt.value, style=self.style.value,
                                  sampler=self.sampler.value, steps=int(self.steps.value),
                                  guidance_scale=float(self.guidance_scale.value), seed=int(self.seed.value),
                                  strength=float(self.strength.value) if self.editing() else None)

    def edit_inputs(self, size: int) -> dict:
        """``init_image`` and ``mask`` for the pipeline, from the source and mask controls."""
        if not self.editing():
            return {}
        mask = mask_preset(self.mask.value, size)
        return {"init_image": self.sources[self.source.value], **({} if mask is None else {"mask": mask})}

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)


def make_generator(pipe: TextToImagePipeline, prompt: str = "a red circle above a blue square",
                   upscale: int = 8, sources: dict[str, torch.Tensor] | None = None) -> GeneratorUI:
    """Build the generator's controls for ``pipe``; ``upscale`` enlarges the small images for display.
    ``sources``: named images (1, 3, H, W) in [0, 1] to edit (img2img, inpainting; notebook 13).

    Defined in notebook 10_full_sampler.
    """
    import ipywidgets as w
    from PIL import Image

    d = GenerationSettings()
    style = {"description_width": "120px"}
    wide = w.Layout(width="520px")
    ui = GeneratorUI(
        box=None,
        prompt=w.Text(value=prompt, description="prompt", style=style, layout=wide),
        negative_prompt=w.Text(value=d.negative_prompt, description="negative prompt", style=style, layout=wide),
        style=w.Dropdown(options=available_styles(), value=d.style, description="style", style=style),
        sampler=w.Dropdown(options=pipe.samplers, value=pipe.default_sampler, description="sampler", style=style),
        steps=w.IntSlider(value=d.steps, min=1, max=100, description="steps", style=style),
        guidance_scale=w.FloatSlider(value=d.guidance_scale, min=0.0, max=15.0, step=0.5, description="guidance",
                                     style=style),
        seed=w.IntText(value=d.seed, description="seed", style=style),
        button=w.Button(description="Generate", button_style="primary"),
        image=w.Image(format="png", width=32 * upscale),
        status=w.HTML(value=""),
    )
    if sources:
        ui.sources = dict(sources)
        ui.source = w.Dropdown(options=[NO_SOURCE, *ui.sources], value=NO_SOURCE, description="edit image",
                               style=style)
        ui.strength = w.FloatSlider(value=0.6, min=0.0, max=1.0, step=0.05, description="strength", style=style)
        ui.mask = w.Dropdown(options=MASK_PRESETS, value="none", description="repaint (mask)", style=style)

    def generate(*_) -> None:
        ui.button.disabled = True
        ui.status.value = "generating ..."
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = pipe(ui.prompt.value, ui.settings(), show_progress=False,
                              **ui.edit_inputs(pipe.image_size))
            img = result.pil_images()[0]
            img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            ui.image.value = buf.getvalue()
            ui.last_result = result
            notes = "".join(f"<br><b>warning:</b> {m.message}" for m in caught)
            ui.status.value = (f"<code>{result.prompts[0] or '(empty: unconditional)'}</code><br>"
                               f"{result.model_calls} U-Net calls, {result.seconds:.1f} s{notes}")
        except (ValueError, TypeError) as e:
            ui.status.value = f"<b>error:</b> {e}"
        finally:
            ui.button.disabled = False

    ui.button.on_click(generate)
    rows = [ui.prompt, ui.negative_prompt, w.HBox([ui.style, ui.sampler]), w.HBox([ui.steps, ui.guidance_scale])]
    if sources:
        rows.append(w.HBox([ui.source, ui.strength, ui.mask]))
    controls = w.VBox([*rows, w.HBox([ui.seed, ui.button])])
    ui.box = w.VBox([controls, w.HBox([ui.image, ui.status])])
    generate()
    return ui
