"""Training and measuring the course's KL autoencoder on ShapeWorld. Defined in notebook 08_latent_autoencoder.

The network lives in ``course_lib.models.vae`` and knows no data set; this module is where it meets
ShapeWorld: it trains the autoencoder on fresh training-split images, measures its reconstructions
(PSNR, a Frechet distance with its floor, prompt adherence of the reconstructions), and loads the
shipped weights made by ``scripts/train_autoencoder.py``.

    vae = load_shipped_autoencoder()                    # data/shapeworld_vae.*
    z = encode_latents(vae, images)                     # (N, 3, 32, 32) -> (N, 4, 8, 8), scaled to unit std
    images = decode_latents(vae, z)                     # and back

``vae.config.scaling_factor`` of the shipped autoencoder is the course's own 0.18215: one over the
standard deviation of its latents, measured by ``compute_scale_factor`` after training.

The loss is ``vae_loss`` (L1 + a small KL). Stable Diffusion's autoencoder was trained with more:
a perceptual (LPIPS) loss and a patch-GAN discriminator (``LPIPSWithDiscriminator`` in the ``ldm``
code), the only discriminator anywhere in SD, used only while training the autoencoder. The course
leaves both out: on flat-coloured shapes an L1 loss already gives sharp edges, and it keeps training
within minutes on two CPU cores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from course_lib.core.checkpoints import load_checkpoint, load_weights
from course_lib.train.distributed import DistributedContext, autocast, check_batch_divisible, rank_seed, resolve_precision
from course_lib.worlds.shapeworld import SPLITS, ShapeWorld
from course_lib.train.state import Checkpointing, describe_model
from course_lib.core.utils import progress
from course_lib.models.vae import AutoencoderConfig, AutoencoderKL, compute_scale_factor, vae_loss

__all__ = ["SHIPPED_VAE", "SHIPPED_VAE_CONFIG", "AutoencoderTrainingConfig", "AutoencoderHistory",
           "train_autoencoder", "reconstruct", "psnr", "encode_latents", "decode_latents",
           "ReconstructionReport", "evaluate_reconstructions", "load_shipped_autoencoder",
           "shipped_autoencoder_metrics", "measure_scale_factor", "TRAIN_SEED_OFFSET"]

SHIPPED_VAE = "shapeworld_vae"
# The shipped autoencoder's sizes: 32x32x3 -> 8x8x4 (12x fewer numbers; SD: 512x512x3 -> 64x64x4, 48x).
# A narrow first level keeps the 32x32 convolutions cheap, which is where most of the time goes.
SHIPPED_VAE_CONFIG = AutoencoderConfig(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4,
                                       norm_num_groups=8)
# Training draws ShapeWorld seeds from TRAIN_SEED_OFFSET up, so evaluations with seeds below it use
# images the autoencoder never saw.
TRAIN_SEED_OFFSET = 1_000_000


@dataclass
class AutoencoderTrainingConfig:
    """How to train an ``AutoencoderKL`` on ShapeWorld. Defined in notebook 08_latent_autoencoder.

    Every step sees ``batch_size`` fresh images of ``split``, rendered ``chunk_size`` at a time.
    The learning rate warms up linearly for ``warmup_steps``, then follows a cosine down to
    ``lr * final_lr_fraction``. ``kl_weight=1e-6`` is SD's; ``sample_posterior=True`` decodes a
    sample of the posterior, as SD's training does (the mean is used at inference).
    ``channels_last`` stores activations as (B, H, W, C), often faster on CPUs.
    """

    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    final_lr_fraction: float = 0.05
    kl_weight: float = 1e-6
    loss_kind: str = "l1"
    sample_posterior: bool = True
    split: str = "train"
    chunk_size: int = 2048
    grad_clip: float = 1.0
    seed: int = 0
    channels_last: bool = True

    def validate(self) -> None:
        """Raise a ``ValueError`` that says what to change if these settings cannot train."""
        for name in ("steps", "batch_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.chunk_size % self.batch_size:
            raise ValueError(f"chunk_size ({self.chunk_size}) must be a multiple of batch_size "
                             f"({self.batch_size}); e.g. chunk_size={self.batch_size * 64}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.loss_kind not in ("l1", "mse"):
            raise ValueError(f"loss_kind must be 'l1' (SD's choice) or 'mse', got {self.loss_kind!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate at ``step`` (0-based): linear warm-up, then cosine decay."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(self.steps - self.warmup_steps, 1)
        progress_ = min((step - self.warmup_steps) / span, 1.0)
        low = self.lr * self.final_lr_fraction
        return low + (self.lr - low) * 0.5 * (1 + math.cos(math.pi * progress_))


@dataclass
class AutoencoderHistory:
    """What ``train_autoencoder`` measured, one entry per step (losses are per image, as in ``vae_loss``)."""

    loss: list[float] = field(default_factory=list)
    reconstruction: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Training throughput, images per second of wall time."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _training_images(config: AutoencoderTrainingConfig, world: ShapeWorld, rank: int = 0, processes: int = 1,
                     first_step: int = 0):
    """Yield batches (B, 3, H, W) of fresh images, ``chunk_size`` rendered at a time.

    With several processes, process ``rank`` renders chunks ``rank, rank + processes, ...`` (so no
    two processes see the same image) and yields ``batch_size // processes`` images at a time.
    ``first_step``: start with the batch of that step (a resumed run: its chunk is rendered again).
    """
    batch = config.batch_size // processes
    chunk, first = divmod(first_step, config.chunk_size // batch)
    while True:
        seed = TRAIN_SEED_OFFSET + config.seed * 100_000 + chunk * processes + rank
        images = world.sample(config.chunk_size, seed=seed, split=config.split).tensors()
        for start in range(first * batch, config.chunk_size, batch):
            yield images[start:start + batch]
        chunk, first = chunk + 1, 0


def train_autoencoder(vae: AutoencoderKL, config: AutoencoderTrainingConfig | None = None,
                      world: ShapeWorld | None = None,
                      callback: Callable[[int, dict[str, float]], None] | None = None,
                      desc: str = "autoencoder", *, distributed: DistributedContext | None = None,
                      precision: str = "fp32", checkpoint: Checkpointing | None = None) -> AutoencoderHistory:
    """Train ``vae`` in place on fresh ShapeWorld images with ``vae_loss``; returns its history.

    AdamW with warm-up and cosine decay, gradient clipping at ``config.grad_clip``. ``callback(step,
    losses)`` is called after every step. The model is left in eval mode, in the ordinary
    (contiguous) memory format, on its device. Defined in notebook 08_latent_autoencoder.

    Beyond one CPU (README, "Training bigger"): with ``distributed`` (a torchrun process's
    context) each process renders its own images (its own seeds) and trains on
    ``batch_size / world_size`` of them per step, gradients averaged, so a step still sees
    ``batch_size`` images; the history holds the mean over the processes. ``precision``: autocast.
    ``checkpoint``: a ``training_state.Checkpointing`` (save, resume and stop the run; every process's
    random state is saved, and since each renders its own images a run resumes only with the number
    of processes it was saved with).
    """
    config = config or AutoencoderTrainingConfig()
    config.validate()
    if not isinstance(vae, AutoencoderKL):
        raise TypeError(f"vae must be a course_lib.models.vae.AutoencoderKL, got {type(vae).__name__}")
    ctx = distributed or DistributedContext()
    processes = ctx.world_size if ctx.is_distributed else 1
    if processes > 1:
        check_batch_divisible(config.batch_size, processes)
    world = world or ShapeWorld()
    param = next(vae.parameters())
    device, dtype = param.device, param.dtype
    precision = resolve_precision(precision, device)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    torch.manual_seed(rank_seed(config.seed, ctx.rank))  # the posterior samples (one stream per process)
    vae.to(memory_format=fmt).train()
    net = ctx.wrap(vae) if processes > 1 else vae
    opt = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    history = AutoencoderHistory()
    ckpt = checkpoint or Checkpointing()
    run_config = {"trainer": "train_autoencoder", "model": describe_model(vae), "settings": asdict(config),
                  "processes": processes}  # each process renders its own images: a stream per process count
    state = ckpt.begin(ctx, run_config, total=config.steps, modules={"model": vae}, optimizers={"optimizer": opt})
    seconds_before = 0.0
    if state is not None:
        loop = state.meta["loop"]
        history.loss, history.reconstruction, history.kl = (
            [float(v) for v in loop[k]] for k in ("loss", "reconstruction", "kl"))
        history.images, seconds_before = int(loop["images"]), float(loop["seconds"])
    first, end = ckpt.start_step, ckpt.end_step
    batches = _training_images(config, world, ctx.rank, processes, first_step=first)
    start = time.perf_counter()

    def loop_state() -> tuple[dict, dict]:
        return {}, {"loss": history.loss, "reconstruction": history.reconstruction, "kl": history.kl,
                    "images": history.images, "seconds": seconds_before + time.perf_counter() - start}

    try:
        for step in progress(range(first, end), desc=desc, disable=None if ctx.is_main else True,
                             **({"initial": first, "total": config.steps} if first or end != config.steps else {})):
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            x = next(batches).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
            with autocast(device, precision):
                out = net(x, sample_posterior=config.sample_posterior)
                losses = vae_loss(x, out.sample.float(), out.posterior, kl_weight=config.kl_weight,
                                  kind=config.loss_kind)
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
            opt.step()
            values = torch.stack([losses.total.detach(), losses.reconstruction.detach(), losses.kl.detach()])
            if processes > 1:
                values = ctx.all_reduce_mean(values.double().cpu())
            row = {"loss": values[0].item(), "reconstruction": values[1].item(), "kl": values[2].item()}
            history.loss.append(row["loss"])
            history.reconstruction.append(row["reconstruction"])
            history.kl.append(row["kl"])
            history.images += x.shape[0] * processes
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"the loss became {row['loss']} at step {step}; lower the learning "
                                         f"rate (now {config.lr}) or keep grad_clip on")
            if callback is not None:
                callback(step, row)
            ckpt.step_done(step + 1, loop_state)
        ckpt.finish(max(first, end), loop_state)
    finally:
        history.seconds = seconds_before + time.perf_counter() - start
        vae.to(memory_format=torch.contiguous_format).eval()
    return history


# ----------------------------------------------------------------------------------------------
# Using and measuring an autoencoder
# ----------------------------------------------------------------------------------------------
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
    """How well an autoencoder reconstructs a set of ShapeWorld images. Defined in notebook 08_latent_autoencoder.

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
    measured 0.18215 on its first training batch. Defined in notebook 08_latent_autoencoder.
    """
    images = ShapeWorld().sample(n, seed=seed, split=split).tensors()
    return compute_scale_factor(vae, images, generator=torch.Generator().manual_seed(seed))


def _check_batch(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W) in [-1, 1], got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}; "
                         "add a batch axis with x[None] for one image")
