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
DCGAN (Radford et al. 2016) for 28x28 digits, and the losses. ``course_lib.train.gan.train_gan``
trains them, and returns the losses and snapshots of G's samples over training. Stable Diffusion is *not* a GAN; a
discriminator appears there only as one term of its autoencoder's training loss (notebook 08).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLPGANConfig",
    "MLPGenerator",
    "MLPDiscriminator",
    "DCGANConfig",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "discriminator_loss",
    "generator_loss",
    "GENERATOR_LOSSES",
    "TOY_GAN",
    "MNIST_DCGAN",
]


# ----------------------------------------------------------------------------------------------
# Networks for 2-D points
# ----------------------------------------------------------------------------------------------
@dataclass
class MLPGANConfig:
    """Sizes of the 2-D GAN's MLPs. Supports notebook 01_gan_vs_diffusion.

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
    """Sizes of the digit DCGAN. Supports notebook 01_gan_vs_diffusion.

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
# The networks of notebook 01's experiments (their training settings: course_lib.train.gan)
# ----------------------------------------------------------------------------------------------
#: 2-D GAN: 35k + 34k parameters.
TOY_GAN = MLPGANConfig(data_dim=2, latent_dim=16, hidden=128, layers=3)
#: Digit DCGAN: 553k (G) + 139k (D) parameters.
MNIST_DCGAN = DCGANConfig(latent_dim=64, channels=64, image_channels=1, image_size=28)
