"""Stable-Diffusion-style YAML configs: ``target`` + ``params``, instantiated the way SD does it.

Defined in notebook 10_full_sampler.

Stable Diffusion describes a model in a YAML file (``configs/stable-diffusion/v2-inference.yaml``):
every object is a ``target`` (a Python import path) and its ``params``, and
``instantiate_from_config`` imports the target and calls it with the params, recursively for
the U-Net (``unet_config``), the autoencoder (``first_stage_config``) and the text encoder
(``cond_stage_config``). The course's ``configs/shapeworld-inference.yaml`` is written the same way,
with SD's key names wherever they mean the same thing, so that reading one teaches the other::

    SD (v2-inference-bf16.yaml)          here                         course_lib
    linear_start / linear_end / timesteps  the same                   make_schedule("scaled_linear", ...)
    parameterization: "v" (absent: eps)  the same                     prediction_type
    scale_factor: 0.18215                the value measured in nb 08  AutoencoderConfig.scaling_factor
    model_channels * channel_mult        the same                     UNetConfig.block_out_channels
    num_res_blocks                       the same                     UNetConfig.layers_per_block
    attention_resolutions [4, 2, 1]      the same (downsampling ds)   UNetConfig.attention_levels (log2 ds)
    num_head_channels: 64                the same                     UNetConfig.attention_head_dim
    use_linear_in_transformer            the same                     UNetConfig.use_linear_projection
    context_dim: 1024                    64 (our text encoder)        UNetConfig.cross_attention_dim
    use_bf16: True                       the same                     TextToImagePipeline(use_bf16=...)
    ddconfig: ch * ch_mult, z_channels   the same                     AutoencoderConfig
    layer: "penultimate"                 "last" or "penultimate"      text encoder truncated by one block

SD loads one ``.ckpt`` for the whole model; here each part names its checkpoint in
``data/manifest.json`` with ``ckpt_path`` (SD's own key for a part's weights), checksum verified.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import torch
import yaml

from .checkpoints import load_state_dict_checked, load_weights
from .clip import CLIPTextConfig, CLIPTextEncoder
from .paths import REPO_ROOT, data_dir
from .pipeline import TextToImagePipeline
from .schedules import make_schedule
from .tokenizer import CLIPStyleTokenizer
from .unet import UNet, UNetConfig
from .vae import AutoencoderConfig
from .vae import AutoencoderKL as _AutoencoderKL

__all__ = ["ConfigError", "SHIPPED_CONFIG", "load_config", "instantiate_from_config", "build_from_config",
           "LatentDiffusion", "UNetModel", "AutoencoderKL", "FrozenCLIPEmbedder"]

SHIPPED_CONFIG = REPO_ROOT / "configs" / "shapeworld-inference.yaml"

# Keys of SD's LatentDiffusion that only matter for training; accepted and ignored at inference.
TRAINING_ONLY_KEYS = {"first_stage_key", "cond_stage_key", "log_every_t", "loss_type", "monitor", "use_ema",
                      "cond_stage_trainable", "scale_by_std", "num_timesteps_cond", "ckpt_path",
                      "ignore_keys", "load_only_unet", "cosine_s", "given_betas", "original_elbo_weight",
                      "l_simple_weight", "learn_logvar", "logvar_init", "v_posterior", "clip_denoised",
                      "unet_trainable", "concat_mode", "cond_stage_forward", "lossconfig", "scheduler_config",
                      "use_checkpoint", "legacy", "use_fp16", "num_heads", "num_heads_upsample", "dims",
                      "use_scale_shift_norm", "resblock_updown", "use_spatial_transformer",
                      "conv_resample", "freeze", "device", "arch", "version"}


class ConfigError(ValueError):
    """A config that cannot build the model; the message names the key and what to fix."""


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config into plain dicts and lists. Defined in notebook 10_full_sampler."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the course's config is {SHIPPED_CONFIG}")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(f"{path} must have a top-level 'model:' entry with 'target' and 'params' "
                          f"(as Stable Diffusion's configs do); see {SHIPPED_CONFIG.name}")
    return config


def _import(target: str, where: str) -> Any:
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ConfigError(f"{where}.target must be a dotted import path like 'course_lib.config.UNetModel', "
                          f"got {target!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}.target {target!r} cannot be imported ({e})") from e


def instantiate_from_config(config: dict[str, Any], where: str = "model", **extra) -> Any:
    """Import ``config["target"]`` and call it with ``config["params"]`` (plus ``extra``), as SD does.

    Nested ``*_config`` params are passed on as dicts; the target instantiates them. A missing
    ``target``, a missing or unknown parameter is a ``ConfigError`` naming the key.
    Defined in notebook 10_full_sampler.
    """
    if not isinstance(config, dict) or "target" not in config:
        raise ConfigError(f"{where} needs a 'target' key (a Python path such as course_lib.config.UNetModel) "
                          f"and its 'params'; got {sorted(config) if isinstance(config, dict) else config!r}")
    target = _import(config["target"], where)
    params = {**(config.get("params") or {}), **extra}
    sig = inspect.signature(target)
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = sorted(k for k in params if k not in sig.parameters and k not in TRAINING_ONLY_KEYS)
    if unknown and not accepts_any:
        raise ConfigError(f"{where}.params has unknown key(s) {unknown}; {config['target']} takes "
                          f"{[k for k in sig.parameters if k != 'where']}")
    params = {k: v for k, v in params.items() if k in sig.parameters or accepts_any}
    if "where" in sig.parameters:
        params["where"] = where
    missing = [name for name, p in sig.parameters.items()
               if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in params]
    if missing:
        raise ConfigError(f"{where}.params is missing {', '.join(repr(m) for m in missing)} "
                          f"(needed by {config['target']}); see {SHIPPED_CONFIG.name} for an example")
    return target(**params)


def _sub(config: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    if key not in config:
        raise ConfigError(f"{where} is missing {key!r}")
    return config[key]


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
    Defined in notebook 10_full_sampler.
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


def AutoencoderKL(embed_dim: int, ddconfig: dict[str, Any], scale_factor: float = 0.18215,  # noqa: N802
                  ckpt_path: str | None = None, where: str = "first_stage_config") -> _AutoencoderKL:
    """The KL autoencoder from SD's ``first_stage_config`` keys (``ddconfig``: ch, ch_mult, z_channels, ...).

    ``scale_factor`` comes from the model's top-level params. Defined in notebook 10_full_sampler.
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
    is dropped, then the final LayerNorm applied). Defined in notebook 10_full_sampler.
    """

    def __init__(self, tokenizer: str, text_config: dict[str, Any], layer: str = "last", max_length: int = 77,
                 ckpt_path: str | None = None, prefix: str = "", where: str = "cond_stage_config"):
        if layer not in ("last", "penultimate"):
            raise ConfigError(f"{where}.params.layer must be 'last' or 'penultimate', got {layer!r}")
        self.tokenizer = CLIPStyleTokenizer.from_folder(data_dir() / tokenizer)
        if self.tokenizer.context_length != max_length:
            raise ConfigError(f"{where}.params.max_length is {max_length} but the tokenizer's context is "
                              f"{self.tokenizer.context_length}")
        self.text_encoder = CLIPTextEncoder(CLIPTextConfig(**text_config))
        _load_part(self.text_encoder, ckpt_path, where, prefix)
        if layer == "penultimate":
            del self.text_encoder.encoder.layers[-1]
        self.text_encoder.eval()


def LatentDiffusion(unet_config: dict[str, Any], first_stage_config: dict[str, Any],  # noqa: N802
                    cond_stage_config: dict[str, Any], linear_start: float, linear_end: float, timesteps: int,
                    image_size: int, channels: int, scale_factor: float, parameterization: str = "eps",
                    conditioning_key: str = "crossattn", beta_schedule: str = "linear",
                    use_bf16: bool | None = None, device: str | torch.device = "cpu",
                    where: str = "model") -> TextToImagePipeline:
    """The whole text-to-image model from SD's ``LatentDiffusion`` params (named after SD's class).

    SD's ``beta_schedule: linear`` is ``linspace(sqrt(start), sqrt(end), T) ** 2``, which diffusers
    and the course call ``scaled_linear``. ``use_bf16`` (if given) overrides the U-Net config's.
    Defined in notebook 10_full_sampler.
    """
    if conditioning_key != "crossattn":
        raise ConfigError(f"{where}.params.conditioning_key must be 'crossattn' (text through cross-attention), "
                          f"got {conditioning_key!r}")
    kinds = {"linear": "scaled_linear", "cosine": "cosine"}
    if beta_schedule not in kinds:
        raise ConfigError(f"{where}.params.beta_schedule must be 'linear' (SD's) or 'cosine', got {beta_schedule!r}")
    prediction = {"eps": "epsilon", "v": "v_prediction"}.get(parameterization)
    if prediction is None:
        raise ConfigError(f"{where}.params.parameterization must be 'eps' or 'v', got {parameterization!r}")
    schedule = (make_schedule("scaled_linear", timesteps, beta_start=linear_start, beta_end=linear_end)
                if beta_schedule == "linear" else make_schedule("cosine", timesteps))

    unet_params = _sub(unet_config, "params", f"{where}.params.unet_config")
    bf16 = bool(unet_params.get("use_bf16", False)) if use_bf16 is None else use_bf16
    unet = instantiate_from_config(unet_config, f"{where}.params.unet_config")
    vae = instantiate_from_config(first_stage_config, f"{where}.params.first_stage_config", scale_factor=scale_factor)
    cond = instantiate_from_config(cond_stage_config, f"{where}.params.cond_stage_config")
    if unet.config.sample_size != image_size or unet.config.in_channels != channels:
        raise ConfigError(f"{where}.params: image_size {image_size} and channels {channels} (the latent's) differ "
                          f"from unet_config's image_size {unet.config.sample_size} and in_channels "
                          f"{unet.config.in_channels}")
    try:
        return TextToImagePipeline(cond.tokenizer, cond.text_encoder, unet, vae, schedule, prediction,
                                   use_bf16=bf16, device=device)
    except ValueError as e:
        raise ConfigError(f"{where}: the parts do not fit together: {e}") from e


def build_from_config(config: str | Path | dict[str, Any] = SHIPPED_CONFIG, *, use_bf16: bool | None = None,
                      device: str | torch.device = "cpu") -> TextToImagePipeline:
    """A ``TextToImagePipeline`` from a YAML file (or its dict), weights loaded and verified.

    ``use_bf16``: ``None`` keeps the config's ``use_bf16``. Defined in notebook 10_full_sampler.
    """
    config = load_config(config) if isinstance(config, str | Path) else copy.deepcopy(config)
    if "model" not in config:
        raise ConfigError("the config must have a top-level 'model:' entry with 'target' and 'params'")
    return instantiate_from_config(config["model"], "model", use_bf16=use_bf16, device=device)
