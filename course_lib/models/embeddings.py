"""Time embeddings: how a denoiser learns the timestep. Defined in notebook 03_unet.

``timestep_embedding`` turns timesteps ``(B,)`` into sinusoidal features, ``TimestepEmbedding`` is the
MLP after it (the U-Net's ``time_embedding``); ``TimeTextEmbedding`` adds a projected pooled text vector
to it, as SD 3's MMDiT does (notebook 12_stable_diffusion_3). Shared by ``unet``, ``mmdit`` and the
toy denoiser of notebook 01.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["timestep_embedding", "TimestepEmbedding", "TimeTextEmbedding"]


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding of the timesteps ``t (B,)`` -> ``(B, dim)`` float32.

    Frequencies run geometrically from 1 down to about 1/max_period; the output is
    ``[cos(t f), sin(t f)]`` (SD's order, ``flip_sin_to_cos=True``) or ``[sin, cos]``. Equal to
    diffusers' ``get_timestep_embedding`` with the same arguments. Defined in notebook 03_unet.
    """
    if not torch.is_tensor(t) or t.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D tensor of timesteps (B,), got "
                         f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}; "
                         "use torch.tensor([t]) for a single timestep")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))                    # (half,)
    angles = t[:, None].float() * freqs[None, :]                                   # (B, half)
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)            # (B, 2*half)
    else:
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))                                                   # odd dim: pad one zero
    return emb


class TimestepEmbedding(nn.Module):
    """MLP from the sinusoidal embedding to the time vector each resnet receives: linear, SiLU, linear.

    ``(B, in_dim)`` -> ``(B, time_embed_dim)``. Names linear_1, act, linear_2 as in diffusers.
    Defined in notebook 03_unet.
    """

    def __init__(self, in_dim: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """``temb = timestep_embedder(sincos(t, 256)) + text_embedder(pooled)``: ``(B,), (B, P) -> (B, D)``.

    Both are linear, SiLU, linear (diffusers' text one, ``PixArtAlphaTextProjection``, has the same parameters).
    Equal to diffusers' ``CombinedTimestepTextProjEmbeddings``. Part of notebook 12_stable_diffusion_3's MMDiT
    (described there, not built separately).
    """

    def __init__(self, dim: int, pooled_dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.text_embedder = TimestepEmbedding(pooled_dim, dim)

    def forward(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)  # (B,) -> (B, 256)
        return self.timestep_embedder(t_freq.to(pooled.dtype)) + self.text_embedder(pooled)
