"""Latents as tokens: patches and their 2-D sin/cos positions (SD 3's MMDiT). Defined in notebook 12_stable_diffusion_3.

``patchify`` / ``unpatchify`` cut a latent into non-overlapping patches and back; ``PatchEmbed`` (the
MMDiT's ``pos_embed``) projects each patch to a token with a strided convolution and adds the fixed
positions of ``sincos_pos_embed_2d``. Equal to diffusers' ``PatchEmbed`` and ``get_2d_sincos_pos_embed``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["patchify", "unpatchify", "sincos_pos_embed_2d", "PatchEmbed"]


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping patches: ``(B, C, H, W) -> (B, (H/p)*(W/p), p*p*C)``, row by row.

    A token's features are ordered (row in patch, column in patch, channel). ``PatchEmbed.proj``, a strided
    convolution, equals this followed by a linear layer. Defined in notebook 12_stable_diffusion_3.
    """
    b, c, height, width = x.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not divisible by patch_size={p}; pad or crop it")
    x = x.reshape(b, c, height // p, p, width // p, p)            # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)                                # -> (B, h, w, p, p, C)
    return x.reshape(b, (height // p) * (width // p), p * p * c)  # -> (B, h*w, p*p*C)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``patchify``: ``(B, (H/p)*(W/p), p*p*C) -> (B, C, H, W)``; diffusers' ``"nhwpqc->nchpwq"``.

    Defined in notebook 12_stable_diffusion_3.
    """
    b, p = tokens.shape[0], patch_size
    x = tokens.reshape(b, height // p, width // p, p, p, channels)  # (B, h*w, p*p*C) -> (B, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)                                 # -> (B, C, h, p, w, p)
    return x.reshape(b, channels, height, width)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, base_size: int | None = None,
                        interpolation_scale: float = 1.0) -> torch.Tensor:
    """Fixed sin/cos embedding of the positions of a ``grid_size x grid_size`` patch grid: ``(grid_size**2, D)``.

    Row-major like the tokens. The first D/2 features encode the patch's column (x), the last D/2 its row (y),
    each as ``[sin(pos * w), cos(pos * w)]`` with D/4 frequencies ``w = 10000**(-k/(D/4))``; positions are
    ``index * base_size / grid_size / interpolation_scale``. Equal to diffusers' ``get_2d_sincos_pos_embed``
    (in float32). Part of notebook 12_stable_diffusion_3's MMDiT (described there, not built separately).
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 (sin and cos for each of two axes)")
    base_size = grid_size if base_size is None else base_size
    pos = torch.arange(grid_size, dtype=torch.float32) / (grid_size / base_size) / interpolation_scale
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")                              # (g, g) each
    coords = torch.stack([cols.flatten(), rows.flatten()], dim=1).double()            # (g*g, 2): x, y
    quarter = embed_dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)   # (D/4,)
    angles = coords[:, :, None] * freqs                                               # (g*g, 2, D/4)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=2)                    # (g*g, 2, D/2)
    return emb.reshape(grid_size * grid_size, embed_dim).float()                      # (g*g, D): [x | y]


class PatchEmbed(nn.Module):
    """Latent to image tokens: strided conv ``proj`` plus sin/cos positions. ``(B, C, H, W) -> (B, h*w, D)``.

    With ``pos_embed_max_size`` the buffer ``pos_embed`` is a ``max x max`` table (in the state dict) and each
    input adds its centre ``h x w`` crop; without it, a table for the ``sample_size`` grid (not in the state
    dict). Same as diffusers' ``PatchEmbed``. Supports notebook 12_stable_diffusion_3.
    """

    def __init__(self, sample_size: int, patch_size: int, in_channels: int, embed_dim: int,
                 pos_embed_max_size: int | None = None):
        super().__init__()
        self.patch_size, self.in_channels, self.pos_embed_max_size = patch_size, in_channels, pos_embed_max_size
        self.grid = sample_size // patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        table = sincos_pos_embed_2d(embed_dim, pos_embed_max_size or self.grid, base_size=self.grid)
        self.register_buffer("pos_embed", table[None], persistent=pos_embed_max_size is not None)  # (1, S*S, D)

    def cropped_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The position embeddings of an ``h x w`` patch grid: ``(1, h*w, D)``."""
        size = self.pos_embed_max_size or self.grid
        if self.pos_embed_max_size is None and (h, w) != (size, size):
            raise ValueError(f"this model has positions for a {size}x{size} patch grid only, got {h}x{w}; pass "
                             f"latents of size {size * self.patch_size}, or build it with pos_embed_max_size")
        if h > size or w > size:
            raise ValueError(f"a {h}x{w} patch grid is larger than pos_embed_max_size={size}; pass latents of at "
                             f"most {size * self.patch_size}x{size * self.patch_size}")
        top, left = (size - h) // 2, (size - w) // 2
        table = self.pos_embed.reshape(size, size, -1)[top:top + h, left:left + w]  # (S*S, D) -> (h, w, D)
        return table.reshape(1, h * w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"expected latents (B, {self.in_channels}, H, W) with H and W divisible by "
                             f"patch_size={p}, got {tuple(x.shape)}")
        tokens = self.proj(x).flatten(2).transpose(1, 2)   # (B, C, H, W) -> (B, D, h, w) -> (B, h*w, D)
        return tokens + self.cropped_pos_embed(x.shape[2] // p, x.shape[3] // p).to(tokens.dtype)
