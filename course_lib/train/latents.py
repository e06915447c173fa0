"""Using the course's KL autoencoder: images to latents and back, reconstructions and their measurements.

Defined in notebook 08_latent_autoencoder. The network lives in ``course_lib.models.vae``; this
module loads the shipped one (``data/shapeworld_vae.*``, made by ``scripts/train_autoencoder.py``
with ``course_lib.train.autoencoder``), encodes images to the scaled latents a latent diffusion
model is trained on and decodes them back, and measures reconstructions (PSNR, a Frechet distance
with its floor, prompt adherence) and the scale factor.

    vae = load_shipped_autoencoder()                    # data/shapeworld_vae.*
    z = encode_latents(vae, images)                     # (N, 3, 32, 32) -> (N, 4, 8, 8), scaled to unit std
    images = decode_latents(vae, z)                     # and back
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from course_lib.core.checkpoints import load_checkpoint, load_weights
from course_lib.models.vae import AutoencoderConfig, AutoencoderKL, compute_scale_factor
from course_lib.worlds.shapeworld import ShapeWorld

__all__ = ["SHIPPED_VAE", "SHIPPED_VAE_CONFIG", "TRAIN_SEED_OFFSET", "reconstruct", "psnr", "encode_latents",
           "decode_latents", "ReconstructionReport", "evaluate_reconstructions", "load_shipped_autoencoder",
           "shipped_autoencoder_metrics", "measure_scale_factor"]

SHIPPED_VAE = "shapeworld_vae"
# The shipped autoencoder's sizes: 32x32x3 -> 8x8x4 (12x fewer numbers; SD: 512x512x3 -> 64x64x4, 48x).
# A narrow first level keeps the 32x32 convolutions cheap, which is where most of the time goes.
SHIPPED_VAE_CONFIG = AutoencoderConfig(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4,
                                       norm_num_groups=8)
# Training draws ShapeWorld seeds from TRAIN_SEED_OFFSET up, so evaluations with seeds below it use
# images the autoencoder never saw.
TRAIN_SEED_OFFSET = 1_000_000



@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256,
                sample_posterior: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode and decode ``images`` (N, C, H, W) in [-1, 1]; returns reconstructions clamped to [-1, 1].

    Uses the posterior's mean unless ``sample_posterior=True``. Output on the images' device.
    Defined in notebook 08_latent_autoencoder.
    """
    _check_batch(images)
    param = next(vae.parameters())
    vae.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].to(device=param.device, dtype=param.dtype)
        posterior = vae.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        out.append(vae.decode(z).clamp(-1, 1).to(images.device, images.dtype))
    return torch.cat(out)


def psnr(images: torch.Tensor, reconstructions: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(data_range^2 / MSE)``; shape (N,).

    ``data_range=2`` for images in [-1, 1] (the same value as for [0, 1] images with range 1).
    A perfect copy gives ``inf``. Defined in notebook 08_latent_autoencoder.
    """
    if images.shape != reconstructions.shape:
        raise ValueError(f"images {tuple(images.shape)} and reconstructions {tuple(reconstructions.shape)} "
                         "must have the same shape")
    mse = (images.float() - reconstructions.float()).pow(2).flatten(1).mean(dim=1)  # (N, C, H, W) -> (N,)
    return 10 * torch.log10(data_range**2 / mse)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, scale: bool = True, sample_posterior: bool = False,
                   batch_size: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents of ``images`` (N, C, H, W) -> (N, latent_channels, H/f, W/f), multiplied by
    ``vae.config.scaling_factor`` when ``scale`` (what a latent diffusion model is trained on).

    Uses the posterior's mean unless ``sample_posterior=True`` (SD's training samples it).
    Defined in notebook 08_latent_autoencoder.
    """
    _check_batch(images)
    param = next(vae.parameters())
    vae.eval()
    out = []
    for s in range(0, len(images), batch_size):
        posterior = vae.encode(images[s:s + batch_size].to(device=param.device, dtype=param.dtype))
        out.append(posterior.sample(generator) if sample_posterior else posterior.mode())
    z = torch.cat(out)
    return z * vae.config.scaling_factor if scale else z


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, scaled: bool = True, batch_size: int = 256
                   ) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] from latents; divides by ``vae.config.scaling_factor`` first when
    ``scaled`` (the latents came from a diffusion model). Defined in notebook 08_latent_autoencoder.
    """
    if not torch.is_tensor(latents) or latents.ndim != 4:
        raise ValueError(f"latents must be a tensor (N, C, h, w), got "
                         f"{tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__}")
    param = next(vae.parameters())
    vae.eval()
    z = latents / vae.config.scaling_factor if scaled else latents
    out = [vae.decode(z[s:s + batch_size].to(device=param.device, dtype=param.dtype)).clamp(-1, 1)
           for s in range(0, len(z), batch_size)]
    return torch.cat(out).to(latents.device)


@dataclass
class ReconstructionReport:
    """How well an autoencoder reconstructs a set of ShapeWorld images. Supports notebook 08_latent_autoencoder.

    ``psnr``: mean per-image PSNR (dB). ``frechet``: Frechet distance of the reconstructions' features
    from a reference set of real images, beside ``frechet_floor``, that of the originals themselves
    (the best a perfect autoencoder could score). ``adherence`` / ``adherence_originals``: overall
    GenEval-style prompt adherence of the reconstructions and of the originals to the captions;
    ``exact`` / ``exact_originals`` the share with every claim right.
    """

    psnr: float
    frechet: float
    frechet_floor: float
    adherence: float
    adherence_originals: float
    exact: float
    exact_originals: float
    n: int

    def as_row(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) if isinstance(v, float) else v for k, v in asdict(self).items()}


def evaluate_reconstructions(vae: AutoencoderKL, n: int = 1000, seed: int = 4242, split: str = "train",
                             reference: torch.Tensor | None = None, world: ShapeWorld | None = None
                             ) -> ReconstructionReport:
    """Reconstruct ``n`` fresh ShapeWorld images of ``split`` and measure them (see ``ReconstructionReport``).

    ``reference``: features of real images for the Frechet distance (default: 2,000 fresh images of
    ``split`` through ``shapeworld_features``). Needs the shipped attribute network. ``seed`` must be
    below ``TRAIN_SEED_OFFSET`` so that the images are not training images.
    Defined in notebook 08_latent_autoencoder.
    """
    from course_lib.evaluate.adherence import score_adherence
    from course_lib.evaluate.classifiers import shapeworld_features
    from course_lib.evaluate.metrics import frechet_distance

    if not 0 <= seed < TRAIN_SEED_OFFSET - 1:
        raise ValueError(f"seed must be in [0, {TRAIN_SEED_OFFSET - 1}) so that the images are not training "
                         f"images, got {seed}")
    world = world or ShapeWorld()
    batch = world.sample(n, seed=seed, split=split)
    x = batch.tensors()
    recon = reconstruct(vae, x)
    if reference is None:
        reference = shapeworld_features(world.sample(2000, seed=seed + 1, split=split).tensors())
    orig_adh, rec_adh = score_adherence(x, batch.captions), score_adherence(recon, batch.captions)
    return ReconstructionReport(
        psnr=float(psnr(x, recon).mean()),
        frechet=frechet_distance(reference, shapeworld_features(recon)),
        frechet_floor=frechet_distance(reference, shapeworld_features(x)),
        adherence=rec_adh.overall, adherence_originals=orig_adh.overall,
        exact=rec_adh.exact, exact_originals=orig_adh.exact, n=n)


def load_shipped_autoencoder(map_location: str | torch.device = "cpu") -> AutoencoderKL:
    """The shipped ShapeWorld autoencoder (``data/shapeworld_vae.*``, made by ``scripts/train_autoencoder.py``).

    Its ``config.scaling_factor`` is the scale factor measured after training. Returns it in eval mode.
    Defined in notebook 08_latent_autoencoder.
    """
    return load_checkpoint(SHIPPED_VAE, AutoencoderKL, map_location=map_location)


def shipped_autoencoder_metrics() -> dict[str, Any]:
    """What ``scripts/train_autoencoder.py`` measured for the shipped autoencoder, and its command.

    Defined in notebook 08_latent_autoencoder.
    """
    _, meta = load_weights(SHIPPED_VAE)
    return {**meta["metrics"], "command": meta["command"]}


def measure_scale_factor(vae: AutoencoderKL, n: int = 2048, seed: int = 0, split: str = "train") -> float:
    """``compute_scale_factor`` on ``n`` fresh ShapeWorld images, with a seeded posterior sample, as SD
    measured 0.18215 on its first training batch. Supports notebook 08_latent_autoencoder.
    """
    images = ShapeWorld().sample(n, seed=seed, split=split).tensors()
    return compute_scale_factor(vae, images, generator=torch.Generator().manual_seed(seed))


def _check_batch(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W) in [-1, 1], got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}; "
                         "add a batch axis with x[None] for one image")
