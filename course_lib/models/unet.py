"""The denoising U-Net of Stable Diffusion. Defined in notebook 03_unet.

Shape of the network, for ``block_out_channels=(32, 64, 64)`` on a 32x32 input::

    conv_in                       32x32, 32 ch ----------------------------- skip ---+
    down_blocks.0  resnets (+attn), downsample -> 16x16                               |
    down_blocks.1  resnets (+attn), downsample ->  8x8                                |
    down_blocks.2  resnets (+attn)                                                    |
    mid_block      resnet, attention, resnet   (always has attention)                 |
    up_blocks.0    resnets (+attn) on [h, skip], upsample -> 16x16                    |
    up_blocks.1    resnets (+attn) on [h, skip], upsample -> 32x32                    |
    up_blocks.2    resnets (+attn) on [h, skip]                           <-----------+
    conv_norm_out, SiLU, conv_out -> noise prediction, same shape as the input

Every resnet gets the time embedding. With ``cross_attention_dim`` set, the attention at the
chosen levels is a ``SpatialTransformer`` that reads the text context, and the state-dict keys are
identical to diffusers' ``UNet2DConditionModel``; with ``cross_attention_dim=None`` it is a plain
self-attention ``AttentionBlock`` and the keys are identical to diffusers' ``UNet2DModel``.

The time embedding is in ``embeddings``, the down- and upsampling blocks in ``resample``, the residual
block in ``resnet``, the attention blocks in ``attention``; ``timestep_embedding``, ``TimestepEmbedding``,
``Downsample2D`` and ``Upsample2D`` are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from course_lib.models.attention import AttentionBlock, SpatialTransformer, check_context_mask
from course_lib.models.embeddings import TimestepEmbedding, timestep_embedding
from course_lib.models.resample import Downsample2D, Upsample2D
from course_lib.models.resnet import ResnetBlock2D, check_group_norm

__all__ = ["timestep_embedding", "TimestepEmbedding", "Downsample2D", "Upsample2D", "UNetConfig", "UNet"]


@dataclass
class UNetConfig:
    """Sizes of a ``UNet``. Defined in notebook 03_unet.

    Level ``i`` works at resolution ``sample_size / 2**i`` with ``block_out_channels[i]`` channels.
    ``attention_levels`` lists the levels (0 = full resolution) whose blocks have attention; the
    middle block always has it. ``cross_attention_dim=None`` makes an unconditional U-Net
    (self-attention blocks); an int makes it read a context ``(B, L, cross_attention_dim)`` through
    SpatialTransformers. Give either ``num_attention_heads`` (an int, or one per level; SD 1.x: 8)
    or ``attention_head_dim`` (channels per head; SD 2.x: 64), not both. The time embedding has
    ``4 * block_out_channels[0]`` features, as in SD.
    """

    in_channels: int = 3
    out_channels: int = 3
    sample_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (2,)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | None = None
    num_attention_heads: int | tuple[int, ...] | None = 4
    attention_head_dim: int | None = None
    transformer_depth: int = 1
    use_linear_projection: bool = False
    dropout: float = 0.0

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    def heads_at(self, level: int) -> int:
        """Number of attention heads at ``level`` (from num_attention_heads or attention_head_dim)."""
        channels = self.block_out_channels[level]
        if self.attention_head_dim is not None:
            return channels // self.attention_head_dim
        if isinstance(self.num_attention_heads, int):
            return self.num_attention_heads
        return self.num_attention_heads[level]

    def validate(self) -> None:
        """Raise a ``ValueError`` that says what to change if the sizes cannot build a U-Net."""
        chans = tuple(self.block_out_channels)
        if len(chans) < 1 or any(not isinstance(c, int) or c < 1 for c in chans):
            raise ValueError(f"block_out_channels must be a non-empty tuple of positive ints, got {chans}")
        for name in ("in_channels", "out_channels", "layers_per_block", "transformer_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for i, c in enumerate(chans):
            check_group_norm(c, self.norm_num_groups, f"block_out_channels[{i}]")
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(chans)]
        if bad:
            raise ValueError(f"attention_levels {tuple(self.attention_levels)} has levels {bad} outside "
                             f"0..{len(chans) - 1} (one level per entry of block_out_channels {chans})")
        factor = 2 ** (len(chans) - 1)
        if self.sample_size % factor != 0:
            raise ValueError(f"sample_size={self.sample_size} must be divisible by 2**(levels-1)={factor} "
                             f"for {len(chans)} levels; use e.g. "
                             f"{_nearby_multiples(self.sample_size, factor)}")
        if self.cross_attention_dim is not None and self.cross_attention_dim < 1:
            raise ValueError("cross_attention_dim must be a positive int or None, "
                             f"got {self.cross_attention_dim}")
        if (self.num_attention_heads is None) == (self.attention_head_dim is None):
            raise ValueError("give exactly one of num_attention_heads (heads per level, SD 1.x uses 8) and "
                             "attention_head_dim (channels per head, SD 2.x uses 64); set the other to None")
        heads = self.num_attention_heads
        if not isinstance(heads, int | None) and len(heads) != len(chans):
            raise ValueError(f"num_attention_heads {tuple(heads)} needs one entry per level "
                             f"({len(chans)} levels), or a single int")
        # The middle block always has attention, at the last level's width.
        for lvl in sorted(set(self.attention_levels) | {len(chans) - 1}):
            c, n_heads = chans[lvl], self.heads_at(lvl)
            if n_heads < 1 or c % n_heads != 0 or (self.attention_head_dim and c % self.attention_head_dim):
                how = (f"attention_head_dim={self.attention_head_dim}" if self.attention_head_dim
                       else f"{n_heads} heads")
                raise ValueError(f"block_out_channels[{lvl}]={c} cannot be split into attention heads with "
                                 f"{how}; choose a head count or head size that divides {c}")


def _nearby_multiples(size: int, factor: int) -> str:
    lower = max(factor, size // factor * factor)
    return f"{lower} or {lower + factor}" if lower != size else str(size)


def _attend(attn: nn.Module, h: torch.Tensor, context: torch.Tensor | None,
            context_mask: torch.Tensor | None = None) -> torch.Tensor:
    # SpatialTransformer reads the context (and its mask); the unconditional AttentionBlock does not.
    return attn(h, context, context_mask) if isinstance(attn, SpatialTransformer) else attn(h)


class DownBlock(nn.Module):
    """One encoder level: resnets (each followed by attention at attention levels), then an optional
    downsample. Returns the output and every intermediate map for the skip connections.
    Supports notebook 03_unet."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)        # empty at levels without attention
        self.downsamplers = nn.ModuleList([downsample]) if downsample is not None else None

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
                context_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if len(self.attentions) > 0:
                h = _attend(self.attentions[i], h, context, context_mask)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)                         # (B, C, H, W) -> (B, C, H/2, W/2)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    """The bottleneck: resnet, attention, resnet. Supports notebook 03_unet."""

    def __init__(self, resnets: list[nn.Module], attention: nn.Module):
        super().__init__()
        self.attentions = nn.ModuleList([attention])
        self.resnets = nn.ModuleList(resnets)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.resnets[0](h, temb)
        h = _attend(self.attentions[0], h, context, context_mask)
        return self.resnets[1](h, temb)


class UpBlock(nn.Module):
    """One decoder level: each resnet takes ``[h, skip]`` concatenated on channels (then attention at
    attention levels); then an optional upsample. Supports notebook 03_unet."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module], upsample: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.upsamplers = nn.ModuleList([upsample]) if upsample is not None else None

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor,
                context: torch.Tensor | None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            h = torch.cat([h, skips.pop()], dim=1)              # (B, C, H, W) + (B, C_skip, H, W)
            h = resnet(h, temb)
            if len(self.attentions) > 0:
                h = _attend(self.attentions[i], h, context, context_mask)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)                           # (B, C, H, W) -> (B, C, 2H, 2W)
        return h


class UNet(nn.Module):
    """Stable Diffusion's noise-prediction U-Net: ``forward(x, t, context=None)`` -> tensor shaped like x.

    ``x (B, in_channels, H, W)`` with H and W divisible by ``2**(levels-1)``; ``t`` an int, a float,
    a 0-d tensor or a ``(B,)`` tensor of timesteps; ``context (B, L, cross_attention_dim)`` for a
    conditional model (None for an unconditional one); ``context_mask (B, L)`` optionally keeps the
    cross-attention off some tokens (diffusers' ``encoder_attention_mask``; SD itself attends to all 77).
    State-dict keys are identical to diffusers' ``UNet2DConditionModel`` (conditional) or
    ``UNet2DModel`` (unconditional) of matching config.
    Defined in notebook 03_unet.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        chans, n = tuple(cfg.block_out_channels), cfg.num_levels
        temb_dim = cfg.time_embed_dim

        def resnet(c_in: int, c_out: int) -> ResnetBlock2D:
            return ResnetBlock2D(c_in, c_out, temb_dim, cfg.norm_num_groups, cfg.norm_eps, cfg.dropout)

        def attention(level: int) -> nn.Module:
            c, heads = chans[level], cfg.heads_at(level)
            if cfg.cross_attention_dim is None:
                return AttentionBlock(c, heads, cfg.norm_num_groups, cfg.norm_eps)
            return SpatialTransformer(c, heads, c // heads, cfg.transformer_depth, cfg.cross_attention_dim,
                                      cfg.norm_num_groups, cfg.use_linear_projection)

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb_dim)

        # Encoder. skip_channels records the channels of every map kept for the decoder.
        skip_channels = [chans[0]]
        self.down_blocks = nn.ModuleList()
        c_prev = chans[0]
        for level, c in enumerate(chans):
            resnets = [resnet(c_prev if j == 0 else c, c) for j in range(cfg.layers_per_block)]
            attns = [attention(level) for _ in resnets] if level in cfg.attention_levels else []
            down = Downsample2D(c) if level < n - 1 else None
            self.down_blocks.append(DownBlock(resnets, attns, down))
            skip_channels += [c] * (cfg.layers_per_block + (down is not None))
            c_prev = c

        self.mid_block = MidBlock([resnet(chans[-1], chans[-1]), resnet(chans[-1], chans[-1])],
                                  attention(n - 1))

        # Decoder: levels in reverse; each resnet eats one skip map, so one more resnet than the encoder.
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(n)):
            c = chans[level]
            resnets = []
            for j in range(cfg.layers_per_block + 1):
                resnets.append(resnet((c_prev if j == 0 else c) + skip_channels.pop(), c))
            attns = [attention(level) for _ in resnets] if level in cfg.attention_levels else []
            up = Upsample2D(c) if level > 0 else None
            self.up_blocks.append(UpBlock(resnets, attns, up))
            c_prev = c

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chans[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, kernel_size=3, padding=1)

    def _timesteps(self, t: int | float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Any accepted form of ``t`` -> a (B,) tensor on x's device."""
        b = x.shape[0]
        if not torch.is_tensor(t):
            if not isinstance(t, int | float):
                raise TypeError(f"t must be an int, a float or a tensor of timesteps, got {type(t).__name__}")
            return torch.full((b,), t, device=x.device,
                              dtype=torch.float32 if isinstance(t, float) else torch.long)
        if t.ndim == 0 or t.shape == (1,):
            return t.reshape(1).to(x.device).expand(b)
        if t.shape != (b,):
            raise ValueError(f"t should be a scalar or have shape ({b},) (one timestep per image), "
                             f"got {tuple(t.shape)}")
        return t.to(x.device)

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor | None,
                      context_mask: torch.Tensor | None = None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"the U-Net expects x of shape (B, {cfg.in_channels}, H, W), got "
                             f"{tuple(x.shape)}; pass {cfg.in_channels}-channel images or build it with "
                             "a different in_channels")
        factor = 2 ** (cfg.num_levels - 1)
        for name, size in (("height", x.shape[2]), ("width", x.shape[3])):
            if size % factor != 0:
                raise ValueError(f"image {name} {size} is not divisible by {factor} = 2**(levels-1) for "
                                 f"{cfg.num_levels} levels; use e.g. {_nearby_multiples(size, factor)} "
                                 "(pad or resize the input)")
        if cfg.cross_attention_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("this U-Net is unconditional (cross_attention_dim=None) and takes no "
                                 "context; call it as unet(x, t), or build it with cross_attention_dim set")
            return
        if context is None:
            raise ValueError(f"this U-Net is conditional (cross_attention_dim={cfg.cross_attention_dim}): "
                             f"pass context of shape (B, L, {cfg.cross_attention_dim}), e.g. text-encoder "
                             "hidden states (the empty prompt's for the unconditional branch of guidance)")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.cross_attention_dim:
            raise ValueError(f"context should have shape ({x.shape[0]}, L, {cfg.cross_attention_dim}) = "
                             f"(batch, tokens, cross_attention_dim), got {tuple(context.shape)}")
        check_context_mask(context_mask, context)

    def forward(self, x: torch.Tensor, t: int | float | torch.Tensor,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, context, context_mask)
        t_freq = timestep_embedding(self._timesteps(t, x), self.config.block_out_channels[0])
        temb = self.time_embedding(t_freq.to(x.dtype))                # (B, C0) -> (B, 4*C0)

        h = self.conv_in(x)                                           # (B, in, H, W) -> (B, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, context, context_mask)
            skips += block_skips
        h = self.mid_block(h, temb, context, context_mask)
        for block in self.up_blocks:
            h = block(h, skips, temb, context, context_mask)                       # pops its skips from the end
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))   # (B, C0, H, W) -> (B, out, H, W)
