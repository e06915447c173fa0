"""Training the course's KL autoencoder on ShapeWorld. Defined in notebook 08_latent_autoencoder.

The network lives in ``course_lib.models.vae`` and knows no data set; this module is where it meets
ShapeWorld: it trains the autoencoder on fresh training-split images (on the course's one training
loop, ``course_lib.train.loop.TrainLoop``). Using it, measuring its reconstructions (PSNR, a Frechet
distance with its floor, prompt adherence) and loading the shipped weights made by
``scripts/train_autoencoder.py`` are in ``course_lib.train.latents``, whose names are found here too.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from course_lib.models.vae import AutoencoderKL, vae_loss
from course_lib.train.distributed import DistributedContext, check_batch_divisible, rank_seed
from course_lib.train.latents import (
    SHIPPED_VAE,
    SHIPPED_VAE_CONFIG,
    TRAIN_SEED_OFFSET,
    ReconstructionReport,
    decode_latents,
    encode_latents,
    evaluate_reconstructions,
    load_shipped_autoencoder,
    measure_scale_factor,
    psnr,
    reconstruct,
    shipped_autoencoder_metrics,
)
from course_lib.train.loop import TrainLoop
from course_lib.train.state import Checkpointing, describe_model
from course_lib.worlds.shapeworld import SPLITS, ShapeWorld

__all__ = ["SHIPPED_VAE", "SHIPPED_VAE_CONFIG", "AutoencoderTrainingConfig", "AutoencoderHistory",
           "train_autoencoder", "reconstruct", "psnr", "encode_latents", "decode_latents",
           "ReconstructionReport", "evaluate_reconstructions", "load_shipped_autoencoder",
           "shipped_autoencoder_metrics", "measure_scale_factor", "TRAIN_SEED_OFFSET"]

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
    ``checkpoint``: a ``train.state.Checkpointing`` (save, resume and stop the run; every process's
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
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    torch.manual_seed(rank_seed(config.seed, ctx.rank))  # the posterior samples (one stream per process)
    vae.to(memory_format=fmt).train()
    net = ctx.wrap(vae) if processes > 1 else vae
    opt = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    run_config = {"trainer": "train_autoencoder", "model": describe_model(vae), "settings": asdict(config),
                  "processes": processes}  # each process renders its own images: a stream per process count
    loop = TrainLoop(vae, opt, total_steps=config.steps, lr_schedule=config.lr_at, grad_clip=config.grad_clip,
                     precision=precision, distributed=ctx, checkpoint=checkpoint, run_config=run_config, desc=desc)
    batches = _training_images(config, world, ctx.rank, processes, first_step=loop.start_step)

    def step(i: int) -> dict[str, torch.Tensor]:
        x = next(batches).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
        with loop.autocast():
            out = net(x, sample_posterior=config.sample_posterior)
            losses = vae_loss(x, out.sample.float(), out.posterior, kl_weight=config.kl_weight, kind=config.loss_kind)
        return {"loss": losses.total, "reconstruction": losses.reconstruction, "kl": losses.kl}

    def after(i: int, row: dict[str, float]) -> None:
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"the loss became {row['loss']} at step {i}; lower the learning "
                                     f"rate (now {config.lr}) or keep grad_clip on")
        if callback is not None:
            callback(i, row)

    try:
        run = loop.run(step, on_step=after)
    finally:
        vae.to(memory_format=torch.contiguous_format).eval()
    return AutoencoderHistory(loss=run.history.get("loss", []), reconstruction=run.history.get("reconstruction", []),
                              kl=run.history.get("kl", []), images=run.steps * config.batch_size, seconds=run.seconds)
