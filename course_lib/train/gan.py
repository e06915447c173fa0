"""Training a GAN: the discriminator, then the generator, every step. Defined in notebook 01_gan_vs_diffusion.

The networks and the losses are in ``course_lib.models.gan``; ``train_gan`` brings the data (real
samples and latents, all from one seeded generator) and the two updates of a step to the course's
one training loop (``course_lib.train.loop.TrainLoop``), which records the losses, saves and resumes
the run and runs it under torchrun. It also keeps snapshots of G's samples over training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from course_lib.models.gan import GENERATOR_LOSSES, discriminator_loss, generator_loss
from course_lib.train.distributed import DistributedContext, training_context
from course_lib.train.loop import Snapshots, TrainLoop
from course_lib.train.state import Checkpointing, describe_model

__all__ = ["GANTrainConfig", "GANHistory", "RealData", "real_batch", "check_real_data", "train_gan",
           "TOY_GAN_TRAINING", "MNIST_DCGAN_TRAINING"]

RealData = torch.Tensor | Callable[[int, torch.Generator], torch.Tensor]


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


@dataclass
class GANTrainConfig:
    """How to train a GAN. Supports notebook 01_gan_vs_diffusion.

    Each of ``steps`` steps updates D ``discriminator_steps`` times, then G once, on batches of
    ``batch_size``, with Adam (``betas=(0.5, 0.999)`` as in DCGAN). ``snapshot_steps``: after which
    steps (0 = before training) to keep G's output on ``snapshot_size`` fixed latents.
    ``seed`` drives batches and latents (initialise the networks yourself, seeded).
    """

    steps: int = 2000
    batch_size: int = 256
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    discriminator_steps: int = 1
    generator_loss: str = "non_saturating"
    snapshot_steps: tuple[int, ...] = ()
    snapshot_size: int = 512
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "discriminator_steps", "snapshot_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GANTrainConfig.{name} must be a positive int, got {v!r}")
        _check_positive(lr_generator=self.lr_generator, lr_discriminator=self.lr_discriminator)
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"GANTrainConfig.generator_loss must be one of {GENERATOR_LOSSES}, "
                             f"got {self.generator_loss!r}")
        bad = [s for s in self.snapshot_steps if not 0 <= s <= self.steps]
        if bad:
            raise ValueError(f"snapshot_steps {bad} lie outside 0..steps={self.steps}")


@dataclass
class GANHistory:
    """What ``train_gan`` returns. Defined in notebook 01_gan_vs_diffusion.

    Per step: ``loss_d``, ``loss_g``, and ``d_real``/``d_fake``, the mean probability D gives real
    and generated samples. ``snapshots``: step -> G's samples on the fixed latents (CPU).
    ``seconds``: wall-clock training time.
    """

    loss_d: list[float] = field(default_factory=list)
    loss_g: list[float] = field(default_factory=list)
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    # Beyond one CPU (README, "Training bigger"): the step a resumed run started from, and the largest
    # weight difference between processes at the end (0.0 in one process).
    start_step: int = 0
    replica_difference: float = 0.0


class _RealAndFake(nn.Module):
    """The discriminator on a real and a fake batch in one call: one DistributedDataParallel forward
    (and one gradient average) per discriminator update, whatever the two calls inside."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminator(real), self.discriminator(fake)


def real_batch(data: RealData, n: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of ``n`` real samples: random rows of a tensor (with replacement), or ``data(n, generator)``.

    Supports notebook 01_gan_vs_diffusion.
    """
    if torch.is_tensor(data):
        return data[torch.randint(len(data), (n,), generator=generator)]
    return data(n, generator)


def check_real_data(data: RealData) -> None:
    """Raise a clear error unless ``data`` is a float tensor of real samples (N, ...) or a function
    ``(n, generator) -> samples`` (what ``train_gan`` and ``toy_diffusion.train_diffusion`` take)."""
    if torch.is_tensor(data):
        if not torch.is_floating_point(data) or data.ndim < 2 or len(data) < 1:
            raise ValueError(f"data must be a float tensor (N, ...) of real samples, got dtype {data.dtype} "
                             f"and shape {tuple(data.shape)}")
    elif not callable(data):
        raise TypeError(f"data must be a tensor of real samples or a function (n, generator) -> samples, "
                        f"got {type(data).__name__}")


def train_gan(generator: nn.Module, discriminator: nn.Module, data: RealData,
              config: GANTrainConfig | None = None, show_progress: bool = True, *,
              distributed: DistributedContext | None = None, checkpoint: Checkpointing | None = None
              ) -> GANHistory:
    """Train ``generator`` and ``discriminator`` in place against each other on real ``data``.

    ``data``: a tensor of real samples (N, ...) or a function ``(n, torch.Generator) -> (n, ...)``
    (e.g. ``mixture.sample``). The generator must have ``latent_dim``. Runs on the networks'
    device; all randomness comes from ``config.seed``. Returns a :class:`GANHistory`.
    Defined in notebook 01_gan_vs_diffusion.

    Beyond one CPU (not built in the notebook; README, "Training bigger"): with ``distributed`` (a
    torchrun process's context; the networks already on its device) both networks are wrapped in
    DistributedDataParallel. Every process draws the whole global batch of real samples and
    latents from the one seeded generator and keeps its slice, D's update averages D's gradients
    over the processes (one forward of D on the real and the fake slice), then G's update averages
    G's; the losses recorded are the global means. Without BatchNorm this is the single-process run
    to float tolerance; with BatchNorm (the DCGAN) each process normalises by its own slice's
    statistics (``torch.nn.SyncBatchNorm`` is CUDA-only), and the running statistics are averaged at
    the end. ``checkpoint``: a ``train.state.Checkpointing`` (save, resume and stop the run;
    ``config.steps`` may grow on resume, as no learning-rate schedule depends on it).
    """
    config = config or GANTrainConfig()
    config.validate()
    check_real_data(data)
    latent_dim = getattr(generator, "latent_dim", None)
    if not isinstance(latent_dim, int):
        raise TypeError(f"the generator needs an int attribute latent_dim (the size of z); "
                        f"{type(generator).__name__} has none")
    device = next(generator.parameters()).device
    g = torch.Generator().manual_seed(config.seed)
    fixed_z = torch.randn(config.snapshot_size, latent_dim, generator=torch.Generator().manual_seed(config.seed + 1))
    fixed_z = fixed_z.to(device)
    _probe(generator, discriminator, data, latent_dim, device, config.seed)

    ctx, world = training_context(distributed, device, config.batch_size, "the generator")
    batch, part = config.batch_size, ctx.local_slice(config.batch_size) if world > 1 else slice(None)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=config.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_discriminator, betas=config.betas)
    snapshots = Snapshots()
    run_config = {"trainer": "train_gan", "generator": describe_model(generator),
                  "discriminator": describe_model(discriminator),
                  "settings": {k: v for k, v in asdict(config).items()
                               if k not in ("steps", "snapshot_steps", "snapshot_size")}}
    loop = TrainLoop({"generator": generator, "discriminator": discriminator},
                     {"generator_optimizer": opt_g, "discriminator_optimizer": opt_d}, total_steps=config.steps,
                     distributed=ctx, checkpoint=checkpoint, run_config=run_config, generators={"batches": g},
                     state={"snapshot": snapshots}, desc="GAN", show_progress=show_progress)
    net_g = ctx.wrap(generator) if world > 1 else generator
    real_and_fake = ctx.wrap(_RealAndFake(discriminator)) if world > 1 else None

    def snapshot(step: int) -> None:  # G's samples on the fixed latents after ``step`` steps
        if step in config.snapshot_steps:
            was_training = generator.training
            generator.eval()
            with torch.no_grad():
                snapshots[step] = generator(fixed_z).cpu()
            generator.train(was_training)

    def step(i: int) -> dict[str, torch.Tensor]:
        # 1. Discriminator: real -> 1, fake -> 0 (G's samples detached: only D learns here).
        for _ in range(config.discriminator_steps):
            real = real_batch(data, batch, g)[part].to(device)
            z = torch.randn(batch, latent_dim, generator=g)[part].to(device)
            with torch.no_grad():
                fake = generator(z)
            if real_and_fake is None:
                real_logits, fake_logits = discriminator(real), discriminator(fake)
            else:
                real_logits, fake_logits = real_and_fake(real, fake)
            loss_d = discriminator_loss(real_logits, fake_logits)
            loop.optimize(loss_d, "discriminator_optimizer")
        # 2. Generator: make D call its samples real (gradients flow through D into G).
        z = torch.randn(batch, latent_dim, generator=g)[part].to(device)
        loss_g = generator_loss(discriminator(net_g(z)), config.generator_loss)
        loop.optimize(loss_g, "generator_optimizer")
        return {"loss_d": loss_d, "loss_g": loss_g, "d_real": torch.sigmoid(real_logits).mean(),
                "d_fake": torch.sigmoid(fake_logits).mean()}

    if loop.start_step == 0:
        snapshot(0)
    run = loop.run(step, on_step=lambda i, values: snapshot(i + 1))
    return GANHistory(**{k: run.history.get(k, []) for k in ("loss_d", "loss_g", "d_real", "d_fake")},
                      snapshots=dict(snapshots), seconds=run.seconds, start_step=run.start_step,
                      replica_difference=run.replica_difference)


def _probe(generator: nn.Module, discriminator: nn.Module, data: RealData, latent_dim: int, device: torch.device,
           seed: int) -> None:
    """Fail early, with a clear message, if the two networks and the data do not fit together
    (with its own random stream, so that the training stream is exactly batch, z, z, batch, ...)."""
    g_probe = torch.Generator().manual_seed(seed + 2)
    probe = real_batch(data, 2, g_probe).to(device)
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        fake_probe = generator(torch.randn(2, latent_dim, generator=g_probe).to(device))
        if fake_probe.shape[1:] != probe.shape[1:]:
            raise ValueError(f"the generator makes samples of shape {tuple(fake_probe.shape[1:])} but the real "
                             f"data has shape {tuple(probe.shape[1:])}; build the generator for the data")
        d_out = discriminator.eval()(probe)
    generator.train(was_training)
    if d_out.shape not in ((2,), (2, 1)):
        raise ValueError(f"the discriminator must return one logit per sample, (B,) or (B, 1); got "
                         f"{tuple(d_out.shape)} for B=2")


#: The training settings of notebook 01's experiments (shared with scripts/train_gan_vs_diffusion.py; the
#: networks' sizes, TOY_GAN and MNIST_DCGAN, are in course_lib.models.gan).
#: 2-D GAN: the learning rate is the best of 3e-4, 1e-3 and 2e-3 on seeds 0-1.
TOY_GAN_TRAINING = GANTrainConfig(steps=6000, batch_size=256, lr_generator=2e-3, lr_discriminator=2e-3)
#: Digit DCGAN.
MNIST_DCGAN_TRAINING = GANTrainConfig(steps=4000, batch_size=64, lr_generator=2e-4, lr_discriminator=2e-4)
