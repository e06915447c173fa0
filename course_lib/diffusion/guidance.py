"""Classifier-free guidance, negative prompts and style presets. Defined in notebook 09_text_conditioning.

Classifier-free guidance (Ho & Salimans 2022) runs the *same* network twice per step, once with the
prompt and once with the "unconditional" prompt (the empty prompt, or a negative prompt), and
pushes the prediction away from the second towards the first:

    eps = eps_uncond + s * (eps_cond - eps_uncond)

``s = 1`` is the plain conditional model, ``s = 0`` the unconditional one, ``s > 1`` exaggerates
whatever the prompt changes. A *negative prompt* simply takes the place of the empty prompt: the
sample is pushed away from it. The model is never asked "does the image match the prompt?"; the
prompt only enters the U-Net through cross-attention.

Style presets are prompt templates and nothing more (they come from Fooocus' style files): the
words are only as useful as the text encoder's knowledge of them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "StylePreset",
    "STYLES",
    "available_styles",
    "apply_style",
    "check_guidance_scale",
    "guided_model_fn",
]


@dataclass(frozen=True)
class StylePreset:
    """A prompt template (``{prompt}`` marks where the user's prompt goes) and a negative prompt.

    Supports notebook 09_text_conditioning.
    """

    name: str
    prompt: str = "{prompt}"
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if "{prompt}" not in self.prompt:
            raise ValueError(f"style {self.name!r}: its template must contain '{{prompt}}', got {self.prompt!r}")


STYLES: dict[str, StylePreset] = {s.name: s for s in (
    StylePreset("none"),
    StylePreset(
        "cinematic-default",
        "cinematic still {prompt} . emotional, harmonious, vignette, highly detailed, high budget, bokeh, "
        "cinemascope, moody, epic, gorgeous, film grain, grainy",
        "anime, cartoon, graphic, text, painting, crayon, graphite, abstract, glitch, deformed, mutated, ugly, "
        "disfigured"),
    StylePreset(
        "sai-fantasy art",
        "ethereal fantasy concept art of {prompt} . magnificent, celestial, ethereal, painterly, epic, majestic, "
        "magical, fantasy art, cover art, dreamy",
        "photographic, realistic, realism, 35mm film, dslr, cropped, frame, text, deformed, glitch, noise, noisy, "
        "off-center, cross-eyed, closed eyes, bad anatomy, ugly, disfigured, sloppy, duplicate, mutated, "
        "black and white"),
)}


def available_styles() -> list[str]:
    """Names of the style presets. Supports notebook 09_text_conditioning."""
    return list(STYLES)


def apply_style(prompt: str, negative_prompt: str = "", style: str | None = "none") -> tuple[str, str]:
    """``(prompt, negative_prompt)`` after applying a style preset, the way Fooocus does.

    The prompt goes into the template; the style's negative prompt is joined to the user's
    (``"user's, style's"``). ``None`` or ``"none"`` leaves both unchanged. An empty prompt stays
    empty (unconditional), whatever the style. Defined in notebook 09_text_conditioning.
    """
    if style is None:
        style = "none"
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; available styles: {', '.join(repr(s) for s in STYLES)}")
    preset = STYLES[style]
    if prompt.strip():
        prompt = preset.prompt.replace("{prompt}", prompt.strip())
    negatives = [n for n in (negative_prompt.strip(), preset.negative_prompt) if n]
    return prompt, ", ".join(negatives)


def check_guidance_scale(scale: float) -> float:
    """The guidance scale as a float, or a ``ValueError`` that says what it should be."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0 (0: unconditional, 1: no guidance, "
                         f"typical 3-8), got {scale!r}")
    return float(scale)


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_model_fn(unet: Callable[..., torch.Tensor], context: torch.Tensor, uncond_context: torch.Tensor,
                    guidance_scale: float, context_mask: torch.Tensor | None = None,
                    uncond_mask: torch.Tensor | None = None) -> ModelFn:
    """A ``model_fn(x, t)`` for any sampler: the U-Net's guided noise prediction.

    ``unet(x, t, context)`` predicts noise; ``context`` (B, L, D) embeds the prompts,
    ``uncond_context`` (B, L, D) the empty or negative prompts. With ``guidance_scale == 1`` the
    unconditional half is skipped (it would be multiplied by zero); otherwise both halves run as
    one batch of 2B, unconditional first, as diffusers does. ``context_mask``/``uncond_mask``
    (B, L): the tokens each prompt's cross-attention reads, for a U-Net trained with its padding
    masked; then ``unet(x, t, context, context_mask)`` is called. The same combination guides a
    rectified-flow model's velocity (SD 3, notebook 12). Defined in notebook 09_text_conditioning.
    """
    scale = check_guidance_scale(guidance_scale)
    if context.shape != uncond_context.shape:
        raise ValueError(f"context {tuple(context.shape)} and uncond_context {tuple(uncond_context.shape)} must "
                         "have the same shape: encode the prompts and the negative prompts the same way")
    if (context_mask is None) != (uncond_mask is None):
        raise ValueError("give both context_mask and uncond_mask, or neither: the two halves of guidance must "
                         "read their prompts the same way")
    if context_mask is None:
        def call(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            return unet(x, t, c)
    else:
        def call(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            return unet(x, t, c, m)
    if scale == 1.0:
        return lambda x, t: call(x, t, context, context_mask)
    both = torch.cat([uncond_context, context])                       # (2B, L, D)
    both_mask = None if context_mask is None else torch.cat([uncond_mask, context_mask])   # (2B, L)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = call(torch.cat([x, x]), torch.cat([t, t]), both, both_mask)
        eps_uncond, eps_cond = eps.chunk(2)                           # (2B, ...) -> 2 x (B, ...)
        return eps_uncond + scale * (eps_cond - eps_uncond)

    return model_fn
