"""What a pipeline call is asked for and what it returns.

Part of notebook 10_full_sampler's pipeline.

``GenerationSettings``: everything about sampling apart from the prompt (negative prompt, style,
sampler, steps, guidance scale, seed, images per prompt, img2img strength), checked by ``validate``;
``GenerationResult``: the images with the prompts, seeds and model calls that made them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.diffusion.guidance import apply_style, check_guidance_scale
from course_lib.diffusion.samplers import available_samplers

__all__ = ["GenerationSettings", "GenerationResult"]


@dataclass
class GenerationSettings:
    """How to sample, apart from the prompt. Supports notebook 10_full_sampler.

    ``negative_prompt``: pushed away from by guidance ("" = the unconditional prompt);
    ``style``: a preset of ``guidance.STYLES``; ``sampler``/``steps``: any sampler of notebooks
    06-07 (None: the pipeline's default, ``dpm-solver++``; a rectified-flow model's is ``flow-euler``);
    ``guidance_scale``: 0 unconditional, 1 no guidance, larger follows the prompt harder;
    ``seed``: image ``i`` of a call starts from the noise of ``seed + i``, so an image can be
    remade alone; ``images_per_prompt``: how many images each prompt gets.
    ``strength`` (img2img and inpainting, notebook 13_beyond_text_to_image): how much of the sampler's
    grid runs on the noised init image, as diffusers: ``int(steps * strength)`` steps, from the grid's
    timestep ``steps - int(steps * strength)``; 0 returns the autoencoder's reconstruction, 1 runs
    every step. None: 0.8 for img2img, 1.0 for inpainting (diffusers' defaults).
    """

    negative_prompt: str = ""
    style: str = "none"
    sampler: str | None = None
    steps: int = 20
    guidance_scale: float = 4.0
    seed: int = 0
    images_per_prompt: int = 1
    strength: float | None = None

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise a ``ValueError`` that names the wrong setting and what it should be."""
        if self.sampler is not None and self.sampler not in available_samplers():
            raise ValueError(f"unknown sampler {self.sampler!r}; available samplers: {', '.join(available_samplers())}")
        steps = self.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
            raise ValueError(f"steps must be an int from 1 to {num_train_timesteps}, got {self.steps!r}")
        check_guidance_scale(self.guidance_scale)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if isinstance(self.images_per_prompt, bool) or not isinstance(self.images_per_prompt, int) \
                or self.images_per_prompt < 1:
            raise ValueError(f"images_per_prompt must be an int >= 1, got {self.images_per_prompt!r}")
        if not isinstance(self.negative_prompt, str):
            raise TypeError(f"negative_prompt must be a str, got {type(self.negative_prompt).__name__}")
        apply_style("", "", self.style)  # raises for an unknown style
        st = self.strength
        if st is not None and (isinstance(st, bool) or not isinstance(st, numbers.Real) or not 0 <= st <= 1):
            raise ValueError(f"strength must be a number from 0 to 1 (0 keeps the init image, 1 repaints it "
                             f"from the first timestep), got {st!r}")


@dataclass
class GenerationResult:
    """What the pipeline returns. Supports notebook 10_full_sampler.

    ``images`` (N, 3, H, W) float in [0, 1], on the CPU; ``latents`` the final latents (before
    decoding); ``prompts``/``negative_prompts`` as sent to the text encoder (styles applied);
    ``seeds`` per image; ``model_calls`` U-Net evaluations per image batch (guidance runs the
    conditional and unconditional halves as one call); ``seconds`` wall-clock time.
    """

    images: torch.Tensor
    latents: torch.Tensor
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    model_calls: int
    seconds: float

    def pil_images(self) -> list:
        """The images as ``PIL.Image`` objects."""
        from torchvision.transforms.functional import to_pil_image

        return [to_pil_image(img) for img in self.images]

    def save(self, path: str | Path, nrow: int | None = None) -> Path:
        """Save the images to ``path`` (one image, or a grid of all of them; PNG, JPEG, ...)."""
        from torchvision.utils import save_image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(self.images, path, nrow=nrow or min(len(self.images), 8), padding=2 if len(self.images) > 1 else 0)
        return path
