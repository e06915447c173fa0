"""2-D Gaussian mixtures: the standard mode-collapse benchmark. Defined in notebook 00_welcome.

The ring of 8 and the 5x5 grid of 25 Gaussians follow Metz et al. 2017 ("Unrolled GANs") and
Srivastava et al. 2017 ("VEEGAN"). A generated point is *high quality* when it lies within three
standard deviations of its nearest mode; a mode is *covered* when enough high-quality points land
on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mixture2D:
    """An equal-weight mixture of isotropic 2-D Gaussians. Supports notebook 00_welcome."""

    name: str
    means: torch.Tensor  # (K, 2)
    std: float

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points, (n, 2), float32."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        idx = torch.randint(self.num_modes, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator)
        return self.means[idx] + self.std * noise


def ring_of_gaussians(num_modes: int = 8, radius: float = 2.0, std: float = 0.02) -> Mixture2D:
    """``num_modes`` Gaussians evenly on a circle (the "ring of 8"). Defined in notebook 00_welcome."""
    angles = torch.arange(num_modes, dtype=torch.float32) * (2 * math.pi / num_modes)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return Mixture2D(f"ring{num_modes}", means, std)


def grid_of_gaussians(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> Mixture2D:
    """A ``side`` x ``side`` grid of Gaussians (the "grid of 25"), centred at the origin.

    Defined in notebook 00_welcome.
    """
    coords = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
    xx, yy = torch.meshgrid(coords, coords, indexing="ij")
    means = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    return Mixture2D(f"grid{side * side}", means, std)


TOY_MIXTURES = {"ring8": ring_of_gaussians, "grid25": grid_of_gaussians}


def make_mixture(name: str) -> Mixture2D:
    """``"ring8"`` or ``"grid25"``. Supports notebook 00_welcome."""
    if name not in TOY_MIXTURES:
        raise ValueError(f"unknown toy mixture {name!r}; known ones: {sorted(TOY_MIXTURES)}")
    return TOY_MIXTURES[name]()


@dataclass
class ModeScore:
    """Modes covered and the share of high-quality samples. Supports notebook 00_welcome."""

    modes_covered: int
    num_modes: int
    high_quality: float  # share of samples within 3 std of their nearest mode
    counts: torch.Tensor  # (K,) high-quality samples per mode

    def __str__(self) -> str:
        return (f"{self.modes_covered}/{self.num_modes} modes covered, "
                f"{100 * self.high_quality:.1f}% high-quality samples")


def score_modes(samples: torch.Tensor, mixture: Mixture2D, num_stds: float = 3.0,
                min_count: int | None = None) -> ModeScore:
    """Score generated 2-D points against a mixture, as in the mode-collapse literature.

    A sample is high quality when it is within ``num_stds`` standard deviations of its nearest
    mode. A mode counts as covered when at least ``min_count`` high-quality samples land on it;
    by default that is 1/4 of what a perfect sampler would put there, with at least one sample
    (Srivastava et al. count a mode covered when it gets any high-quality sample at 2,500 samples).
    Defined in notebook 00_welcome.
    """
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise ValueError(f"samples must have shape (N, 2), got {tuple(samples.shape)}")
    samples = samples.detach().float().cpu()
    dist = torch.cdist(samples, mixture.means)  # (N, K)
    nearest_dist, nearest = dist.min(dim=1)
    good = nearest_dist <= num_stds * mixture.std
    counts = torch.bincount(nearest[good], minlength=mixture.num_modes)
    if min_count is None:
        min_count = max(1, int(0.25 * len(samples) / mixture.num_modes))
    covered = int((counts >= min_count).sum())
    return ModeScore(covered, mixture.num_modes, float(good.float().mean()), counts)
