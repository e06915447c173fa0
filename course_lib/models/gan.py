"""Generative adversarial networks, built to be compared with diffusion. Defined in notebook 01_gan_vs_diffusion.

A GAN (Goodfellow et al. 2014) trains two networks against each other: a **generator** G maps
random latent vectors z to samples, and a **discriminator** D outputs a logit that says "real"
(high) or "fake" (low). One training step

1. updates D to tell a batch of real samples from a batch of G's samples:
   ``loss_D = softplus(-D(x)) + softplus(D(G(z)))``  (binary cross-entropy on logits);
2. updates G to fool D with the *non-saturating* loss ``loss_G = softplus(-D(G(z)))`` =
   ``-log sigmoid(D(G(z)))``. The original minimax loss ``log(1 - sigmoid(D(G(z))))`` has almost
   no gradient when D confidently rejects G's samples, which is exactly the situation early in
   training; the non-saturating form has the same fixed point and a strong gradient there.

Here: MLP generator and discriminator for 2-D points (the ring and grid of Gaussians), a small
DCGAN (Radford et al. 2016) for 28x28 digits, the losses, and ``train_gan``, which returns the
losses and snapshots of G's samples over training. Stable Diffusion is *not* a GAN; a
discriminator appears there only as one term of its autoencoder's training loss (notebook 08).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.train.distributed import DistributedContext, training_context
from course_lib.train.state import Checkpointing, describe_model
from course_lib.core.utils import progress

__all__ = [
    "MLPGANConfig",
    "MLPGenerator",
    "MLPDiscriminator",
    "DCGANConfig",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "discriminator_loss",
    "generator_loss",
    "GANTrainConfig",
    "GANHistory",
    "real_batch",
    "train_gan",
    "TOY_GAN",
    "TOY_GAN_TRAINING",
    "MNIST_DCGAN",
    "MNIST_DCGAN_TRAINING",
]

RealData = torch.Tensor | Callable[[int, torch.Generator], torch.Tensor]


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


# ----------------------------------------------------------------------------------------------
# Networks for 2-D points
# ----------------------------------------------------------------------------------------------
@dataclass
class MLPGANConfig:
    """Sizes of the 2-D GAN's MLPs. Defined in notebook 01_gan_vs_diffusion.

    ``latent_dim``: size of the generator's noise z; ``hidden``/``layers``: width and number of
    hidden layers of both networks; ``data_dim``: 2 for points in the plane.
    """

    data_dim: int = 2
    latent_dim: int = 16
    hidden: int = 128
    layers: int = 3

    def validate(self) -> None:
        for name in ("data_dim", "latent_dim", "hidden", "layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MLPGANConfig.{name} must be a positive int, got {v!r}")


def _mlp(d_in: int, hidden: int, layers: int, d_out: int, act: Callable[[], nn.Module]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else hidden, hidden), act()]
    return nn.Sequential(*mods, nn.Linear(hidden, d_out))


class _Sampler(nn.Module):
    """Shared by the generators: draw z and map it to samples."""

    latent_dim: int

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples from fresh latents z ~ N(0, I) (drawn on the CPU from ``generator``), no gradients."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        with torch.no_grad():
            return self(z)

    def _check_z(self, z: torch.Tensor) -> None:
        if not torch.is_tensor(z) or z.ndim != 2 or z.shape[1] != self.latent_dim:
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(f"{type(self).__name__} takes latents z of shape (B, {self.latent_dim}), got {got}; "
                             f"draw them with torch.randn(B, {self.latent_dim}) or use .sample(B)")


class MLPGenerator(_Sampler):
    """z (B, latent_dim) -> points (B, data_dim): an MLP with ReLU. Defined in notebook 01_gan_vs_diffusion."""

    def __init__(self, config: MLPGANConfig | None = None):
        super().__init__()
        self.config = config = config or MLPGANConfig()
        config.validate()
        self.latent_dim = config.latent_dim
        self.net = _mlp(config.latent_dim, config.hidden, config.layers, config.data_dim, nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._check_z(z)
        return self.net(z)  # (B, latent_dim) -> (B, data_dim)


class MLPDiscriminator(nn.Module):
    """points (B, data_dim) -> one logit per point (B, 1): an MLP with LeakyReLU(0.2).

    Defined in notebook 01_gan_vs_diffusion.
    """

    def __init__(self, config: MLPGANConfig | None = None):
        super().__init__()
        self.config = config = config or MLPGANConfig()
        config.validate()
        self.net = _mlp(config.data_dim, config.hidden, config.layers, 1, lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.config.data_dim:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"MLPDiscriminator takes points of shape (B, {self.config.data_dim}), got {got}")
        return self.net(x)  # (B, data_dim) -> (B, 1)


# ----------------------------------------------------------------------------------------------
# A small DCGAN for 28x28 digits
# ----------------------------------------------------------------------------------------------
@dataclass
class DCGANConfig:
    """Sizes of the digit DCGAN. Defined in notebook 01_gan_vs_diffusion.

    The generator goes 7x7 (``2 * channels``) -> 14x14 (``channels``) -> 28x28 (``image_channels``)
    with transposed convolutions; the discriminator mirrors it with strided convolutions.
    """

    latent_dim: int = 64
    channels: int = 64
    image_channels: int = 1
    image_size: int = 28

    def validate(self) -> None:
        for name in ("latent_dim", "channels", "image_channels", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DCGANConfig.{name} must be a positive int, got {v!r}")
        if self.image_size % 4:
            raise ValueError(f"DCGANConfig.image_size must be divisible by 4 (two 2x upsamplings), "
                             f"got {self.image_size}; use e.g. 28 or 32")


class DCGANGenerator(_Sampler):
    """z (B, latent_dim) -> images (B, C, S, S) in [-1, 1] (tanh): linear to S/4 x S/4, then two
    transposed convolutions that double the resolution, with BatchNorm and ReLU (Radford et al. 2016).

    Defined in notebook 01_gan_vs_diffusion.
    """

    def __init__(self, config: DCGANConfig | None = None, **kwargs):
        super().__init__()
        self.config = config = config or DCGANConfig(**kwargs)
        config.validate()
        c, s = config.channels, config.image_size // 4
        self.latent_dim = config.latent_dim
        self.project = nn.Sequential(nn.Linear(config.latent_dim, 2 * c * s * s), nn.BatchNorm1d(2 * c * s * s),
                                     nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(),   # S/4 -> S/2
            nn.ConvTranspose2d(c, config.image_channels, 4, stride=2, padding=1), nn.Tanh(),     # S/2 -> S
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._check_z(z)
        c, s = self.config.channels, self.config.image_size // 4
        h = self.project(z).view(-1, 2 * c, s, s)  # (B, latent) -> (B, 2c, S/4, S/4)
        return self.up(h)  # (B, 2c, S/4, S/4) -> (B, C, S, S)


class DCGANDiscriminator(nn.Module):
    """images (B, C, S, S) in [-1, 1] -> one logit per image (B, 1): two strided convolutions with
    LeakyReLU(0.2) (BatchNorm on the second), then a linear layer. Defined in notebook 01_gan_vs_diffusion.
    """

    def __init__(self, config: DCGANConfig | None = None, **kwargs):
        super().__init__()
        self.config = config = config or DCGANConfig(**kwargs)
        config.validate()
        c, s = config.channels, config.image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(config.image_channels, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),       # S -> S/2
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),  # S/2 -> S/4
            nn.Flatten(), nn.Linear(2 * c * s * s, 1),                                            # -> (B, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        want = (cfg.image_channels, cfg.image_size, cfg.image_size)
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"DCGANDiscriminator takes images of shape (B, {', '.join(map(str, want))}), got {got}")
        return self.net(x)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def _check_logits(**logits: torch.Tensor) -> None:
    for name, v in logits.items():
        if not torch.is_tensor(v) or not torch.is_floating_point(v):
            got = f"a tensor of dtype {v.dtype}" if torch.is_tensor(v) else type(v).__name__
            raise TypeError(f"{name} must be a floating-point tensor of discriminator logits (before any "
                            f"sigmoid), got {got}")
        if v.numel() == 0:
            raise ValueError(f"{name} is empty; pass the discriminator's logits for a non-empty batch")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of D on logits: ``mean softplus(-D(real)) + mean softplus(D(fake))``.

    Equals ``-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))``, averaged; ``2 log 2 = 1.386`` when D
    cannot tell (all logits 0). Defined in notebook 01_gan_vs_diffusion.
    """
    _check_logits(real_logits=real_logits, fake_logits=fake_logits)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


GENERATOR_LOSSES = ("non_saturating", "minimax")


def generator_loss(fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """The generator's loss on D's logits for its samples.

    ``"non_saturating"`` (what everybody uses): ``mean softplus(-D(G(z))) = -log sigmoid(D(G(z)))``.
    ``"minimax"`` (the original game): ``mean log(1 - sigmoid(D(G(z)))) = -mean softplus(D(G(z)))``,
    whose gradient vanishes when D confidently rejects the samples. Both are ``log 2`` in size at
    logit 0. Defined in notebook 01_gan_vs_diffusion.
    """
    _check_logits(fake_logits=fake_logits)
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    raise ValueError(f"unknown generator loss {kind!r}; use one of {GENERATOR_LOSSES}")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
@dataclass
class GANTrainConfig:
    """How to train a GAN. Defined in notebook 01_gan_vs_diffusion.

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

    Defined in notebook 01_gan_vs_diffusion.
    """
    if torch.is_tensor(data):
        return data[torch.randint(len(data), (n,), generator=generator)]
    return data(n, generator)


def _check_data(data: RealData) -> None:
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
    the end. ``checkpoint``: a ``training_state.Checkpointing`` (save, resume and stop the run;
    ``config.steps`` may grow on resume, as no learning-rate schedule depends on it).
    """
    config = config or GANTrainConfig()
    config.validate()
    _check_data(data)
    latent_dim = getattr(generator, "latent_dim", None)
    if not isinstance(latent_dim, int):
        raise TypeError(f"the generator needs an int attribute latent_dim (the size of z); "
                        f"{type(generator).__name__} has none")
    device = next(generator.parameters()).device
    g = torch.Generator().manual_seed(config.seed)
    fixed_z = torch.randn(config.snapshot_size, latent_dim, generator=torch.Generator().manual_seed(config.seed + 1))
    fixed_z = fixed_z.to(device)

    # Fail early, with a clear message, if the two networks and the data do not fit together
    # (with its own random stream, so that the training stream is exactly batch, z, z, batch, ...).
    g_probe = torch.Generator().manual_seed(config.seed + 2)
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

    ctx, world = training_context(distributed, device, config.batch_size, "the generator")
    part = ctx.local_slice(config.batch_size) if world > 1 else slice(None)  # this process's rows of a batch
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=config.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_discriminator, betas=config.betas)
    history = GANHistory()
    ckpt = checkpoint or Checkpointing()
    run_config = {"trainer": "train_gan", "generator": describe_model(generator),
                  "discriminator": describe_model(discriminator),
                  "settings": {k: v for k, v in asdict(config).items()
                               if k not in ("steps", "snapshot_steps", "snapshot_size")}}
    state = ckpt.begin(ctx, run_config, total=config.steps,
                       modules={"generator": generator, "discriminator": discriminator},
                       optimizers={"generator_optimizer": opt_g, "discriminator_optimizer": opt_d},
                       generators={"batches": g})
    seconds_before = 0.0
    if state is not None:
        loop = state.meta["loop"]
        for name in ("loss_d", "loss_g", "d_real", "d_fake"):
            setattr(history, name, [float(v) for v in loop[name]])
        history.snapshots = {int(k.split(".", 1)[1]): v for k, v in state.tensors.items() if k.startswith("snapshot.")}
        history.start_step, seconds_before = ckpt.start_step, float(loop["seconds"])
    first, end = ckpt.start_step, ckpt.end_step
    net_g = ctx.wrap(generator) if world > 1 else generator
    real_and_fake = ctx.wrap(_RealAndFake(discriminator)) if world > 1 else None

    def loop_state() -> tuple[dict, dict]:
        return ({f"snapshot.{k}": v for k, v in history.snapshots.items()},
                {"loss_d": history.loss_d, "loss_g": history.loss_g, "d_real": history.d_real,
                 "d_fake": history.d_fake, "seconds": seconds_before + time.perf_counter() - start})

    def snapshot(step: int) -> None:
        if step in config.snapshot_steps:
            was_training = generator.training
            generator.eval()
            with torch.no_grad():
                history.snapshots[step] = generator(fixed_z).cpu()
            generator.train(was_training)

    generator.train()
    discriminator.train()
    if first == 0:
        snapshot(0)
    start = time.perf_counter()
    for step in progress(range(first + 1, end + 1), desc="GAN", disable=None if show_progress and ctx.is_main else True,
                         **({"initial": first, "total": config.steps} if first or end != config.steps else {})):
        # 1. Discriminator: real -> 1, fake -> 0 (G's samples detached: only D learns here).
        for _ in range(config.discriminator_steps):
            real = real_batch(data, config.batch_size, g)[part].to(device)
            z = torch.randn(config.batch_size, latent_dim, generator=g)[part].to(device)
            with torch.no_grad():
                fake = generator(z)
            if real_and_fake is None:
                real_logits, fake_logits = discriminator(real), discriminator(fake)
            else:
                real_logits, fake_logits = real_and_fake(real, fake)
            loss_d = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        # 2. Generator: make D call its samples real (gradients flow through D into G).
        z = torch.randn(config.batch_size, latent_dim, generator=g)[part].to(device)
        loss_g = generator_loss(discriminator(net_g(z)), config.generator_loss)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        if world == 1:
            history.loss_d.append(loss_d.item())
            history.loss_g.append(loss_g.item())
            history.d_real.append(torch.sigmoid(real_logits).mean().item())
            history.d_fake.append(torch.sigmoid(fake_logits).mean().item())
        else:  # the global batch's means (every process holds an equal slice)
            values = torch.stack([loss_d.detach(), loss_g.detach(), torch.sigmoid(real_logits).mean().detach(),
                                  torch.sigmoid(fake_logits).mean().detach()]).double().cpu()
            loss_d_, loss_g_, d_real, d_fake = ctx.all_reduce_mean(values).tolist()
            history.loss_d.append(loss_d_)
            history.loss_g.append(loss_g_)
            history.d_real.append(d_real)
            history.d_fake.append(d_fake)
        snapshot(step)
        ckpt.step_done(step, loop_state)
    history.seconds = seconds_before + time.perf_counter() - start
    # BatchNorm's running statistics: each process saw its own slices
    ckpt.finish(max(first, end), loop_state, average_buffers=[generator, discriminator])
    if world > 1:
        history.replica_difference = max(ctx.replica_difference(generator), ctx.replica_difference(discriminator))
    generator.eval()
    discriminator.eval()
    return history


# ----------------------------------------------------------------------------------------------
# The settings of notebook 01's experiments (shared by the notebook and scripts/train_gan_vs_diffusion.py)
# ----------------------------------------------------------------------------------------------
#: 2-D GAN: 35k + 34k parameters; the learning rate is the best of 3e-4, 1e-3 and 2e-3 on seeds 0-1.
TOY_GAN = MLPGANConfig(data_dim=2, latent_dim=16, hidden=128, layers=3)
TOY_GAN_TRAINING = GANTrainConfig(steps=6000, batch_size=256, lr_generator=2e-3, lr_discriminator=2e-3)
#: Digit DCGAN: 553k (G) + 139k (D) parameters.
MNIST_DCGAN = DCGANConfig(latent_dim=64, channels=64, image_channels=1, image_size=28)
MNIST_DCGAN_TRAINING = GANTrainConfig(steps=4000, batch_size=64, lr_generator=2e-4, lr_discriminator=2e-4)
