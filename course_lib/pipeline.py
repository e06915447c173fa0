"""The text-to-image sampler: every part of the course joined. Defined in notebook 10_full_sampler.

    prompt --tokenizer--> (B, 77) ids --text encoder--> (B, 77, D) context
        (a model trained with ``mask_padding``: (B, L) ids of the longest prompt, (B, L, D) context
        and a (B, L) mask, so that the U-Net reads only the prompt's own tokens)
    seed --> (B, 4, h, w) Gaussian latents --sampler + U-Net + guidance--> clean latents
    clean latents / scale factor --decoder--> (B, 3, H, W) image

    pipe = load_shipped_pipeline()                 # or build_from_config("configs/shapeworld.yaml")
    out = pipe("a red circle above a blue square", sampler="dpm-solver++", steps=20, guidance_scale=4)
    out.images        # (N, 3, H, W) in [0, 1];  out.pil_images(), out.save("out.png")

The pipeline knows no data set and trains nothing: it takes a tokenizer, a text encoder, a
U-Net, an autoencoder and the noise schedule the U-Net was trained with. The same class runs the
course's ShapeWorld model and the public Stable Diffusion weights (notebook 11).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from .clip import CLIPTextEncoder
from .diffusion import check_prediction_type
from .guidance import apply_style, check_guidance_scale, guided_model_fn
from .samplers import available_samplers, sample
from .schedules import NoiseSchedule
from .tokenizer import CLIPStyleTokenizer
from .unet import UNet
from .vae import AutoencoderKL

__all__ = ["GenerationSettings", "GenerationResult", "TextToImagePipeline", "load_shipped_pipeline"]


@dataclass
class GenerationSettings:
    """How to sample, apart from the prompt. Defined in notebook 10_full_sampler.

    ``negative_prompt``: pushed away from by guidance ("" = the unconditional prompt);
    ``style``: a preset of ``guidance.STYLES``; ``sampler``/``steps``: any sampler of notebooks
    06-07; ``guidance_scale``: 0 unconditional, 1 no guidance, larger follows the prompt harder;
    ``seed``: image ``i`` of a call starts from the noise of ``seed + i``, so an image can be
    remade alone; ``images_per_prompt``: how many images each prompt gets.
    """

    negative_prompt: str = ""
    style: str = "none"
    sampler: str = "dpm-solver++"
    steps: int = 20
    guidance_scale: float = 4.0
    seed: int = 0
    images_per_prompt: int = 1

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise a ``ValueError`` that names the wrong setting and what it should be."""
        if self.sampler not in available_samplers():
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
    ``prediction_type``: what the U-Net was trained with. ``use_bf16`` runs the U-Net in bfloat16
    (its activations and weights; the sampler's arithmetic stays float32), as SD's
    ``use_bf16: True`` does. ``device``: where the networks run. ``sampler_options``: per sampler
name, keyword options for ``samplers.sample`` (notebook 11 passes a public checkpoint's scheduler
settings). ``mask_padding``: the U-Net was trained to read only each prompt's own tokens (start,
words, end) with the padding masked out of its cross-attention, as the course's ShapeWorld model
is; False (SD's way) feeds all 77 positions. Defined in notebook 10_full_sampler.
    """

    def __init__(self, tokenizer: CLIPStyleTokenizer, text_encoder: CLIPTextEncoder, unet: UNet,
                 vae: AutoencoderKL, schedule: NoiseSchedule, prediction_type: str = "epsilon", *,
                 use_bf16: bool = False, device: str | torch.device = "cpu",
                 sampler_options: dict[str, dict] | None = None, mask_padding: bool = False):
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
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.unet_dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.unet = unet.to(self.device, self.unet_dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.mask_padding = bool(mask_padding)
        # Per-sampler options for course_lib.samplers.sample (timestep spacing, ...), e.g. from
        # convert.sampler_options for a public checkpoint's scheduler config.
        self.sampler_options = {name: dict(opts) for name, opts in (sampler_options or {}).items()}

    @property
    def use_bf16(self) -> bool:
        return self.unet_dtype == torch.bfloat16

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one latent."""
        c = self.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

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
                 latents: torch.Tensor | None = None, show_progress: bool | None = None,
                 **overrides) -> GenerationResult:
        """Generate ``settings.images_per_prompt`` images for each prompt.

        ``settings`` fields can also be given directly (``pipe(p, steps=10, guidance_scale=5)``).
        ``latents`` (N, C, h, w) replaces the seeded starting noise. Defined in notebook 10_full_sampler.
        """
        unknown = sorted(set(overrides) - {f.name for f in fields(GenerationSettings)})
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; settings: "
                            f"{', '.join(f.name for f in fields(GenerationSettings))}")
        s = replace(settings or GenerationSettings(), **overrides)
        s.validate(self.schedule.num_train_timesteps)
        prompts = _as_list(prompt, "prompt")
        styled = [apply_style(p, s.negative_prompt, s.style) for p in prompts]
        prompts = [p for p, _ in styled for _ in range(s.images_per_prompt)]
        negatives = [n for _, n in styled for _ in range(s.images_per_prompt)]
        seeds = [s.seed + i for i in range(len(prompts))]
        start = time.perf_counter()

        # Prompts and negative prompts in one batch, so that both come out padded to the same length.
        both, both_mask = self.encode_prompt(prompts + negatives if s.guidance_scale != 1.0 else prompts)
        context, uncond = both[:len(prompts)], both[-len(prompts):]
        mask, uncond_mask = (None, None) if both_mask is None else (both_mask[:len(prompts)],
                                                                    both_mask[-len(prompts):])
        if latents is None:
            latents = self.initial_latents(seeds)
        elif tuple(latents.shape) != (len(prompts), *self.latent_shape):
            raise ValueError(f"latents must have shape {(len(prompts), *self.latent_shape)} (one per image), "
                             f"got {tuple(latents.shape)}")
        model_fn = guided_model_fn(self._unet_fn, context, uncond, s.guidance_scale, mask, uncond_mask)
        result = sample(model_fn, self.schedule, latents.to(self.device, torch.float32), s.sampler, s.steps,
                        prediction_type=self.prediction_type, generator=torch.Generator().manual_seed(s.seed),
                        show_progress=True if show_progress is None else show_progress,
                        model_schedule=getattr(self.unet, "training_schedule", None),
                        **self.sampler_options.get(s.sampler, {}))
        images = self.decode(result.sample)
        return GenerationResult(images=images.cpu(), latents=result.sample.cpu(), prompts=prompts,
                                negative_prompts=negatives, seeds=seeds, model_calls=result.model_calls,
                                seconds=time.perf_counter() - start)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]: divide by the scale factor, decode, map [-1, 1] to [0, 1]."""
        images = self.vae.decode(latents.float() / self.vae.config.scaling_factor)
        return ((images + 1) / 2).clamp(0, 1)


def load_shipped_pipeline(use_bf16: bool = False, device: str | torch.device = "cpu") -> TextToImagePipeline:
    """The course's ShapeWorld text-to-image model, built from ``configs/shapeworld-inference.yaml``
    with the shipped weights (checksums verified). Defined in notebook 10_full_sampler."""
    from .config import SHIPPED_CONFIG, build_from_config

    return build_from_config(SHIPPED_CONFIG, use_bf16=use_bf16, device=device)
