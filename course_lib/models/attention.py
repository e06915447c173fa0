"""Attention layers of Stable Diffusion's U-Net.

``AttentionBlock`` (self-attention over the pixels of a feature map) is defined in notebook 03_unet;
the text-conditioning parts (``CrossAttention``, ``GEGLU``, ``FeedForward``,
``BasicTransformerBlock``, ``SpatialTransformer``) in notebook 09_text_conditioning.
Attribute names follow diffusers (``Attention``, ``FeedForward``, ``BasicTransformerBlock``,
``Transformer2DModel``), so their state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.models.resnet import check_group_norm

__all__ = ["AttentionBlock", "CrossAttention", "GEGLU", "FeedForward", "BasicTransformerBlock",
           "SpatialTransformer", "multi_head_attention", "check_context_mask"]


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with ``heads`` heads: softmax(q k^T / sqrt(d)) v per head.

    ``q (B, N, heads*d)``, ``k, v (B, L, heads*d)`` -> ``(B, N, heads*d)``. ``key_mask (B, L)``
    (True/1: attend) leaves the masked keys out of the softmax: they get exactly zero weight.
    Supports notebook 03_unet (the mask in notebook 09_text_conditioning).
    """
    b, n, inner = q.shape
    d = inner // heads
    q = q.view(b, n, heads, d).transpose(1, 2)                 # (B, N, h*d) -> (B, h, N, d)
    k = k.view(b, -1, heads, d).transpose(1, 2)                # (B, L, h*d) -> (B, h, L, d)
    v = v.view(b, -1, heads, d).transpose(1, 2)
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]   # (B, L) -> (B, 1, 1, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N, d)
    return out.transpose(1, 2).reshape(b, n, inner)            # (B, h, N, d) -> (B, N, h*d)


def check_context_mask(context_mask: torch.Tensor | None, context: torch.Tensor | None) -> None:
    """A ``ValueError`` unless ``context_mask`` is None or a ``(B, L)`` mask of ``context (B, L, D)``
    with at least one token kept per row (a row of only masked tokens has no softmax).
    Supports notebook 09_text_conditioning.
    """
    if context_mask is None:
        return
    if context is None:
        raise ValueError("context_mask was given without a context; pass the context it masks")
    if context_mask.shape != context.shape[:2]:
        raise ValueError(f"context_mask should have shape {tuple(context.shape[:2])} = (batch, tokens) of the "
                         f"context, got {tuple(context_mask.shape)}")
    if not bool(context_mask.bool().any(dim=1).all()):
        raise ValueError("context_mask masks every token of a prompt; keep at least the start token (the "
                         "tokenizer's attention mask does)")


def _check_heads(channels: int, heads: int, what: str) -> None:
    if heads < 1 or channels % heads != 0:
        fits = [h for h in range(1, channels + 1) if channels % h == 0 and h <= max(heads, 1)]
        raise ValueError(f"{what}={channels} cannot be split into {heads} attention heads of equal size; "
                         f"use a head count that divides {channels} (for example {fits[-1]})")


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions of a feature map, with GroupNorm and a residual.

    ``x (B, C, H, W)`` -> ``(B, C, H, W)``: GroupNorm, then every pixel attends to every pixel
    (``num_heads`` heads of ``C // num_heads`` channels), a linear output projection, plus ``x``.
    Equal to diffusers' ``Attention(..., norm_num_groups=groups, residual_connection=True,
    bias=True)`` as used by ``UNet2DModel``'s AttnDownBlock2D / AttnUpBlock2D / mid block and the
    SD autoencoder's mid block (one head, ``eps=1e-6``); names group_norm, to_q, to_k, to_v,
    to_out.0. Defined in notebook 03_unet.
    """

    def __init__(self, channels: int, num_heads: int = 1, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        check_group_norm(channels, groups, "channels")
        _check_heads(channels, num_heads, "channels")
        self.channels, self.num_heads = channels, num_heads
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])  # diffusers' layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"AttentionBlock expects x of shape (B, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        b, c, height, width = x.shape
        h = self.group_norm(x)
        h = h.view(b, c, height * width).transpose(1, 2)         # (B, C, H, W) -> (B, H*W, C)
        h = multi_head_attention(self.to_q(h), self.to_k(h), self.to_v(h), self.num_heads)
        h = self.to_out[1](self.to_out[0](h))
        h = h.transpose(1, 2).reshape(b, c, height, width)       # (B, H*W, C) -> (B, C, H, W)
        return x + h


class CrossAttention(nn.Module):
    """Multi-head attention: queries from ``x``, keys and values from ``context`` (or from ``x``).

    ``x (B, N, query_dim)``, ``context (B, L, context_dim)`` -> ``(B, N, query_dim)``. With
    ``context=None`` it is self-attention (then ``context_dim`` must equal ``query_dim``).
    As in SD, to_q/to_k/to_v have no bias and to_out.0 has one. Equal to diffusers' ``Attention``
    with ``bias=False``. Defined in notebook 09_text_conditioning.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, head_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        context_dim = query_dim if context_dim is None else context_dim
        inner = heads * head_dim
        self.query_dim, self.context_dim, self.heads = query_dim, context_dim, heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context_mask (B, L)``: which context tokens to attend to (None: all, as SD does)."""
        if x.ndim != 3 or x.shape[-1] != self.query_dim:
            raise ValueError(f"CrossAttention expects x of shape (B, N, {self.query_dim}), "
                             f"got {tuple(x.shape)}")
        if context is None:
            context = x
        if context.ndim != 3 or context.shape[-1] != self.context_dim or context.shape[0] != x.shape[0]:
            raise ValueError(f"context should have shape ({x.shape[0]}, L, {self.context_dim}) = "
                             f"(batch, tokens, context_dim), got {tuple(context.shape)}")
        check_context_mask(context_mask, context)
        out = multi_head_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, context_mask)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Gated GELU: one linear layer makes a value and a gate, output = value * gelu(gate).

    ``(..., dim_in)`` -> ``(..., dim_out)``, exact (erf) GELU as in SD. Name ``proj`` as in
    diffusers. Supports notebook 09_text_conditioning.
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)            # (..., dim_in) -> 2 x (..., dim_out)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's position-wise MLP: GEGLU to ``mult * dim``, dropout, linear back to ``dim``.

    Names ``net.0.proj`` and ``net.2`` as in diffusers' ``FeedForward``.
    Supports notebook 09_text_conditioning.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, cross-attention to the context, feed-forward.

    ``x (B, N, dim)``, ``context (B, L, context_dim)`` -> ``(B, N, dim)``; each of the three
    sub-layers is ``x = x + sublayer(norm(x))``. With ``context_dim=None`` there is no
    cross-attention (norm2/attn2 are absent, as in diffusers). Names norm1, attn1, norm2, attn2,
    norm3, ff. Defined in notebook 09_text_conditioning.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, None, heads, head_dim, dropout)          # self-attention
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = CrossAttention(dim, context_dim, heads, head_dim, dropout)  # cross-attention
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on a context sequence.

    ``x (B, C, H, W)``, ``context (B, L, context_dim)`` -> ``(B, C, H, W)``: GroupNorm (eps 1e-6),
    ``proj_in`` (1x1 conv, or a linear layer with ``use_linear_projection=True`` as in SD 2),
    ``depth`` BasicTransformerBlocks over the H*W tokens, ``proj_out``, plus ``x``.
    Equal to diffusers' ``Transformer2DModel`` (continuous input). Defined in notebook 09_text_conditioning.
    """

    def __init__(self, in_channels: int, num_heads: int, head_dim: int, depth: int = 1,
                 context_dim: int | None = None, groups: int = 32, use_linear_projection: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        check_group_norm(in_channels, groups, "in_channels")
        inner = num_heads * head_dim
        self.in_channels, self.context_dim = in_channels, context_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner)
            self.proj_out = nn.Linear(inner, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, kernel_size=1)
            self.proj_out = nn.Conv2d(inner, in_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, num_heads, head_dim, context_dim, dropout) for _ in range(depth)])

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpatialTransformer expects x of shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if self.context_dim is None:
            if context is not None:
                raise ValueError("this SpatialTransformer was built with context_dim=None (self-attention "
                                 "only); call it without context, or build it with context_dim set")
            return
        if context is None:
            raise ValueError(f"this SpatialTransformer cross-attends to a context: pass context of shape "
                             f"(B, L, {self.context_dim}), for example text-encoder hidden states")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.context_dim:
            raise ValueError(f"context should have shape ({x.shape[0]}, L, {self.context_dim}) = "
                             f"(batch, tokens, context_dim), got {tuple(context.shape)}")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context_mask (B, L)``: which context tokens the cross-attention reads (None: all)."""
        self._check_inputs(x, context)
        b, c, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = h.permute(0, 2, 3, 1).reshape(b, height * width, c)     # (B, C, H, W) -> (B, H*W, C)
            h = self.proj_in(h)                                          # (B, H*W, C) -> (B, H*W, inner)
        else:
            h = self.proj_in(h)                                          # (B, C, H, W) -> (B, inner, H, W)
            h = h.permute(0, 2, 3, 1).reshape(b, height * width, -1)    # -> (B, H*W, inner)
        for block in self.transformer_blocks:
            h = block(h, context, context_mask)
        if self.use_linear_projection:
            h = self.proj_out(h)                                         # (B, H*W, inner) -> (B, H*W, C)
            h = h.reshape(b, height, width, c).permute(0, 3, 1, 2)      # -> (B, C, H, W)
        else:
            h = h.reshape(b, height, width, -1).permute(0, 3, 1, 2)     # (B, H*W, inner) -> (B, inner, H, W)
            h = self.proj_out(h)                                         # -> (B, C, H, W)
        return x + h
