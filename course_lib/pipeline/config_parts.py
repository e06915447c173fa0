"""The parts of a Stable-Diffusion-style config, under SD's class names.

What the configs of notebook 10_full_sampler name as their parts' targets.

The ``target`` of each part of ``configs/shapeworld-inference.yaml`` (written as
``course_lib.pipeline.config.UNetModel`` and so on; ``config`` re-exports them): ``UNetModel`` (SD's
``unet_config`` keys), ``MMDiTModel`` (diffusers' ``SD3Transformer2DModel`` keys, notebook 12),
``AutoencoderKL`` (``first_stage_config``) and ``FrozenCLIPEmbedder`` (``cond_stage_config``). Each
builds the course's network and fills it with the checkpoint its ``ckpt_path`` names.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from course_lib.core.checkpoints import load_state_dict_checked, load_weights
from course_lib.core.paths import data_dir
from course_lib.models.clip import CLIPTextConfig, CLIPTextEncoder
from course_lib.models.mmdit import MMDiT, MMDiTConfig
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.models.unet import UNet, UNetConfig
from course_lib.models.vae import AutoencoderConfig
from course_lib.models.vae import AutoencoderKL as _AutoencoderKL
from course_lib.pipeline.config_checks import ConfigError

__all__ = ["UNetModel", "MMDiTModel", "AutoencoderKL", "FrozenCLIPEmbedder"]


def _load_part(module: torch.nn.Module, ckpt_path: str | None, where: str, prefix: str = "") -> None:
    """Fill ``module`` with the weights of checkpoint ``ckpt_path`` (a name in data/manifest.json)."""
    if ckpt_path is None:
        return
    state, _ = load_weights(ckpt_path)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict_checked(module, state, what=f"checkpoint {ckpt_path!r} named by {where}.params.ckpt_path")


def UNetModel(image_size: int, in_channels: int, out_channels: int, model_channels: int,  # noqa: N802
              channel_mult: list[int], num_res_blocks: int, attention_resolutions: list[int],
              context_dim: int, num_head_channels: int = -1, num_heads: int = -1,
              use_linear_in_transformer: bool = False, transformer_depth: int = 1, norm_num_groups: int = 32,
              use_bf16: bool = False, ckpt_path: str | None = None, where: str = "unet_config") -> UNet:
    """The U-Net from SD's ``UNetModel`` keys (named after SD's class, ``ldm...openaimodel.UNetModel``).

    ``attention_resolutions`` are downsampling factors (1 = full resolution); ``norm_num_groups``
    is not an SD key (SD always uses 32). ``use_bf16`` is read by ``LatentDiffusion``.
    Supports notebook 10_full_sampler.
    """
    levels = []
    for ds in attention_resolutions:
        level = int(round(math.log2(ds))) if ds >= 1 else -1
        if 2 ** level != ds or not 0 <= level < len(channel_mult):
            raise ConfigError(f"{where}.params.attention_resolutions: {ds} is not a downsampling factor of this "
                              f"U-Net (powers of two from 1 to {2 ** (len(channel_mult) - 1)})")
        levels.append(level)
    if (num_head_channels == -1) == (num_heads == -1):
        raise ConfigError(f"{where}.params: give exactly one of num_head_channels (SD 2: 64) and num_heads (SD 1: 8)")
    config = UNetConfig(in_channels=in_channels, out_channels=out_channels, sample_size=image_size,
                        block_out_channels=tuple(model_channels * m for m in channel_mult),
                        layers_per_block=num_res_blocks, attention_levels=tuple(sorted(levels)),
                        norm_num_groups=norm_num_groups, cross_attention_dim=context_dim,
                        num_attention_heads=None if num_heads == -1 else num_heads,
                        attention_head_dim=None if num_head_channels == -1 else num_head_channels,
                        transformer_depth=transformer_depth, use_linear_projection=use_linear_in_transformer)
    try:
        unet = UNet(config)
    except ValueError as e:
        raise ConfigError(f"{where}.params cannot build a U-Net: {e}") from e
    _load_part(unet, ckpt_path, where)
    return unet.eval()


def MMDiTModel(sample_size: int, patch_size: int, in_channels: int, out_channels: int, num_layers: int,  # noqa: N802
               attention_head_dim: int, num_attention_heads: int, joint_attention_dim: int,
               caption_projection_dim: int, pooled_projection_dim: int, pos_embed_max_size: int | None = None,
               use_bf16: bool = False, ckpt_path: str | None = None, where: str = "unet_config") -> MMDiT:
    """SD 3's multimodal diffusion transformer from the keys of diffusers' ``SD3Transformer2DModel`` config.

    ``use_bf16`` is read by ``LatentDiffusion``. Supports notebook 12_stable_diffusion_3.
    """
    try:
        model = MMDiT(MMDiTConfig(sample_size=sample_size, patch_size=patch_size, in_channels=in_channels,
                                  out_channels=out_channels, num_layers=num_layers,
                                  attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
                                  joint_attention_dim=joint_attention_dim,
                                  caption_projection_dim=caption_projection_dim,
                                  pooled_projection_dim=pooled_projection_dim, pos_embed_max_size=pos_embed_max_size))
    except ValueError as e:
        raise ConfigError(f"{where}.params cannot build an MMDiT: {e}") from e
    _load_part(model, ckpt_path, where)
    return model.eval()


def AutoencoderKL(embed_dim: int, ddconfig: dict[str, Any], scale_factor: float = 0.18215,  # noqa: N802
                  ckpt_path: str | None = None, where: str = "first_stage_config") -> _AutoencoderKL:
    """The KL autoencoder from SD's ``first_stage_config`` keys (``ddconfig``: ch, ch_mult, z_channels, ...).

    ``scale_factor`` comes from the model's top-level params. Defined in notebook 08_latent_autoencoder.
    """
    dd = dict(ddconfig)
    for key in ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch"):
        if key not in dd:
            raise ConfigError(f"{where}.params.ddconfig is missing {key!r}")
    if dd["z_channels"] != embed_dim:
        raise ConfigError(f"{where}.params: embed_dim {embed_dim} and ddconfig.z_channels {dd['z_channels']} "
                          "differ; SD's KL autoencoders use the same number")
    if dd.get("attn_resolutions"):
        raise ConfigError(f"{where}.params.ddconfig.attn_resolutions must be [] (SD's autoencoder has attention "
                          "only in its middle block)")
    config = AutoencoderConfig(in_channels=dd["in_channels"], out_channels=dd["out_ch"],
                               block_out_channels=tuple(dd["ch"] * m for m in dd["ch_mult"]),
                               layers_per_block=dd["num_res_blocks"], latent_channels=embed_dim,
                               norm_num_groups=dd.get("norm_num_groups", 32), scaling_factor=scale_factor)
    try:
        vae = _AutoencoderKL(config)
    except ValueError as e:
        raise ConfigError(f"{where}.params cannot build an autoencoder: {e}") from e
    _load_part(vae, ckpt_path, where)
    return vae.eval()


class FrozenCLIPEmbedder:
    """The tokenizer and the frozen CLIP text encoder (SD's ``cond_stage_config``).

    ``tokenizer``: a folder under ``data/`` with ``vocab.json`` + ``merges.txt``; ``text_config``:
    transformers-style ``CLIPTextConfig`` fields; ``ckpt_path``: a checkpoint holding the text encoder,
    with ``prefix`` in front of its keys (the course's contrastive model stores it under
    ``text_encoder.``); ``layer``: ``"last"`` (SD 1) or ``"penultimate"`` (SD 2: the last block
    is dropped, then the final LayerNorm applied); ``mask_padding`` (not an SD key): the U-Net was
    trained to read only each prompt's own tokens, the padding masked out of its cross-attention
    (SD reads all 77 positions). Supports notebook 10_full_sampler.
    """

    def __init__(self, tokenizer: str, text_config: dict[str, Any], layer: str = "last", max_length: int = 77,
                 ckpt_path: str | None = None, prefix: str = "", mask_padding: bool = False,
                 where: str = "cond_stage_config"):
        if layer not in ("last", "penultimate"):
            raise ConfigError(f"{where}.params.layer must be 'last' or 'penultimate', got {layer!r}")
        self.tokenizer = CLIPStyleTokenizer.from_folder(data_dir() / tokenizer)
        if self.tokenizer.context_length != max_length:
            raise ConfigError(f"{where}.params.max_length is {max_length} but the tokenizer's context is "
                              f"{self.tokenizer.context_length}")
        self.mask_padding = bool(mask_padding)
        self.text_encoder = CLIPTextEncoder(CLIPTextConfig(**text_config))
        _load_part(self.text_encoder, ckpt_path, where, prefix)
        if layer == "penultimate":
            del self.text_encoder.encoder.layers[-1]
        self.text_encoder.eval()
