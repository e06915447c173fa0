"""CLIP's other tower, small: a convolutional image encoder for 32x32 worlds.

Part of notebook 04_clip_text_embeddings's contrastive model (trained by ``course_lib.train.clip``).

``ImageEncoder`` maps images ``(B, C, H, W)`` to ``(B, out_dim)`` features; ``ContrastiveModel``
(``clip_contrastive``) projects them into the space it shares with the text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ImageEncoderConfig", "ImageEncoder"]


@dataclass
class ImageEncoderConfig:
    """Sizes of the small convolutional image encoder. Supports notebook 04_clip_text_embeddings.

    Each entry of ``widths`` is one stage (two 3x3 convs with GroupNorm and SiLU); every stage but
    the last halves the resolution, so (32, 64, 128) on 32x32 images ends at 8x8, then a global
    average pool and a linear layer give ``out_dim`` features.
    """

    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128)
    out_dim: int = 128
    groups: int = 8

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths!r}")
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            raise ValueError(f"widths {bad} are not divisible by groups={self.groups} (GroupNorm); "
                             "use multiples of groups or lower groups")
        if self.in_channels < 1 or self.out_dim < 1:
            raise ValueError("in_channels and out_dim must be positive")


class ImageEncoder(nn.Module):
    """A small conv net: (B, C, H, W) images -> (B, out_dim) features, for 32x32 RGB worlds.

    Supports notebook 04_clip_text_embeddings.
    """

    def __init__(self, config: ImageEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or ImageEncoderConfig()
        stages: list[nn.Module] = []
        c = config.in_channels
        for i, w in enumerate(config.widths):
            stages += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(config.groups, w), nn.SiLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(config.groups, w), nn.SiLU()]
            if i < len(config.widths) - 1:
                stages.append(nn.AvgPool2d(2))  # (B, w, H, W) -> (B, w, H/2, W/2)
            c = w
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(c, config.out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be (B, {self.config.in_channels}, H, W), "
                             f"got {tuple(images.shape)}")
        x = self.features(images).mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)
        return self.head(x)  # (B, C) -> (B, out_dim)
