"""Distances between sets of images, measured on a classifier's features. Defined in notebook 00_welcome.

- Frechet distance: FID's method (Heusel et al. 2017), fitting a Gaussian to each set of features
  and comparing the fits. On the course's own small classifiers it is a *relative* measure: it
  ranks models on the same world, and its numbers are not comparable with published FIDs, which
  use Inception-v3 features of ImageNet-like photos.
- KID (Binkowski et al. 2018): an unbiased kernel MMD with a cubic polynomial kernel; unlike the
  Frechet distance it has no bias from the sample size.
- Precision and recall (Kynkaanniemi et al. 2019): the share of generated samples that fall on the
  real data's k-NN manifold (quality) and of real samples on the generated one (coverage).

Every number is only meaningful beside its *floor*: the same measure between two independent
sets of real images of the same size (:func:`compare_sets` reports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg


def _as_array(features: torch.Tensor | np.ndarray) -> np.ndarray:
    x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, float)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    return x


def frechet_distance(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of Gaussian fits. Supports notebook 00_welcome."""
    a, b = _as_array(real), _as_array(fake)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 samples in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric
    # PSD matrix: stable even when the covariances are singular (dead ReLU features are common).
    w, v = linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def kernel_distance(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, num_subsets: int = 50,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over random subsets of the unbiased MMD^2 with kernel
    k(x, y) = (x.y / d + 1)^3. Both sets are divided by the real set's root-mean-square feature
    value, so that the kernel sees values of order one whatever the feature extractor's scale.
    Supports notebook 00_welcome."""
    a, b = _as_array(real), _as_array(fake)
    rms = np.sqrt((a**2).mean()) or 1.0
    a, b = a / rms, b / rms
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("need at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def precision_recall(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, k: int = 3
                     ) -> tuple[float, float]:
    """Improved precision and recall with k-nearest-neighbour manifolds. Supports notebook 00_welcome."""
    a = torch.from_numpy(_as_array(real))
    b = torch.from_numpy(_as_array(fake))
    if min(len(a), len(b)) <= k:
        raise ValueError(f"need more than k={k} samples in each set")

    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # +1: each point is its own nearest neighbour

    def coverage(manifold: torch.Tensor, r: torch.Tensor, queries: torch.Tensor) -> float:
        d = torch.cdist(queries, manifold)  # (Q, M)
        return float((d <= r[None, :]).any(dim=1).double().mean())

    return coverage(a, radii(a), b), coverage(b, radii(b), a)


@dataclass
class SetComparison:
    """Distances of a generated set from real data, each beside its real-versus-real floor.

    Supports notebook 00_welcome.
    """

    frechet: float
    frechet_floor: float
    kid: float
    kid_floor: float
    precision: float
    recall: float
    n: int

    def as_row(self) -> dict[str, float]:
        return {"Frechet": round(self.frechet, 3), "Frechet floor": round(self.frechet_floor, 3),
                "KID": round(self.kid, 4), "KID floor": round(self.kid_floor, 4),
                "precision": round(self.precision, 3), "recall": round(self.recall, 3)}


def compare_sets(real_a: torch.Tensor, fake: torch.Tensor, real_b: torch.Tensor, k: int = 3,
                 subset_size: int = 500) -> SetComparison:
    """Compare generated features ``fake`` with real features ``real_a``, and report the floor
    measured between ``real_a`` and an independent real set ``real_b`` of the same size as ``fake``.

    Defined in notebook 00_welcome.
    """
    if len(real_b) != len(fake):
        raise ValueError(f"the floor set must be as large as the generated set ({len(fake)}), got {len(real_b)}")
    kid, _ = kernel_distance(real_a, fake, subset_size=subset_size)
    kid_floor, _ = kernel_distance(real_a, real_b, subset_size=subset_size)
    precision, recall = precision_recall(real_a, fake, k)
    return SetComparison(frechet_distance(real_a, fake), frechet_distance(real_a, real_b), kid, kid_floor,
                         precision, recall, len(fake))


def isolated_faint_pixels(images: torch.Tensor) -> torch.Tensor:
    """Per image, the pixels brighter than -0.8 (10% grey) with no ink (> 0) within 2 pixels: the
    specks a deterministic sampler leaves on a digit's black background. ``images`` (N, 1, H, W) in
    [-1, 1] -> (N,). Defined in notebook 07_plms_and_dpm_solver."""
    ink_nearby = F.max_pool2d((images > 0).float(), 5, stride=1, padding=2) > 0    # (N, 1, H, W)
    return ((images > -0.8) & ~ink_nearby).float().sum((1, 2, 3))
