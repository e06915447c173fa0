"""Editing images with a text-to-image model: img2img (SDEdit) and inpainting.

Defined in notebook 13_beyond_text_to_image.

``ImageEditing`` holds the methods ``TextToImagePipeline`` uses when it is given an ``init_image``
(and a ``mask``): encode the image, noise it to the step that ``strength`` selects
(``img2img_steps``), and for inpainting blend the known region back after every step
(``SamplingStart`` says where sampling starts). ``load_image`` reads an image file as a tensor.
Everything follows diffusers' ``StableDiffusionImg2ImgPipeline`` and ``StableDiffusionInpaintPipeline``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from course_lib.diffusion.denoiser import _randn_like
from course_lib.diffusion.samplers import sampler_timesteps
from course_lib.pipeline.settings import GenerationSettings

__all__ = ["img2img_steps", "load_image", "SamplingStart", "ImageEditing", "IMG2IMG_SAMPLERS"]


def img2img_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` steps img2img runs at ``strength``: diffusers' ``get_timesteps``,
    ``min(int(steps * strength), steps)`` (float rounding included: ``int(100 * 0.29)`` is 28); the
    first of them is step ``steps - img2img_steps(...)`` of the sampler's grid. Defined in notebook
    13_beyond_text_to_image."""
    return min(int(steps * strength), steps)


def load_image(path: str | Path, mode: str = "RGB", size: int | None = None) -> torch.Tensor:
    """An image file (PNG, JPEG, ...) as a (1, C, H, W) float tensor in [0, 1]: ``mode="RGB"`` (C = 3;
    grey and RGBA files are converted, alpha dropped) or ``"L"`` (C = 1, for a mask). ``size``: the
    size the model makes; another size is an error that says how to resize. Defined in notebook
    13_beyond_text_to_image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image file {str(path)!r}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not an image PIL can read (PNG, JPEG, ...): {err}") from None
    if size is not None and img.size != (size, size):
        raise ValueError(f"{str(path)!r} is {img.size[0]}x{img.size[1]} pixels but the model makes {size}x{size} "
                         f"images; resize or crop it to {size}x{size} first (e.g. PIL's "
                         f"img.resize(({size}, {size})))")
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    channels = len(img.getbands())
    return (data.reshape(img.size[1], img.size[0], channels).permute(2, 0, 1)[None].float() / 255)  # (1, C, H, W)


class SamplingStart(NamedTuple):
    """Where sampling starts: the latents, the first step of the sampler's grid to run, the inpainting
    blend (``sample``'s ``after_step``) and the generator(s) of the sampler's noise. Defined in notebook
    13_beyond_text_to_image."""

    latents: torch.Tensor
    start_step: int
    after_step: Callable[[torch.Tensor, int | None], torch.Tensor] | None
    generator: torch.Generator | list[torch.Generator]


class ImageEditing:
    """The img2img and inpainting half of ``TextToImagePipeline`` (notebook 13_beyond_text_to_image).

    A mixin: it uses the pipeline's ``vae``, ``device``, ``schedule``, ``sampler_options``,
    ``settings``, ``noised``, ``initial_latents``, ``latent_shape`` and ``image_size``.
    """

    @torch.no_grad()
    def encode(self, images: torch.Tensor,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> scaled latents (N, C, h, w): the autoencoder's posterior
        mean, or with ``generator`` (one, or a list with one per image) the sample mean + std * noise,
        as diffusers' img2img does (``retrieve_latents(..., sample_mode="sample")``), times the scale
        factor. Defined in notebook 13_beyond_text_to_image."""
        images = self._check_image(images, "images")
        posterior = self.vae.encode(images.to(self.device, torch.float32) * 2 - 1)  # (N, 3, H, W) -> (N, C, h, w)
        z = posterior.mean
        if generator is not None:
            z = z + posterior.std * _randn_like(z, generator)
        return z * self.vae.config.scaling_factor

    def _start(self, s: GenerationSettings, seeds: list[int], num_prompts: int, init_image: torch.Tensor | None,
               mask: torch.Tensor | None, latents: torch.Tensor | None) -> SamplingStart:
        """Text to image: the seeded noise (or ``latents``) at step 0; else ``img2img_start``."""
        if init_image is None:
            if mask is not None:
                raise ValueError("a mask needs the image it masks: pass init_image= (inpainting repaints the "
                                 "mask's region of that image)")
            if s.strength is not None:
                raise ValueError("strength applies to img2img and inpainting: pass init_image= as well, or "
                                 "leave strength unset for text to image")
            return SamplingStart(self.initial_latents(seeds) if latents is None else latents, 0, None,
                          torch.Generator().manual_seed(s.seed))
        images = _per_image(self._check_image(init_image, "init_image"), num_prompts, s.images_per_prompt,
                            "init_image")                                    # (N, 3, H, W), one per image
        if mask is not None:
            mask = _per_image(self._check_mask(mask, images.shape[-1]), num_prompts, s.images_per_prompt, "mask")
        return self.img2img_start(images, s, seeds, mask=mask, noise=latents)

    def img2img_start(self, images: torch.Tensor, settings: GenerationSettings, seeds: Sequence[int], *,
                      mask: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> SamplingStart:
        """Where img2img and inpainting start, exactly as diffusers' ``StableDiffusionImg2ImgPipeline``
        and ``StableDiffusionInpaintPipeline`` (4-channel U-Net) with ``generator=[torch.Generator()
        .manual_seed(seed) for seed in seeds]``: image i's generator draws its posterior sample, then its
        noise (unless ``noise`` is given), then the sampler's noise (DDPM). (diffusers' inpainting also
        draws once more, to encode the masked image a 4-channel U-Net never reads, unless it is given
        ``masked_image_latents``; so with DDPM its noise equals the course's only then.)

        ``images`` (N, 3, H, W) in [0, 1], ``mask`` (N, 1, H, W), both checked. ``k = img2img_steps(steps,
        strength)`` steps run, from grid step ``steps - k`` (``sampler_timesteps``), where the latents are
        ``q_sample(encoded image, t, noise)``; inpainting at strength 1 starts from the pure noise
        instead (diffusers' ``is_strength_max``). Inpainting blends after every step:
        ``latents = (1 - m) * q_sample(encoded image, t_next, noise) + m * latents`` (the clean encoded
        image after the last step), ``m`` the mask binarized at 0.5 and shrunk to the latent size
        by nearest-neighbour interpolation, as diffusers' ``mask_processor`` and ``prepare_mask_latents``.
        Strength 0 returns start step ``steps`` (nothing to run: the reconstruction); a strength that
        runs no step otherwise is an error. Not built in a notebook.
        """
        s = self.settings(settings)
        strength = s.strength if s.strength is not None else (0.8 if mask is None else 1.0)
        run = img2img_steps(s.steps, strength)
        if run == 0 and strength > 0:
            raise ValueError(f"strength={strength} with steps={s.steps} runs int({s.steps} * {strength}) = 0 steps "
                             f"(diffusers' rule); use strength >= {math.ceil(1000 / s.steps) / 1000:g} "
                             "(at least 1/steps) or more steps, or "
                             "strength=0 for the autoencoder's reconstruction of the init image")
        options = self.sampler_options.get(s.sampler, {})
        if s.sampler == "plms" and run < s.steps:
            raise ValueError("plms runs img2img and inpainting only at strength 1 (every step): diffusers' "
                             "PNDMScheduler, which the course's PLMS equals, cuts its timestep list [901, 801, 801, "
                             "701, ...] part way, so its U-Net sees timesteps one step off the latents' noise; "
                             f"use one of {', '.join(IMG2IMG_SAMPLERS)}")
        if options.get("use_karras_sigmas"):
            raise ValueError(f"img2img with Karras sigmas ({s.sampler} with use_karras_sigmas) is not implemented; "
                             "use a sampler without use_karras_sigmas")
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        image_latents = self.encode(images, generators)                  # (N, 3, H, W) -> (N, C, h, w)
        if noise is None:
            noise = _randn_like(image_latents, generators)
        noise = noise.to(self.device, torch.float32)
        start_step = s.steps - run
        if run == 0:
            return SamplingStart(image_latents, start_step, None, generators)
        t_start = sampler_timesteps(s.sampler, self.schedule, s.steps, **options)[start_step]
        if mask is not None and strength == 1:
            latents = noise
        else:
            latents = self.noised(image_latents, t_start, noise)
        if mask is None:
            return SamplingStart(latents, start_step, None, generators)

        repaint = self.latent_mask(mask)                                # (N, 1, H, W) -> (N, 1, h, w)

        def blend(x: torch.Tensor, t_next: float | None) -> torch.Tensor:
            known = image_latents if t_next is None else self.noised(image_latents, t_next, noise)
            return (1 - repaint) * known + repaint * x

        return SamplingStart(latents, start_step, blend, generators)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The region inpainting repaints, on the latent grid: ``mask`` (N, 1, H, W) binarized at 0.5 and
        shrunk to (N, 1, h, w) by nearest-neighbour interpolation, as diffusers' ``mask_processor`` and
        ``prepare_mask_latents``. Defined in notebook 13_beyond_text_to_image."""
        return F.interpolate((mask >= 0.5).float(), size=self.latent_shape[1:]).to(self.device)

    def _check_image(self, image: object, what: str) -> torch.Tensor:
        """An (N, 3, H, W) float image batch in [0, 1] of the model's size, or an error saying what to do."""
        size = self.image_size
        want = f"a float tensor (N, 3, {size}, {size}) with values in [0, 1]"
        if not torch.is_tensor(image):
            raise TypeError(f"{what} must be {want}, got {type(image).__name__}; load a file with "
                            "course_lib.pipeline.text_to_image.load_image(path)")
        if not torch.is_floating_point(image):
            raise TypeError(f"{what} must be {want}, got dtype {image.dtype}; for 0..255 pixels use x.float() / 255")
        if image.ndim == 3:
            raise ValueError(f"{what} must be {want}, got shape {tuple(image.shape)}; add the batch axis: x[None]")
        if image.ndim != 4 or image.shape[0] < 1:
            raise ValueError(f"{what} must be {want}, got shape {tuple(image.shape)}")
        channels = image.shape[1]
        if channels != 3:
            hint = {1: "it is grey (1 channel): repeat it to RGB with x.expand(-1, 3, -1, -1)",
                    4: "it is RGBA (4 channels): drop the alpha with x[:, :3] or composite it on a background"}
            raise ValueError(f"{what} must be {want}; {hint.get(channels, f'it has {channels} channels')}")
        if tuple(image.shape[-2:]) != (size, size):
            h, w = image.shape[-2:]
            raise ValueError(f"{what} is {h}x{w} but the model makes {size}x{size} images; resize it, e.g. "
                             f"torch.nn.functional.interpolate(x, size=({size}, {size}), mode='bilinear', "
                             "antialias=True), or crop it")
        _check_unit_range(image, what)
        return image

    def _check_mask(self, mask: object, size: int) -> torch.Tensor:
        """An (N, 1, H, W) float mask in [0, 1] of the init image's size (1 = repaint)."""
        want = f"a tensor (N, 1, {size}, {size}) with values in [0, 1] (1 = repaint)"
        if not torch.is_tensor(mask):
            raise TypeError(f"mask must be {want}, got {type(mask).__name__}; load a file with "
                            "course_lib.pipeline.text_to_image.load_image(path, mode='L')")
        if mask.dtype == torch.bool:
            mask = mask.float()
        if not torch.is_floating_point(mask):
            raise TypeError(f"mask must be {want}, got dtype {mask.dtype}; for 0..255 values use m.float() / 255")
        if mask.ndim != 4 or mask.shape[0] < 1 or mask.shape[1] != 1:
            hint = ("; add batch and channel axes: m[None, None]" if mask.ndim == 2 else
                    "; add the batch axis: m[None]" if mask.ndim == 3 and mask.shape[0] == 1 else
                    "; keep one channel: m[:, :1]" if mask.ndim == 4 else "")
            raise ValueError(f"mask must be {want}, got shape {tuple(mask.shape)}{hint}")
        if tuple(mask.shape[-2:]) != (size, size):
            h, w = mask.shape[-2:]
            raise ValueError(f"mask is {h}x{w} but the init image is {size}x{size}; make a mask of the image's size")
        _check_unit_range(mask, "mask")
        return mask


IMG2IMG_SAMPLERS = ("ddim", "ddpm", "dpm-solver", "dpm-solver++")   # plms only at strength 1


def _check_unit_range(x: torch.Tensor, what: str) -> None:
    lo, hi = x.min().item(), x.max().item()
    if not (0 <= lo and hi <= 1):
        raise ValueError(f"{what} values must be in [0, 1], got {lo:.3g} to {hi:.3g}; for an image in [-1, 1] "
                         "use (x + 1) / 2, for 0..255 use x / 255")


def _per_image(x: torch.Tensor, num_prompts: int, per_prompt: int, what: str) -> torch.Tensor:
    """(1 or num_prompts, ...) -> (num_prompts * per_prompt, ...): one per generated image."""
    if x.shape[0] == 1:
        return x.expand(num_prompts * per_prompt, *x.shape[1:])
    if x.shape[0] != num_prompts:
        raise ValueError(f"{what} holds {x.shape[0]} images for {num_prompts} prompt(s): pass one, or one per prompt")
    return x.repeat_interleave(per_prompt, dim=0)
