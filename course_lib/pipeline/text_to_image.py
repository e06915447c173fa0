"""The text-to-image sampler: every part of the course joined. Defined in notebook 10_full_sampler.

    prompt --tokenizer--> (B, 77) ids --text encoder--> (B, 77, D) context
        (a model trained with ``mask_padding``: (B, L) ids of the longest prompt, (B, L, D) context
        and a (B, L) mask, so that the U-Net reads only the prompt's own tokens)
    seed --> (B, 4, h, w) Gaussian latents --sampler + U-Net + guidance--> clean latents
    clean latents / scale factor --decoder--> (B, 3, H, W) image

    pipe = load_shipped_pipeline()                 # or build_from_config("configs/shapeworld.yaml")
    out = pipe("a red circle above a blue square", sampler="dpm-solver++", steps=20, guidance_scale=4)
    out.images        # (N, 3, H, W) in [0, 1];  out.pil_images(), out.save("out.png")

    # img2img (SDEdit) and inpainting with the same model (notebook 13_beyond_text_to_image):
    pipe("a green circle", init_image=image, strength=0.6)          # image (1, 3, H, W) in [0, 1]
    pipe("a green circle", init_image=image, mask=mask)              # mask (1, 1, H, W), 1 = repaint

The pipeline knows no data set and trains nothing: it takes a tokenizer, a text encoder, a
U-Net, an autoencoder and the noise schedule the U-Net was trained with. The same class runs the
course's ShapeWorld model and the public Stable Diffusion weights (notebook 11).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from course_lib.models.clip import CLIPTextEncoder
from course_lib.diffusion.forward import check_prediction_type, q_sample
from course_lib.diffusion.guidance import apply_style, check_guidance_scale, guided_model_fn
from course_lib.models.mmdit import MMDiT
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule, flow_interpolate
from course_lib.diffusion.samplers import FLOW_SAMPLERS, _randn_like, available_samplers, sample, sampler_timesteps
from course_lib.diffusion.schedules import NoiseSchedule
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.models.unet import UNet
from course_lib.models.vae import AutoencoderKL

__all__ = ["GenerationSettings", "GenerationResult", "TextToImagePipeline", "load_shipped_pipeline", "load_image",
           "img2img_steps", "SamplingStart"]


@dataclass
class GenerationSettings:
    """How to sample, apart from the prompt. Defined in notebook 10_full_sampler.

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
    """What the pipeline returns. Defined in notebook 10_full_sampler.

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


def _as_list(prompt: str | Sequence[str], what: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, Sequence) or not prompt or not all(isinstance(p, str) for p in prompt):
        raise TypeError(f"{what} must be a str or a non-empty list of str")
    return list(prompt)


class TextToImagePipeline:
    """Prompt -> tokens -> text embedding -> latent denoising with guidance -> image.

    ``tokenizer``/``text_encoder``: notebook 04's (or CLIP's); ``unet``: a conditional U-Net
    (notebook 03, ``cross_attention_dim`` = the text encoder's width); ``vae``: the autoencoder of
    notebook 08, whose ``config.scaling_factor`` scales the latents; ``schedule`` and
    ``prediction_type``: what the U-Net was trained with. The denoiser may also be notebook 12's ``MMDiT``
    (SD 3's transformer), and the model a rectified-flow one: ``schedule`` a ``FlowMatchSchedule`` and
    ``prediction_type="flow"``; its default sampler is then ``flow-euler``. ``use_bf16`` runs the U-Net in bfloat16
    (its activations and weights; the sampler's arithmetic stays float32), as SD's
    ``use_bf16: True`` does. ``device``: where the networks run. ``sampler_options``: per sampler
name, keyword options for ``samplers.sample`` (notebook 11 passes a public checkpoint's scheduler
settings). ``mask_padding``: the U-Net was trained to read only each prompt's own tokens (start,
words, end) with the padding masked out of its cross-attention, as the course's ShapeWorld model
is; False (SD's way) feeds all 77 positions. Defined in notebook 10_full_sampler.
    """

    def __init__(self, tokenizer: CLIPStyleTokenizer, text_encoder: CLIPTextEncoder, unet: UNet | MMDiT,
                 vae: AutoencoderKL, schedule: NoiseSchedule | FlowMatchSchedule, prediction_type: str = "epsilon", *,
                 use_bf16: bool = False, device: str | torch.device = "cpu",
                 sampler_options: dict[str, dict] | None = None, mask_padding: bool = False):
        if isinstance(schedule, FlowMatchSchedule) != (prediction_type == FLOW_PREDICTION):
            raise ValueError("a rectified-flow model needs both a FlowMatchSchedule and prediction_type='flow'; got "
                             f"{type(schedule).__name__} with prediction_type={prediction_type!r}")
        if prediction_type != FLOW_PREDICTION:
            check_prediction_type(prediction_type)
        if unet.config.cross_attention_dim is None:
            raise ValueError("the U-Net has no cross-attention (cross_attention_dim=None): it cannot read a prompt; "
                             "build it with cross_attention_dim = the text encoder's hidden size")
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise ValueError(f"the U-Net reads contexts of width {unet.config.cross_attention_dim} but the text "
                             f"encoder makes {text_encoder.config.hidden_size}: they were not trained together")
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the U-Net denoises {unet.config.in_channels} channels but the autoencoder's latents "
                             f"have {vae.config.latent_channels}: they were not trained together")
        if len(tokenizer) > text_encoder.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the text encoder only "
                             f"{text_encoder.config.vocab_size} embeddings: they do not belong together")
        if isinstance(unet, MMDiT) and not mask_padding:
            raise ValueError("the MMDiT takes its pooled text vector at each prompt's end token, which it finds "
                             "through the prompt mask: build the pipeline with mask_padding=True")
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.unet_dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.unet = unet.to(self.device, self.unet_dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.mask_padding = bool(mask_padding)
        # Per-sampler options for course_lib.diffusion.samplers.sample (timestep spacing, ...), e.g. from
        # convert.sampler_options for a public checkpoint's scheduler config.
        self.sampler_options = {name: dict(opts) for name, opts in (sampler_options or {}).items()}

    def with_checkpoint(self, checkpoint: object) -> TextToImagePipeline:
        """This pipeline's tokenizer, text encoder and autoencoder with the denoiser of ``checkpoint`` (a
        ``training.DiffusionCheckpoint``, e.g. ``load_diffusion_checkpoint("shapeworld_mmdit_flow")``), its
        schedule and prediction type, its prompts fed as its training record says (``mask_padding``).
        Defined in notebook 12_stable_diffusion_3."""
        training = checkpoint.meta.get("config", {}).get("training", {})
        return TextToImagePipeline(self.tokenizer, self.text_encoder, checkpoint.model, self.vae, checkpoint.schedule,
                                   checkpoint.prediction_type, use_bf16=self.use_bf16, device=self.device,
                                   mask_padding=bool(training.get("mask_padding", False)))

    @property
    def is_flow(self) -> bool:
        """True for a rectified-flow model (notebook 12): only the flow samplers run it."""
        return isinstance(self.schedule, FlowMatchSchedule)

    @property
    def samplers(self) -> list[str]:
        """The samplers that can run this model."""
        return available_samplers(flow=self.is_flow)

    @property
    def default_sampler(self) -> str:
        """What a ``GenerationSettings`` with ``sampler=None`` runs: DPM-Solver++, or flow Euler for a flow model."""
        return FLOW_SAMPLERS[0] if self.is_flow else "dpm-solver++"

    def settings(self, settings: GenerationSettings | None = None, **overrides) -> GenerationSettings:
        """``settings`` (or the defaults) with ``overrides``, checked, the sampler resolved to one that runs here."""
        unknown = sorted(set(overrides) - {f.name for f in fields(GenerationSettings)})
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; settings: "
                            f"{', '.join(f.name for f in fields(GenerationSettings))}")
        s = replace(settings or GenerationSettings(), **overrides)
        s.validate(self.schedule.num_train_timesteps)
        if s.sampler is None:
            s = replace(s, sampler=self.default_sampler)
        return s

    def noised(self, latents: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
        """Clean latents taken to the sampler's timestep ``t``: ``q_sample``, or for a flow model the point
        ``(1 - sigma) x0 + sigma noise`` at sigma = t / T (diffusers' ``scale_noise``)."""
        if self.is_flow:
            return flow_interpolate(latents, noise, t / self.schedule.num_train_timesteps)
        return q_sample(latents, int(t), noise, self.schedule)

    @property
    def use_bf16(self) -> bool:
        return self.unet_dtype == torch.bfloat16

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one latent."""
        c = self.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    @property
    def image_size(self) -> int:
        """Height (= width) of the images the pipeline makes and takes (img2img, inpainting)."""
        return self.unet.config.sample_size * self.vae.config.downsample_factor

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings and their mask: ``(B, 77, D)`` and None, padded to the context as SD does;
        with ``mask_padding``, ``(B, L, D)`` and a ``(B, L)`` mask, L the longest prompt's tokens
        (the text encoder is causal, so a prompt's states do not depend on the padding after it).
        The empty prompt is the unconditional one. A prompt over the context is truncated with a
        warning naming the dropped words. Defined in notebook 10_full_sampler."""
        padding = "longest" if self.mask_padding else "max_length"
        ids, mask = self.tokenizer(list(prompts), padding=padding, return_attention_mask=True)   # (B, L)
        context = self.text_encoder(ids.to(self.device)).last_hidden_state        # (B, L) -> (B, L, D)
        return context, (mask.to(self.device) if self.mask_padding else None)

    def initial_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """One Gaussian latent per seed, (B, C, h, w), each from its own generator (so it can be remade alone)."""
        return torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(s))
                            for s in seeds]).to(self.device)

    def _unet_fn(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 context_mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.unet_dtype
        return self.unet(x.to(dtype), t, context.to(dtype), context_mask).float()

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], settings: GenerationSettings | None = None, *,
                 init_image: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 latents: torch.Tensor | None = None, show_progress: bool | None = None,
                 **overrides) -> GenerationResult:
        """Generate ``settings.images_per_prompt`` images for each prompt.

        ``settings`` fields can also be given directly (``pipe(p, steps=10, guidance_scale=5)``).
        ``latents`` (N, C, h, w) replaces the seeded starting noise. Defined in notebook 10_full_sampler.
        ``init_image`` (1 or one per prompt, 3, H, W) in [0, 1]: img2img (SDEdit), the image noised to
        the step that ``strength`` selects and denoised from there; with ``mask`` (same count, 1, H, W)
        in [0, 1], 1 = repaint: inpainting, the known region blended back after every step. See
        ``img2img_start``. Defined in notebook 13_beyond_text_to_image.
        """
        s = self.settings(settings, **overrides)
        prompts = _as_list(prompt, "prompt")
        styled = [apply_style(p, s.negative_prompt, s.style) for p in prompts]
        prompts = [p for p, _ in styled for _ in range(s.images_per_prompt)]
        negatives = [n for _, n in styled for _ in range(s.images_per_prompt)]
        seeds = [s.seed + i for i in range(len(prompts))]
        if latents is not None and tuple(latents.shape) != (len(prompts), *self.latent_shape):
            raise ValueError(f"latents must have shape {(len(prompts), *self.latent_shape)} (one per image), "
                             f"got {tuple(latents.shape)}")
        start = time.perf_counter()

        begin = self._start(s, seeds, len(styled), init_image, mask, latents)
        if begin.start_step == s.steps:                  # strength 0: nothing to denoise
            final, calls = begin.latents, 0
        else:
            # Prompts and negative prompts in one batch, so that both come out padded to the same length.
            both, both_mask = self.encode_prompt(prompts + negatives if s.guidance_scale != 1.0 else prompts)
            context, uncond = both[:len(prompts)], both[-len(prompts):]
            cmask, uncond_mask = (None, None) if both_mask is None else (both_mask[:len(prompts)],
                                                                         both_mask[-len(prompts):])
            model_fn = guided_model_fn(self._unet_fn, context, uncond, s.guidance_scale, cmask, uncond_mask)
            result = sample(model_fn, self.schedule, begin.latents.to(self.device, torch.float32), s.sampler,
                            s.steps, prediction_type=self.prediction_type, generator=begin.generator,
                            show_progress=True if show_progress is None else show_progress,
                            model_schedule=getattr(self.unet, "training_schedule", None),
                            start_step=begin.start_step, after_step=begin.after_step,
                            **self.sampler_options.get(s.sampler, {}))
            final, calls = result.sample, result.model_calls
        images = self.decode(final)
        return GenerationResult(images=images.cpu(), latents=final.cpu(), prompts=prompts,
                                negative_prompts=negatives, seeds=seeds, model_calls=calls,
                                seconds=time.perf_counter() - start)

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
        runs no step otherwise is an error. Defined in notebook 13_beyond_text_to_image.
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

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]: divide by the scale factor, decode, map [-1, 1] to [0, 1]."""
        images = self.vae.decode(latents.float() / self.vae.config.scaling_factor)
        return ((images + 1) / 2).clamp(0, 1)


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


def load_shipped_pipeline(use_bf16: bool = False, device: str | torch.device = "cpu") -> TextToImagePipeline:
    """The course's ShapeWorld text-to-image model, built from ``configs/shapeworld-inference.yaml``
    with the shipped weights (checksums verified). Defined in notebook 10_full_sampler."""
    from course_lib.pipeline.config import SHIPPED_CONFIG, build_from_config

    return build_from_config(SHIPPED_CONFIG, use_bf16=use_bf16, device=device)
