"""An interactive text-to-image generator for Jupyter (ipywidgets). Defined in notebook 10_full_sampler.

    from course_lib.widgets import make_generator
    ui = make_generator(pipe)      # the last line of a cell: shows the controls and the image
    ui.prompt.value = "two green squares"; ui.button.click()    # or drive it from code / tests

Every control maps to one field of ``GenerationSettings``; pressing *Generate* runs the pipeline
and shows the image, the prompt the text encoder saw and the time.
Errors (an over-long prompt, a bad setting) are shown in the output, not raised.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from .guidance import available_styles
from .pipeline import GenerationSettings, TextToImagePipeline
from .samplers import available_samplers

__all__ = ["GeneratorUI", "make_generator"]


@dataclass
class GeneratorUI:
    """The generator's widgets; ``box`` is what the notebook displays. Defined in notebook 10_full_sampler."""

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

    def settings(self) -> GenerationSettings:
        return GenerationSettings(negative_prompt=self.negative_prompt.value, style=self.style.value,
                                  sampler=self.sampler.value, steps=int(self.steps.value),
                                  guidance_scale=float(self.guidance_scale.value), seed=int(self.seed.value))

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)


def make_generator(pipe: TextToImagePipeline, prompt: str = "a red circle above a blue square",
                   upscale: int = 8) -> GeneratorUI:
    """Build the generator's controls for ``pipe``; ``upscale`` enlarges the small images for display.

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
        sampler=w.Dropdown(options=available_samplers(), value=d.sampler, description="sampler", style=style),
        steps=w.IntSlider(value=d.steps, min=1, max=100, description="steps", style=style),
        guidance_scale=w.FloatSlider(value=d.guidance_scale, min=0.0, max=15.0, step=0.5, description="guidance",
                                     style=style),
        seed=w.IntText(value=d.seed, description="seed", style=style),
        button=w.Button(description="Generate", button_style="primary"),
        image=w.Image(format="png", width=32 * upscale),
        status=w.HTML(value=""),
    )

    def generate(*_) -> None:
        ui.button.disabled = True
        ui.status.value = "generating ..."
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = pipe(ui.prompt.value, ui.settings(), show_progress=False)
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
    controls = w.VBox([ui.prompt, ui.negative_prompt, w.HBox([ui.style, ui.sampler]),
                       w.HBox([ui.steps, ui.guidance_scale]), w.HBox([ui.seed, ui.button])])
    ui.box = w.VBox([controls, w.HBox([ui.image, ui.status])])
    generate()
    return ui
