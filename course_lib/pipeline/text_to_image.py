"""The text-to-image sampler: every part of the course joined. Defined in notebook 09_text_conditioning.

    prompt --tokenizer--> (B, 77) ids --text encoder--> (B, 77, D) context
        (a model trained with ``mask_padding``: (B, L) ids of the longest prompt, (B, L, D) context
        and a (B, L) mask, so that the U-Net reads only the prompt's own tokens)
    seed --> (B, 4, h, w) Gaussian latents --sampler + U-Net + guidance--> clean latents
    clean latents / scale factor --decoder--> (B, 3, H, W) image

    pipe = load_shipped_pipeline()                 # pipeline.shipped; or config.build_from_config(...)
    out = pipe("a red circle above a blue square", sampler="dpm-solver++", steps=20, guidance_scale=4)
    out.images        # (N, 3, H, W) in [0, 1];  out.pil_images(), out.save("out.png")

    # img2img (SDEdit) and inpainting with the same model (notebook 13_beyond_text_to_image):
    pipe("a green circle", init_image=image, strength=0.6)          # image (1, 3, H, W) in [0, 1]
    pipe("a green circle", init_image=image, mask=mask)              # mask (1, 1, H, W), 1 = repaint

The pipeline knows no data set and trains nothing: it takes a tokenizer, a text encoder, a
U-Net, an autoencoder and the noise schedule the U-Net was trained with. The same class runs the
course's ShapeWorld model and the public Stable Diffusion weights (notebook 11).

The settings and the result are in ``settings`` (``GenerationSettings``, ``GenerationResult``), the
img2img and inpainting steps in ``editing`` (``load_image``, ``img2img_steps``, ...), both importable
from here; the shipped model is built by ``course_lib.pipeline.shipped.load_shipped_pipeline``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import fields, replace

import torch

from course_lib.diffusion.forward import check_prediction_type, q_sample
from course_lib.diffusion.guidance import apply_style, guided_model_fn
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule, flow_interpolate
from course_lib.diffusion.samplers import FLOW_SAMPLERS, available_samplers, sample
from course_lib.diffusion.schedules import NoiseSchedule
from course_lib.models.clip import CLIPTextEncoder
from course_lib.models.mmdit import MMDiT
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.models.unet import UNet
from course_lib.models.vae import AutoencoderKL
from course_lib.pipeline.editing import IMG2IMG_SAMPLERS, ImageEditing, SamplingStart, img2img_steps, load_image
from course_lib.pipeline.settings import GenerationResult, GenerationSettings

__all__ = ["GenerationSettings", "GenerationResult", "TextToImagePipeline", "load_image", "img2img_steps",
           "SamplingStart", "IMG2IMG_SAMPLERS"]


def _as_list(prompt: str | Sequence[str], what: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, Sequence) or not prompt or not all(isinstance(p, str) for p in prompt):
        raise TypeError(f"{what} must be a str or a non-empty list of str")
    return list(prompt)


class TextToImagePipeline(ImageEditing):
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
        ``img2img_start`` (notebook 13_beyond_text_to_image).
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
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]: divide by the scale factor, decode, map [-1, 1] to [0, 1]."""
        images = self.vae.decode(latents.float() / self.vae.config.scaling_factor)
        return ((images + 1) / 2).clamp(0, 1)
