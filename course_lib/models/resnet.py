"""The residual block of Stable Diffusion's U-Net and autoencoder. Defined in notebook 02_resnet_blocks.

One block is: GroupNorm -> SiLU -> 3x3 conv -> (+ projected time embedding) -> GroupNorm -> SiLU
-> dropout -> 3x3 conv, added to the input (through a 1x1 conv when the channel count changes).
The attribute names are those of ``diffusers.models.resnet.ResnetBlock2D``, so a diffusers state
dict loads into it with ``load_state_dict`` and no renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResnetBlock2D", "check_group_norm"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_group_norm(num_channels: int, num_groups: int, what: str = "channels") -> None:
    """Raise a clear ``ValueError`` unless ``num_groups`` divides ``num_channels``.

    GroupNorm splits the channels into ``num_groups`` equal groups, so the count must divide.
    ``what`` names the channel count in the message (for example ``"block_out_channels[1]"``).
    Supports notebook 02_resnet_blocks.
    """
    if num_groups < 1:
        raise ValueError(f"GroupNorm needs at least one group, got num_groups={num_groups}")
    if num_channels % num_groups != 0:
        fits = [d for d in _divisors(num_channels) if d <= num_groups]
        raise ValueError(
            f"{what}={num_channels} is not divisible by the GroupNorm group count {num_groups}: "
            f"GroupNorm splits channels into equal groups. Use a group count that divides {num_channels} "
            f"(the largest one up to {num_groups} is {fits[-1]}), or change the channel count to a "
            f"multiple of {num_groups}."
        )


class ResnetBlock2D(nn.Module):
    """Residual block with GroupNorm, SiLU and an optional time embedding, as in Stable Diffusion.

    ``x (B, in_channels, H, W)``, ``temb (B, temb_channels)`` -> ``(B, out_channels, H, W)``.
    ``temb_channels=None`` builds a block without time embedding (the SD autoencoder's blocks).
    Parameter names equal diffusers' ``ResnetBlock2D``: norm1, conv1, time_emb_proj, norm2,
    dropout, conv2, conv_shortcut. The U-Net uses ``eps=1e-5``, the autoencoder ``eps=1e-6``.
    Defined in notebook 02_resnet_blocks.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 groups: int = 32, eps: float = 1e-5, dropout: float = 0.0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        check_group_norm(in_channels, groups, "in_channels")
        check_group_norm(out_channels, groups, "out_channels")
        self.in_channels, self.out_channels, self.temb_channels = in_channels, out_channels, temb_channels

        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        # The time embedding is projected to one shift per channel, added after the first conv.
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # The skip path needs a 1x1 conv only when the channel count changes.
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1)
                              if in_channels != out_channels else None)

    def _check_inputs(self, x: torch.Tensor, temb: torch.Tensor | None) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResnetBlock2D expects x of shape (B, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}; pass a 4-D tensor with {self.in_channels} channels or build "
                             f"the block with in_channels={x.shape[1] if x.ndim == 4 else '...'}")
        if self.time_emb_proj is None and temb is not None:
            raise ValueError("this ResnetBlock2D was built with temb_channels=None and takes no time "
                             "embedding; call it as block(x), or build it with temb_channels set")
        if self.time_emb_proj is not None:
            if temb is None:
                raise ValueError(f"this ResnetBlock2D was built with temb_channels={self.temb_channels}; "
                                 f"pass temb of shape (B, {self.temb_channels}), or build it with "
                                 "temb_channels=None for a block without time embedding")
            if temb.ndim != 2 or temb.shape != (x.shape[0], self.temb_channels):
                raise ValueError(f"temb should have shape ({x.shape[0]}, {self.temb_channels}) = "
                                 f"(batch, temb_channels), got {tuple(temb.shape)}")

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, temb)
        h = self.conv1(F.silu(self.norm1(x)))                  # (B, C_in, H, W) -> (B, C_out, H, W)
        if self.time_emb_proj is not None:
            t = self.time_emb_proj(F.silu(temb))               # (B, T) -> (B, C_out)
            h = h + t[:, :, None, None]                        # broadcast over H and W
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h
