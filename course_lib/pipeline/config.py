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
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from course_lib.core.checkpoints import load_state_dict_checked, load_weights, read_manifest
from course_lib.models.clip import CLIPTextConfig, CLIPTextEncoder
from course_lib.models.mmdit import MMDiT, MMDiTConfig
from course_lib.core.paths import REPO_ROOT, data_dir
from course_lib.pipeline.text_to_image import TextToImagePipeline
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.models.unet import UNet, UNetConfig
from course_lib.models.vae import AutoencoderConfig
from course_lib.models.vae import AutoencoderKL as _AutoencoderKL

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


class ConfigError(ValueError):
    """A config that cannot build the model; the message names the key and what to fix."""


class ConfigMismatchWarning(UserWarning):
    """``build_from_config(..., strict=False)``: the config differs from what its checkpoints record."""


def _recorded(ckpt_path: str | None) -> dict[str, Any] | None:
    """The config a checkpoint was saved with (its JSON next to the weights), or None if unknown."""
    if not ckpt_path:
        return None
    entry = read_manifest().get(ckpt_path)
    path = data_dir() / entry["config"] if isinstance(entry, dict) and "config" in entry else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("config")
    except (json.JSONDecodeError, AttributeError):
        return None


def _recorded_schedule(unet_config: dict[str, Any]) -> NoiseSchedule | FlowMatchSchedule | None:
    rec = _recorded((unet_config.get("params") or {}).get("ckpt_path")) or {}
    sched = dict(rec.get("schedule") or {})
    try:
        if sched.get("name") == FlowMatchSchedule.name:
            sched.pop("name")
            return FlowMatchSchedule(**sched)
        return make_schedule(sched.pop("name"), sched.pop("T"), **sched) if sched else None
    except (KeyError, TypeError, ValueError):
        return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = (a, b)
    if all(isinstance(v, float | int) and not isinstance(v, bool) for v in numbers):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    return a == b


def _compare(built: Any, recorded: dict[str, Any] | None, what: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Fields of the dataclass ``built`` that differ from ``recorded`` (fields either lacks are skipped)."""
    if not recorded:
        return []
    out = []
    for f in dataclasses.fields(built):
        if f.name in recorded and f.name not in skip and not _same(getattr(built, f.name), recorded[f.name]):
            out.append(f"{what}: {f.name} is {getattr(built, f.name)!r} here but {recorded[f.name]!r} in the "
                       "checkpoint")
    return out


def checkpoint_differences(unet_config: dict[str, Any], first_stage_config: dict[str, Any],
                           cond_stage_config: dict[str, Any], *, unet: UNet | MMDiT, vae: _AutoencoderKL,
                           text_encoder: CLIPTextEncoder, schedule: NoiseSchedule | FlowMatchSchedule,
                           prediction_type: str,
                           layer: str, where: str = "model", mask_padding: bool | None = None) -> list[str]:
    """Every way the built model differs from what its checkpoints record, one line each.

    Compared: each part's ``ckpt_path`` (a part without one keeps random weights); the U-Net's
    config (norm groups, heads, ...), the schedule (name, ``timesteps``, ``linear_start``/``linear_end``)
    and the parameterization against the U-Net checkpoint's JSON; the text encoder's layer the U-Net
    was trained on (the course's training reads the last layer unless the JSON records
    ``text_encoder_layer``); the autoencoder's config (norm groups, ``scale_factor``) and the text
    encoder's config against theirs. Defined in notebook 10_full_sampler.
    """
    out = []
    parts = ((unet_config, "unet_config", "the U-Net"), (first_stage_config, "first_stage_config", "the autoencoder"),
             (cond_stage_config, "cond_stage_config", "the text encoder"))
    for cfg, key, name in parts:
        if not (cfg.get("params") or {}).get("ckpt_path"):
            out.append(f"{where}.params.{key}.params.ckpt_path is missing: {name} would keep random weights")
    rec = _recorded((unet_config.get("params") or {}).get("ckpt_path"))
    if rec:
        out += _compare(unet.config, rec.get("unet", rec.get("mmdit")), f"{where}.params.unet_config",
                        skip=("dropout",))
        sched = dict(rec.get("schedule") or {})
        if "num_train_timesteps" in sched:      # a FlowMatchSchedule's config
            sched["T"] = sched["num_train_timesteps"]
        names = {"scaled_linear": "linear", "cosine": "cosine"}
        if FlowMatchSchedule.name in (sched.get("name"), schedule.name) and sched.get("name") != schedule.name:
            here, there = ("with rectified flow (parameterization: flow)" if name == FlowMatchSchedule.name
                           else "on a noise schedule" for name in (schedule.name, sched.get("name")))
            out.append(f"{where}.params.parameterization: the config builds a model {here} but the checkpoint was "
                       f"trained {there}")
        elif sched.get("name") and sched["name"] != schedule.name:
            out.append(f"{where}.params.beta_schedule is {names.get(schedule.name, schedule.name)!r} here but the "
                       "U-Net "
                       f"was trained with {names.get(sched['name'], sched['name'])!r}")
        if "T" in sched and sched["T"] != schedule.num_train_timesteps:
            out.append(f"{where}.params.timesteps is {schedule.num_train_timesteps} here but {sched['T']} in the "
                       "checkpoint")
        for key, sd_key in (("beta_start", "linear_start"), ("beta_end", "linear_end")):
            params = getattr(schedule, "params", {})
            if key in sched and key in params and not _same(params[key], sched[key]):
                out.append(f"{where}.params.{sd_key} is {schedule.params[key]!r} here but {sched[key]!r} in the "
                           "checkpoint")
        recorded_prediction = rec.get("prediction_type")
        if recorded_prediction and recorded_prediction != prediction_type:
            sd = {"epsilon": "eps", "v_prediction": "v", FLOW_PREDICTION: "flow"}
            out.append(f"{where}.params.parameterization is {sd.get(prediction_type, prediction_type)!r} here but the "
                       f"U-Net predicts {sd.get(recorded_prediction, recorded_prediction)!r}")
        recorded_layer = rec.get("text_encoder_layer", (rec.get("training") or {}).get("text_encoder_layer", "last"))
        if layer != recorded_layer:
            out.append(f"{where}.params.cond_stage_config.params.layer is {layer!r} here but the U-Net was trained on "
                       f"the text encoder's {recorded_layer!r} layer")
        recorded_mask = rec.get("mask_padding", (rec.get("training") or {}).get("mask_padding"))
        if mask_padding is not None and recorded_mask is not None and bool(mask_padding) != bool(recorded_mask):
            out.append(f"{where}.params.cond_stage_config.params.mask_padding is {bool(mask_padding)} here but "
                       f"{bool(recorded_mask)} in the U-Net checkpoint")
    vae_rec = _recorded((first_stage_config.get("params") or {}).get("ckpt_path"))
    out += _compare(vae.config, vae_rec,
                    f"{where}.params.first_stage_config (scale_factor: {where}.params.scale_factor)")
    text_rec = _recorded((cond_stage_config.get("params") or {}).get("ckpt_path"))
    if text_rec and isinstance(text_rec.get("text"), dict):
        text_rec = text_rec["text"]
    if text_rec:
        out += _compare(text_encoder.config, text_rec, f"{where}.params.cond_stage_config.params.text_config")
    return out


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
    Defined in notebook 10_full_sampler.
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


def MMDiTModel(sample_size: int, patch_size: int, in_channels: int, out_channels: int, num_layers: int,  # noqa: N802
               attention_head_dim: int, num_attention_heads: int, joint_attention_dim: int,
               caption_projection_dim: int, pooled_projection_dim: int, pos_embed_max_size: int | None = None,
               use_bf16: bool = False, ckpt_path: str | None = None, where: str = "unet_config") -> MMDiT:
    """SD 3's multimodal diffusion transformer from the keys of diffusers' ``SD3Transformer2DModel`` config.

    ``use_bf16`` is read by ``LatentDiffusion``. Defined in notebook 12_stable_diffusion_3.
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
    is dropped, then the final LayerNorm applied); ``mask_padding`` (not an SD key): the U-Net was
    trained to read only each prompt's own tokens, the padding masked out of its cross-attention
    (SD reads all 77 positions). Defined in notebook 10_full_sampler.
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
    ``ConfigMismatchWarning``. Defined in notebook 10_full_sampler.
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
