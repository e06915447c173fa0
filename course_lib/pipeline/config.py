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

SD 3 (notebook 12_stable_diffusion_3) ships diffusers folders, not such a YAML; the course writes its
rectified-flow transformer the same way as above (``configs/shapeworld-mmdit-flow.yaml``):
``parameterization: flow`` (no ``linear_start``/``linear_end``), ``shift`` (SD 3's scheduler_config
``shift: 3.0``), and a ``unet_config`` whose target is ``MMDiTModel``, with the keys of diffusers'
``SD3Transformer2DModel`` config (``patch_size``, ``num_layers``, ``attention_head_dim``, ...).

SD loads one ``.ckpt`` for the whole model; here each part names its checkpoint in
``data/manifest.json`` with ``ckpt_path`` (SD's own key for a part's weights), checksum verified.

This module reads a config and builds the whole model (``load_config``, ``instantiate_from_config``,
``LatentDiffusion``, ``build_from_config``). The targets of the parts are in ``config_parts``
(``UNetModel``, ``MMDiTModel``, ``AutoencoderKL``, ``FrozenCLIPEmbedder``), the comparison with what
the checkpoints record and the errors in ``config_checks``; all are importable from here, so a
config's ``target: course_lib.pipeline.config.UNetModel`` works.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from course_lib.core.paths import REPO_ROOT
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule
from course_lib.pipeline.config_checks import (
    ConfigError,
    ConfigMismatchWarning,
    _recorded_schedule,
    checkpoint_differences,
)
from course_lib.pipeline.config_parts import AutoencoderKL, FrozenCLIPEmbedder, MMDiTModel, UNetModel
from course_lib.pipeline.text_to_image import TextToImagePipeline

__all__ = ["ConfigError", "ConfigMismatchWarning", "checkpoint_differences", "SHIPPED_CONFIG",
           "load_config", "instantiate_from_config", "build_from_config",
           "LatentDiffusion", "UNetModel", "MMDiTModel", "AutoencoderKL", "FrozenCLIPEmbedder"]

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


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config into plain dicts and lists. Defined in notebook 10_full_sampler."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the course's config is {SHIPPED_CONFIG}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix that line (indentation with spaces, "
                          f"'key: value' pairs), or compare with {SHIPPED_CONFIG}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a UTF-8 text file ({err}); a config is a YAML text file") from None
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(f"{path} must have a top-level 'model:' entry with 'target' and 'params' "
                          f"(as Stable Diffusion's configs do); see {SHIPPED_CONFIG.name}")
    return config


def _import(target: str, where: str) -> Any:
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ConfigError(f"{where}.target must be a dotted import path like 'course_lib.pipeline.config.UNetModel', "
                          f"got {target!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}.target {target!r} cannot be imported ({e})") from e


def instantiate_from_config(config: dict[str, Any], where: str = "model", **extra) -> Any:
    """Import ``config["target"]`` and call it with ``config["params"]`` (plus ``extra``), as SD does.

    Nested ``*_config`` params are passed on as dicts; the target instantiates them. A missing
    ``target``, a missing or unknown parameter is a ``ConfigError`` naming the key.
    Supports notebook 10_full_sampler.
    """
    if not isinstance(config, dict) or "target" not in config:
        raise ConfigError(f"{where} needs a 'target' key (a Python path such as course_lib.pipeline.config.UNetModel) "
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


def LatentDiffusion(unet_config: dict[str, Any], first_stage_config: dict[str, Any],  # noqa: N802
                    cond_stage_config: dict[str, Any], timesteps: int, image_size: int, channels: int,
                    scale_factor: float, linear_start: float | None = None, linear_end: float | None = None,
                    parameterization: str = "eps", shift: float | None = None,
                    conditioning_key: str = "crossattn", beta_schedule: str = "linear",
                    use_bf16: bool | None = None, device: str | torch.device = "cpu", strict: bool = True,
                    where: str = "model") -> TextToImagePipeline:
    """The whole text-to-image model from SD's ``LatentDiffusion`` params (named after SD's class).

    SD's ``beta_schedule: linear`` is ``linspace(sqrt(start), sqrt(end), T) ** 2``, which diffusers
    and the course call ``scaled_linear``. ``parameterization: flow`` (notebook 12_stable_diffusion_3) is
    a rectified-flow model: no betas, ``shift`` the default timestep shift of its Euler sampler.
    ``use_bf16`` (if given) overrides the U-Net config's.
    The config is compared with what the checkpoints record (``checkpoint_differences``): any
    difference stops with a ``ConfigError`` listing them all, or with ``strict=False`` is warned as a
    ``ConfigMismatchWarning``. Supports notebook 10_full_sampler.
    """
    if conditioning_key != "crossattn":
        raise ConfigError(f"{where}.params.conditioning_key must be 'crossattn' (text through cross-attention), "
                          f"got {conditioning_key!r}")
    kinds = {"linear": "scaled_linear", "cosine": "cosine"}
    if beta_schedule not in kinds:
        raise ConfigError(f"{where}.params.beta_schedule must be 'linear' (SD's) or 'cosine', got {beta_schedule!r}")
    prediction = {"eps": "epsilon", "v": "v_prediction", "flow": FLOW_PREDICTION}.get(parameterization)
    if prediction is None:
        raise ConfigError(f"{where}.params.parameterization must be 'eps', 'v' or 'flow' (rectified flow, SD 3), "
                          f"got {parameterization!r}")
    schedule: NoiseSchedule | FlowMatchSchedule
    if prediction == FLOW_PREDICTION:
        if linear_start is not None or linear_end is not None:
            raise ConfigError(f"{where}.params: linear_start and linear_end describe a noise schedule, which a "
                              "rectified-flow model (parameterization: flow) does not have; remove them")
        try:
            schedule = FlowMatchSchedule(num_train_timesteps=timesteps, shift=1.0 if shift is None else shift)
        except ValueError as e:
            raise ConfigError(f"{where}.params: {e}") from e
    elif shift is not None:
        raise ConfigError(f"{where}.params.shift is the timestep shift of a rectified-flow model's sampler; "
                          f"parameterization {parameterization!r} has none: remove it, or use parameterization: flow")
    elif linear_start is None or linear_end is None:
        raise ConfigError(f"{where}.params needs linear_start and linear_end (SD: 0.00085 and 0.0120) for "
                          f"parameterization {parameterization!r}")
    else:
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
        pipe = TextToImagePipeline(cond.tokenizer, cond.text_encoder, unet, vae, schedule, prediction,
                                   use_bf16=bf16, device=device, mask_padding=cond.mask_padding)
    except ValueError as e:
        raise ConfigError(f"{where}: the parts do not fit together: {e}") from e
    differences = checkpoint_differences(
        unet_config, first_stage_config, cond_stage_config, unet=unet, vae=vae, text_encoder=cond.text_encoder,
        schedule=schedule, prediction_type=prediction,
        layer=_sub(cond_stage_config, "params", where).get("layer", "last"), where=where,
        mask_padding=getattr(cond, "mask_padding", None))
    if differences:
        listed = "\n  - ".join(differences)
        if strict:
            raise ConfigError(f"the config differs from what its checkpoints were trained with:\n  - {listed}\n"
                              "Restore those settings (see configs/shapeworld-inference.yaml), or, to experiment on "
                              "purpose, build with strict=False (command line: --no-strict)")
        warnings.warn(f"the config differs from what its checkpoints were trained with (strict=False):\n  - {listed}",
                      ConfigMismatchWarning, stacklevel=2)
    if strict:  # samplers.sample then refuses another schedule for this U-Net (strict=False: experiments)
        pipe.unet.training_schedule = _recorded_schedule(unet_config) or schedule


    return pipe


def build_from_config(config: str | Path | dict[str, Any] = SHIPPED_CONFIG, *, use_bf16: bool | None = None,
                      device: str | torch.device = "cpu", strict: bool = True) -> TextToImagePipeline:
    """A ``TextToImagePipeline`` from a YAML file (or its dict), weights loaded and verified.

    ``use_bf16``: ``None`` keeps the config's ``use_bf16``. The config must agree with what each
    checkpoint records (U-Net sizes and norm groups, the schedule, the parameterization, the text
    encoder and its layer, the autoencoder) and name every part's ``ckpt_path``; otherwise a
    ``ConfigError`` lists the differences. ``strict=False`` builds anyway and warns them (a
    ``ConfigMismatchWarning``), for experiments on purpose. Defined in notebook 10_full_sampler.
    """
    config = load_config(config) if isinstance(config, str | Path) else copy.deepcopy(config)
    if "model" not in config:
        raise ConfigError("the config must have a top-level 'model:' entry with 'target' and 'params'")
    return instantiate_from_config(config["model"], "model", use_bf16=use_bf16, device=device, strict=strict)
