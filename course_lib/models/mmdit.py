"""The multimodal diffusion transformer (MMDiT), SD3's denoiser. Defined in notebook 12_stable_diffusion_3.

Instead of a U-Net, SD3 cuts the latent into patches and runs a plain transformer over two streams::

    latent (B, C, H, W) --pos_embed: patches + 2-D sin/cos positions--> image tokens (B, N, D)
    context (B, L, joint_attention_dim) --context_embedder--> text tokens (B, L, D)
    t, pooled text vector --time_text_embed--> temb (B, D)
    transformer_blocks: each stream has its own weights, but one attention runs over [image, text]
        tokens together; temb shifts, scales and gates every sub-layer (adaLN: diffusers'
        AdaLayerNormZero, default init); the last block updates only the image tokens
    norm_out (modulated by temb), proj_out, unpatchify -> prediction (B, out_channels, H, W)

Parameter names equal diffusers' ``SD3Transformer2DModel`` (SD 3.0: no qk-norm, no dual attention), so its
state dict loads with ``strict=True``. It is called like the course's ``UNet``: ``model(x, t, context, mask)``.

The patches and positions are in ``patch_embed``, the time-and-text embedding in ``embeddings``; their
public names (``patchify``, ``PatchEmbed``, ``TimeTextEmbedding``, ...) are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.models.attention import check_context_mask, multi_head_attention
from course_lib.models.embeddings import TimeTextEmbedding
from course_lib.models.patch_embed import PatchEmbed, patchify, sincos_pos_embed_2d, unpatchify

__all__ = ["MMDiTConfig", "patchify", "unpatchify", "sincos_pos_embed_2d", "PatchEmbed", "AdaLayerNormZero",
           "AdaLayerNormContinuous", "JointAttention", "GELUFeedForward", "JointTransformerBlock",
           "TimeTextEmbedding", "pooled_from_context", "MMDiT"]


@dataclass
class MMDiTConfig:
    """Sizes of an ``MMDiT`` (as diffusers' ``SD3Transformer2DModel``). Defined in notebook 12_stable_diffusion_3.

    A ``sample_size`` latent becomes ``(sample_size / patch_size)**2`` tokens of width D = ``hidden_size``.
    ``pos_embed_max_size=None``: a position table for that grid only; an int: a larger table whose centre is
    cropped for each input, so smaller or non-square latents work too (SD3: 192).
    """

    sample_size: int = 8
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 4
    num_layers: int = 4
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    joint_attention_dim: int = 64
    caption_projection_dim: int = 128
    pooled_projection_dim: int = 64
    pos_embed_max_size: int | None = None

    @property
    def hidden_size(self) -> int:
        """D = num_attention_heads * attention_head_dim, the width of every token."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def cross_attention_dim(self) -> int:
        """Width of the context it reads (the name the course's pipeline checks on the U-Net)."""
        return self.joint_attention_dim

    def validate(self) -> None:
        """Raise a ``ValueError`` that says what to change if the sizes cannot build an MMDiT."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not (f.name == "pos_embed_max_size" and value is None) and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{f.name} must be a positive int, got {value!r}")
        if self.sample_size % self.patch_size != 0:
            fits = ", ".join(str(p) for p in range(1, self.sample_size + 1) if self.sample_size % p == 0)
            raise ValueError(f"patch_size={self.patch_size} does not divide sample_size={self.sample_size}: the latent "
                             f"would not split into whole patches; use one of {fits}")
        d = self.hidden_size
        if d % 4 != 0:
            raise ValueError(f"hidden size num_attention_heads*attention_head_dim = {d} must be divisible by 4 "
                             "(sin and cos for each of the two axes of the position embedding)")
        if self.caption_projection_dim != d:
            raise ValueError(f"caption_projection_dim={self.caption_projection_dim} must equal the hidden size "
                             f"num_attention_heads*attention_head_dim = {d} (text and image tokens share one "
                             f"attention); set caption_projection_dim={d}")
        grid = self.sample_size // self.patch_size
        if self.pos_embed_max_size is not None and self.pos_embed_max_size < grid:
            raise ValueError(f"pos_embed_max_size={self.pos_embed_max_size} is smaller than the patch grid "
                             f"{grid}x{grid}; use at least {grid}, or None")


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero: ``linear(silu(temb))`` gives shift, scale, gate for the attention and for the MLP.

    Returns ``(norm(x) * (1 + scale_msa) + shift_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)``, LayerNorm
    without affine, eps 1e-6, as diffusers' module. Supports notebook 12_stable_diffusion_3.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mods = self.linear(self.silu(temb)).chunk(6, dim=1)              # (B, D) -> (B, 6D) -> 6 x (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]  # (B, N, D)
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormContinuous(nn.Module):
    """``norm(x) * (1 + scale) + shift`` with ``scale, shift = linear(silu(cond))`` (in that order, unlike
    adaLN-Zero's shift first); ``norm_out`` and the last block's text norm. Part of notebook
    12_stable_diffusion_3's MMDiT (described there, not built separately).
    """

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(cond).to(x.dtype)).chunk(2, dim=1)  # (B, C) -> (B, 2D) -> 2 x (B, D)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class JointAttention(nn.Module):
    """One attention over ``[image, text]`` tokens together, each stream with its own projections.

    ``x (B, N, D)``, ``context (B, L, D)`` -> ``(x_out (B, N, D), context_out (B, L, D) or None)``;
    ``context_mask (B, L)`` (True: a real token) hides padding text keys. With ``context_pre_only`` (last
    block) text tokens are only keys and values: no ``to_add_out``, and their queries are skipped (diffusers
    computes and drops them; ``add_q_proj`` stays for the state dict). Defined in notebook 12_stable_diffusion_3.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_pre_only: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.context_pre_only = heads, context_pre_only
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])   # diffusers' layout
        self.to_add_out = None if context_pre_only else nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = x.shape[1]
        k = torch.cat([self.to_k(x), self.add_k_proj(context)], dim=1)     # (B, N+L, inner)
        v = torch.cat([self.to_v(x), self.add_v_proj(context)], dim=1)
        # Image keys are always attended: pad the text mask with N Trues in front, (B, L) -> (B, N+L).
        key_mask = None if context_mask is None else F.pad(context_mask.bool(), (n, 0), value=True)
        if self.context_pre_only:
            out = multi_head_attention(self.to_q(x), k, v, self.heads, key_mask)  # (B, N, inner)
            return self.to_out[1](self.to_out[0](out)), None
        q = torch.cat([self.to_q(x), self.add_q_proj(context)], dim=1)    # (B, N+L, inner)
        out = multi_head_attention(q, k, v, self.heads, key_mask)          # (B, N+L, inner)
        x_out, context_out = out[:, :n], out[:, n:]
        return self.to_out[1](self.to_out[0](x_out)), self.to_add_out(context_out)


class GELUFeedForward(nn.Module):
    """Each stream's MLP: linear to 4D, tanh-GELU, linear back; names ``net.0.proj``, ``net.2`` as diffusers'
    ``FeedForward(activation_fn="gelu-approximate")``. Supports notebook 12_stable_diffusion_3.
    """

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.0 only holds the first linear layer, named "proj" as in diffusers' GELU module.
        self.net = nn.ModuleList([nn.ModuleDict({"proj": nn.Linear(dim, mult * dim)}), nn.Dropout(0.0),
                                  nn.Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.net[0]["proj"](x), approximate="tanh")           # (B, N, D) -> (B, N, 4D)
        return self.net[2](self.net[1](h))                                # -> (B, N, D)


class JointTransformerBlock(nn.Module):
    """One MMDiT block: joint attention, then an MLP per stream, each ``h + gate * f(norm(h) * (1 + scale) + shift)``.

    ``x (B, N, D)``, ``context (B, L, D)``, ``temb (B, D)`` -> ``(x, context)`` (diffusers returns the other
    order). With ``context_pre_only`` (the last block) the context comes back as None and ``norm2_context``,
    ``ff_context`` are absent. Supports notebook 12_stable_diffusion_3.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_pre_only: bool = False):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormContinuous(dim, dim) if context_pre_only else AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, heads, head_dim, context_pre_only)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = GELUFeedForward(dim)
        self.norm2_context = None if context_pre_only else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = None if context_pre_only else GELUFeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        if self.context_pre_only:
            c = self.norm1_context(context, temb)
        else:
            c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(context, temb)
        attn_x, attn_c = self.attn(h, c, context_mask)
        x = x + gate_msa[:, None] * attn_x
        x = x + gate_mlp[:, None] * self.ff(self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
        if self.context_pre_only:
            return x, None
        context = context + c_gate_msa[:, None] * attn_c
        c = self.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        return x, context + c_gate_mlp[:, None] * self.ff_context(c)


def pooled_from_context(context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """Each row's state at its last unmasked position (the end token: the course's CLIP pooled output).

    ``context (B, L, C)``, ``context_mask (B, L)`` -> ``(B, C)``. Part of notebook 12_stable_diffusion_3's MMDiT
    (described there, not built separately).
    """
    positions = torch.arange(context.shape[1], device=context.device)
    last = torch.where(context_mask.bool(), positions, -1).amax(dim=1)          # (B,)
    return context[torch.arange(context.shape[0], device=context.device), last]


class MMDiT(nn.Module):
    """SD3's denoiser: ``forward(x, t, context, context_mask=None, pooled=None)`` -> ``(B, out_channels, H, W)``.

    ``x (B, in_channels, H, W)`` latents; ``t`` a number or ``(B,)`` float timesteps in [0, 1000] (SD3 passes
    sigma * 1000); ``context (B, L, joint_attention_dim)``; ``context_mask (B, L)`` (True: a real token) or
    None; ``pooled (B, pooled_projection_dim)``, or None for each row's last unmasked context state.
    State-dict keys equal diffusers' ``SD3Transformer2DModel``. Defined in notebook 12_stable_diffusion_3.
    """

    # Under torchrun, DDP must allow parameters without a gradient: the last block keeps text-query weights
    # (add_q_proj) that it never uses, so that SD 3's weights load with strict=True.
    ddp_find_unused_parameters = True

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        d = cfg.hidden_size
        self.pos_embed = PatchEmbed(cfg.sample_size, cfg.patch_size, cfg.in_channels, d, cfg.pos_embed_max_size)
        self.time_text_embed = TimeTextEmbedding(d, cfg.pooled_projection_dim)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, cfg.caption_projection_dim)
        self.transformer_blocks = nn.ModuleList(
            [JointTransformerBlock(d, cfg.num_attention_heads, cfg.attention_head_dim, i == cfg.num_layers - 1)
             for i in range(cfg.num_layers)])
        self.norm_out = AdaLayerNormContinuous(d, d)
        self.proj_out = nn.Linear(d, cfg.patch_size ** 2 * cfg.out_channels)

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
                      pooled: torch.Tensor | None) -> None:
        cfg, b = self.config, x.shape[0]
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"the MMDiT expects latents of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if context is None or context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.joint_attention_dim:
            raise ValueError(f"context should have shape ({b}, L, {cfg.joint_attention_dim}) = (batch, tokens, "
                             f"joint_attention_dim), got {None if context is None else tuple(context.shape)}")
        check_context_mask(context_mask, context)
        if pooled is None:
            if context_mask is None:
                raise ValueError("the MMDiT needs a pooled text vector: pass pooled= (the text encoder's pooled "
                                 "output) or a context_mask (then it takes each prompt's last unmasked token)")
            if cfg.pooled_projection_dim != cfg.joint_attention_dim:
                raise ValueError(f"pooled=None takes it from the context, whose width {cfg.joint_attention_dim} "
                                 f"differs from pooled_projection_dim={cfg.pooled_projection_dim}; pass pooled=")
        elif pooled.shape != (b, cfg.pooled_projection_dim):
            raise ValueError(f"pooled should have shape ({b}, {cfg.pooled_projection_dim}), got {tuple(pooled.shape)}")

    def forward(self, x: torch.Tensor, t: float | torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, context, context_mask, pooled)
        cfg, (b, _, height, width) = self.config, x.shape
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(b)                                      # one timestep for the whole batch
        elif t.shape != (b,):
            raise ValueError(f"t should be a number or have shape ({b},) (one per image), got {tuple(t.shape)}")
        if pooled is None:
            pooled = pooled_from_context(context, context_mask)
        temb = self.time_text_embed(t, pooled.to(x.dtype))                 # (B,), (B, P) -> (B, D)
        h = self.pos_embed(x)                                               # (B, C, H, W) -> (B, N, D)
        c = self.context_embedder(context)                                  # (B, L, joint) -> (B, L, D)
        for block in self.transformer_blocks:
            h, c = block(h, c, temb, context_mask)
        h = self.proj_out(self.norm_out(h, temb))                          # (B, N, D) -> (B, N, p*p*out)
        return unpatchify(h, cfg.patch_size, cfg.out_channels, height, width)
