"""Changing resolution: the stride-2 downsample and nearest x2 upsample blocks. Defined in notebook 03_unet.

Shared by the U-Net (notebook 03) and the autoencoder (notebook 08, whose downsample pads only
right and bottom: ``padding=0``). Attribute name ``conv`` as in diffusers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Downsample2D", "Upsample2D"]


class Downsample2D(nn.Module):
    """Halve the resolution with a 3x3 convolution of stride 2: ``(B, C, H, W) -> (B, C_out, H/2, W/2)``.

    ``padding=1`` is the U-Net's; ``padding=0`` pads only right and bottom by one first, as SD's
    autoencoder does. Name ``conv`` as in diffusers. Defined in notebook 03_unet.
    """

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.channels, self.padding = channels, padding
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Downsample2D expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))                 # asymmetric padding of the SD autoencoder
        return self.conv(x)


class Upsample2D(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 convolution.

    ``(B, C, H, W) -> (B, C_out, 2H, 2W)``. Name ``conv`` as in diffusers. Defined in notebook 03_unet.
    """

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Upsample2D expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
