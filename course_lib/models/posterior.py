"""The autoencoder's posterior and its training loss. Defined in notebook 08_latent_autoencoder.

``DiagonalGaussian`` is q(z | x), what ``AutoencoderKL.encode`` returns: mean and clamped log-variance
per latent element, reparameterised samples and the KL to the prior. ``vae_loss`` is SD's autoencoder
loss without its perceptual and GAN terms: reconstruction plus a small KL weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["DiagonalGaussian", "VAELoss", "vae_loss"]


class DiagonalGaussian:
    """The encoder's posterior q(z | x): a Gaussian with diagonal covariance per latent element.

    ``parameters (B, 2C, h, w)`` is split on the channel axis into ``mean`` and ``logvar``
    (each ``(B, C, h, w)``); ``logvar`` is clamped to [-30, 20] as in SD, which keeps ``std``
    finite. Same numbers as diffusers' ``DiagonalGaussianDistribution``.
    Defined in notebook 08_latent_autoencoder.
    """

    def __init__(self, parameters: torch.Tensor):
        if parameters.ndim != 4 or parameters.shape[1] % 2 != 0:
            raise ValueError(f"DiagonalGaussian expects parameters (B, 2*C, h, w) holding mean and "
                             f"log-variance, got {tuple(parameters.shape)}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, 2C, h, w) -> 2 x (B, C, h, w)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised sample ``mean + std * eps``, ``eps ~ N(0, I)`` drawn with ``generator``.

        A CPU generator with a tensor on another device draws on the CPU and moves the noise, as
        diffusers does, so the same seed gives the same sample on every device.
        """
        device = self.mean.device
        if generator is not None and generator.device.type != device.type:
            if generator.device.type != "cpu":
                raise ValueError(f"a {generator.device.type} generator cannot draw noise for a tensor on "
                                 f"{device}; use a CPU generator or one on {device.type}")
            noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(device)
        else:
            noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean."""
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other), summed over (C, h, w): one value per image, shape ``(B,)``.

        ``other=None`` means the standard normal prior N(0, I):
        ``0.5 * sum(mean^2 + var - 1 - logvar)``.
        """
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum((self.mean - other.mean).pow(2) / other.var + self.var / other.var
                               - 1.0 - self.logvar + other.logvar, dim=[1, 2, 3])

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype})"


class VAELoss(NamedTuple):
    """The parts of ``vae_loss``: ``total = reconstruction + kl_weight * kl`` (all scalars)."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def vae_loss(x: torch.Tensor, recon: torch.Tensor, posterior: DiagonalGaussian, kl_weight: float = 1e-6,
             kind: str = "l1") -> VAELoss:
    """Autoencoder training loss: reconstruction + ``kl_weight`` * KL(posterior || N(0, I)).

    As in SD's autoencoder training (``LPIPSWithDiscriminator`` without its perceptual and GAN
    terms, and with its learned log-variance fixed at 0): the reconstruction error is the L1
    distance (``kind="l1"``, SD's choice; ``"mse"`` for squared error) summed over every pixel
    and channel, and the KL is summed over every latent element; both are averaged over the batch.
    SD uses ``kl_weight=1e-6``: the KL term only keeps the latents from drifting to huge values,
    it does not make them a standard normal. Supports notebook 08_latent_autoencoder.
    """
    if kind not in ("l1", "mse"):
        raise ValueError(f"kind must be 'l1' (SD's choice) or 'mse', got {kind!r}")
    if x.shape != recon.shape:
        raise ValueError(f"x {tuple(x.shape)} and recon {tuple(recon.shape)} must have the same shape; "
                         "pass the autoencoder's output for the same batch")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    err = (recon - x).abs() if kind == "l1" else (recon - x).pow(2)
    rec = err.flatten(1).sum(dim=1).mean()             # (B, C, H, W) -> (B,) -> scalar
    kl = posterior.kl().mean()                         # (B,) -> scalar
    return VAELoss(rec + kl_weight * kl, rec, kl)
