"""Loading public weights: one module that maps names, nowhere else. Defined in notebook 11_real_weights.

A Stable Diffusion checkpoint in diffusers' format (what the Hugging Face Hub serves and what
``StableDiffusionPipeline.save_pretrained`` writes) is a folder of parts::

    model_index.json                      which class each part is
    unet/config.json + diffusion_pytorch_model.safetensors
    vae/config.json + diffusion_pytorch_model.safetensors
    text_encoder/config.json + model.safetensors
    tokenizer/vocab.json + merges.txt (or tokenizer.json), tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json

    pipe = load_diffusers_pipeline(folder)            # the course's own TextToImagePipeline
    pipe("The hare is juggling balls", style="sai-fantasy art", sampler="ddim", steps=20)

The rules, all of them:

1. **Weight names need no mapping.** The course's U-Net and autoencoder use diffusers' parameter
   names, its text encoder transformers' names; the only renaming is dropping the ``text_model.``
   prefix that transformers 4.x files have and 5.x files do not (``clip.load_hf_clip_text_state_dict``).
2. **U-Net config.** ``CrossAttnDownBlock2D`` at level ``i`` puts ``i`` in ``attention_levels``
   (``DownBlock2D``: no attention), and ``up_block_types`` must mirror the down blocks;
   diffusers' ``attention_head_dim`` is really the *number of heads* (one int, SD 1: 8, or one per
   level, SD 2: ``[5, 10, 20, 20]`` = 64 channels per head), so it becomes ``num_attention_heads``;
   ``transformer_layers_per_block`` becomes ``transformer_depth``; the sizes keep their names.
   Every setting the course's U-Net has built in (sinusoidal time embedding with cos first, SiLU,
   no class or added embeddings, ...) must have diffusers' default value, or loading stops.
3. **Autoencoder config.** Sizes and ``scaling_factor`` keep their names; the blocks must be
   ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``.
4. **Text encoder config.** transformers' ``CLIPTextConfig`` fields keep their names
   (``CLIPTextConfig.from_hf_config``): SD 1's CLIP ViT-L/14 (12 layers, width 768, quick_gelu) and
   SD 2's OpenCLIP ViT-H/14 (width 1024, exact gelu). SD 2 reads the *penultimate* layer: its
   folder simply stores 23 of the 24 layers, so ``last_hidden_state`` is that layer.
5. **Tokenizer.** The same byte-level BPE; the pad token is read the way transformers reads it
   (``special_tokens_map.json`` first, then ``tokenizer_config.json``): SD 1 pads with
   ``<|endoftext|>``, SD 2 with ``!``.
6. **Scheduler config.** ``beta_schedule``, ``beta_start``, ``beta_end`` (or ``trained_betas``)
   give the noise schedule, ``prediction_type`` what the U-Net predicts (SD 2.x 768: ``v_prediction``);
   the timestep conventions become sampler options (``sampler_options``).

Weights are read from safetensors only, never from pickled ``.bin`` files (unpickling runs code).
A folder that does not fit raises a ``CheckpointError`` naming the first part that does not.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from course_lib.models.clip import CLIPTextConfig, CLIPTextEncoder, load_hf_clip_text_state_dict
from course_lib.diffusion.forward import PREDICTION_TYPES
from course_lib.pipeline.text_to_image import TextToImagePipeline
from course_lib.diffusion.samplers import SAMPLERS, SPACINGS, available_samplers
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule
from course_lib.models.tokenizer import EOS_TOKEN, CLIPStyleTokenizer
from course_lib.models.unet import UNet, UNetConfig
from course_lib.models.vae import AutoencoderConfig, AutoencoderKL

__all__ = [
    "CheckpointError",
    "load_diffusers_pipeline",
    "unet_config_from_diffusers",
    "vae_config_from_diffusers",
    "text_config_from_transformers",
    "load_tokenizer",
    "schedule_from_config",
    "sampler_options",
    "scheduler_sampler",
    "pipeline_scheduler_config",
    "SchedulerSettingWarning",
    "download_pipeline",
    "PARTS",
]

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# model_index.json: the class each part must be (the first name is diffusers' or transformers').
PART_CLASSES = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
}
WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_META_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


class CheckpointError(ValueError):
    """A diffusers folder that the course's loader cannot read, with the part that does not fit.

    Defined in notebook 11_real_weights.
    """


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} is missing; a diffusers Stable Diffusion folder has "
                              "model_index.json and the parts " + ", ".join(PARTS))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: {path} should hold a JSON object, got {type(data).__name__}")
    return data


def _weight_files(part_dir: Path, stem: str, variant: str | None) -> list[Path]:
    """The safetensors file(s) of one part: a single file or the shards of an index."""
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    single, index = part_dir / name, part_dir / f"{name}.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index, part_dir.name).get("weight_map", {})
        return [part_dir / f for f in sorted(set(weight_map.values()))]
    pickles = sorted(p.name for p in part_dir.glob("*.bin")) + sorted(p.name for p in part_dir.glob("*.ckpt"))
    if pickles:
        raise CheckpointError(
            f"{part_dir.name}: only pickled weights ({', '.join(pickles)}), no {name}. The course reads "
            "safetensors only, because unpickling a file can run any code it contains: convert the folder "
            "once where you trust it (diffusers: StableDiffusionPipeline.from_pretrained(folder)"
            ".save_pretrained(new_folder, safe_serialization=True)), or download the model's safetensors")
    others = sorted(p.name for p in part_dir.glob("*.safetensors"))
    hint = f" (it has {', '.join(others)}: pass variant= to choose one)" if others else ""
    raise CheckpointError(f"{part_dir.name}: {single} is missing{hint}")


def _read_weights(part_dir: Path, stem: str, variant: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(part_dir, stem, variant):
        if not path.is_file():
            raise CheckpointError(f"{part_dir.name}: the shard {path.name} named in the index is missing")
        try:
            state.update(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{part_dir.name}: {path} is not a readable safetensors file ({type(err).__name__}: "
                                  f"{err}); it is damaged or incomplete: download that file again") from None
    return state


def _load_module_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], part: str) -> None:
    """``load_state_dict(strict=True)``, with an error that lists what does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{what} ({len(keys)}): {keys[:5]}" for what, keys in
                 (("shape mismatches", wrong), ("missing keys", missing), ("unexpected keys", unexpected)) if keys]
        raise CheckpointError(f"{part}: the weights do not fit the model built from {part}/config.json: "
                              + "; ".join(parts))
    module.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------
# Config rules
# ----------------------------------------------------------------------------------------------

def _is_off(value: Any) -> bool:
    """Unknown settings are harmless when they switch nothing on (None, False, empty)."""
    return value is None or value is False or value == [] or value == {}


def _check_settings(config: Mapping[str, Any], part: str, used: set[str], fixed: Mapping[str, Any],
                    ignored: Mapping[str, str]) -> None:
    """Every key is used, ignored with a reason, or must hold the value the course has built in."""
    for key, value in config.items():
        if key in used or key in ignored or key in _META_KEYS:
            continue
        if key in fixed:
            allowed = fixed[key] if isinstance(fixed[key], tuple) else (fixed[key],)
            flat = value if isinstance(value, list) and all(v == value[0] for v in value) and value else [value]
            if flat[0] not in allowed:
                raise CheckpointError(
                    f"{part}/config.json: {key}={value!r} is not supported; the course's code has "
                    f"{key}={allowed[0]!r} built in (Stable Diffusion 1.x and 2.x use that)")
        elif not _is_off(value):
            raise CheckpointError(f"{part}/config.json: {key}={value!r} is a setting the course's loader does "
                                  "not know, so it cannot promise to compute what diffusers computes")


def _one_int(value: Any, part: str, key: str) -> int:
    """An int, or a list of equal ints (diffusers allows one value per level)."""
    if isinstance(value, list | tuple):
        if not value or any(v != value[0] for v in value):
            raise CheckpointError(f"{part}/config.json: {key}={value!r} differs between levels; the course's "
                                  f"U-Net has one {key} for all levels")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{part}/config.json: {key} must be an int, got {value!r}")
    return value


UNET_FIXED = {  # diffusers' defaults, which the course's U-Net has built in
    "act_fn": "silu", "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "dual_cross_attention": False, "only_cross_attention": False, "mid_block_only_cross_attention": (None, False),
    "class_embed_type": None, "num_class_embeds": None, "class_embeddings_concat": False,
    "addition_embed_type": None, "addition_time_embed_dim": None, "projection_class_embeddings_input_dim": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
    "cross_attention_norm": None, "reverse_transformer_layers_per_block": None,
}
UNET_IGNORED = {
    "upcast_attention": "computes attention scores in float32 when the model runs in float16; no change in float32",
    "addition_embed_type_num_heads": "only used with addition_embed_type",
    "dropout": "only active in training",
}


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """The course's ``UNetConfig`` from diffusers' ``unet/config.json`` (rules in the module docstring).

    Raises a ``CheckpointError`` naming the first setting the course's U-Net does not have.
    Defined in notebook 11_real_weights.
    """
    part = "unet"
    cls = config.get("_class_name", "UNet2DConditionModel")
    if cls not in PART_CLASSES[part]:
        raise CheckpointError(f"unet/config.json: _class_name {cls!r} is not a UNet2DConditionModel")
    required = ("block_out_channels", "cross_attention_dim", "sample_size")
    absent = [k for k in required if config.get(k) is None]
    if absent:
        raise CheckpointError(f"unet/config.json: {', '.join(absent)} missing; the course needs it to build the U-Net")
    chans = tuple(config["block_out_channels"])
    down = list(config.get("down_block_types", ()))
    up = list(config.get("up_block_types", ()))
    for key, blocks, names in (("down_block_types", down, ("CrossAttnDownBlock2D", "DownBlock2D")),
                               ("up_block_types", up, ("CrossAttnUpBlock2D", "UpBlock2D"))):
        if len(blocks) != len(chans):
            raise CheckpointError(f"unet/config.json: {key} has {len(blocks)} entries for {len(chans)} levels "
                                  f"(block_out_channels={list(chans)})")
        for i, block in enumerate(blocks):
            if block not in names:
                raise CheckpointError(f"unet/config.json: {key}[{i}]={block!r} is not a block the course has "
                                      f"(it has {' and '.join(names)})")
    attention_levels = tuple(i for i, b in enumerate(down) if b == "CrossAttnDownBlock2D")
    mirrored = ["CrossAttnUpBlock2D" if lvl in attention_levels else "UpBlock2D" for lvl in reversed(range(len(chans)))]
    if up != mirrored:
        raise CheckpointError(f"unet/config.json: up_block_types={up} do not mirror down_block_types={down}; "
                              f"the course's U-Net has attention at the same levels on both sides ({mirrored})")
    cross = config["cross_attention_dim"]
    if isinstance(cross, list | tuple):
        cross = _one_int(cross, part, "cross_attention_dim")
    # diffusers' attention_head_dim of UNet2DConditionModel is the number of heads (a historic naming slip)
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = tuple(heads) if isinstance(heads, list | tuple) else heads
    size = config["sample_size"]
    if isinstance(size, list | tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise CheckpointError(f"unet/config.json: sample_size={size!r} is not square; the course's pipeline "
                                  "makes square latents")
        size = size[0]
    used = {"in_channels", "out_channels", "sample_size", "block_out_channels", "layers_per_block",
            "down_block_types", "up_block_types", "norm_num_groups", "norm_eps", "cross_attention_dim",
            "attention_head_dim", "num_attention_heads", "transformer_layers_per_block", "use_linear_projection"}
    _check_settings(config, part, used, UNET_FIXED, UNET_IGNORED)
    unet_config = UNetConfig(
        in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4), sample_size=size,
        block_out_channels=chans,
        layers_per_block=_one_int(config.get("layers_per_block", 2), part, "layers_per_block"),
        attention_levels=attention_levels, norm_num_groups=config.get("norm_num_groups", 32),
        norm_eps=config.get("norm_eps", 1e-5), cross_attention_dim=cross, num_attention_heads=heads,
        attention_head_dim=None,
        transformer_depth=_one_int(config.get("transformer_layers_per_block", 1), part, "transformer_layers_per_block"),
        use_linear_projection=bool(config.get("use_linear_projection", False)))
    try:
        unet_config.validate()
    except ValueError as err:
        raise CheckpointError(f"unet/config.json: {err}") from None
    return unet_config


VAE_FIXED = {"act_fn": "silu", "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
             "shift_factor": None, "latents_mean": None, "latents_std": None}
VAE_IGNORED = {"sample_size": "the image size it was trained at; the U-Net's sample_size sets the image size",
               "force_upcast": "runs the decoder in float32 when the pipeline is float16; the course's is float32"}


def vae_config_from_diffusers(config: Mapping[str, Any]) -> AutoencoderConfig:
    """The course's ``AutoencoderConfig`` from diffusers' ``vae/config.json``. Defined in notebook 11_real_weights."""
    part = "vae"
    cls = config.get("_class_name", "AutoencoderKL")
    if cls not in PART_CLASSES[part]:
        raise CheckpointError(f"vae/config.json: _class_name {cls!r} is not an AutoencoderKL")
    chans = tuple(config.get("block_out_channels", (64,)))
    for key, name in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        blocks = list(config.get(key, [name]))
        if len(blocks) != len(chans) or any(b != name for b in blocks):
            raise CheckpointError(f"vae/config.json: {key}={blocks} should be {len(chans)} x {name!r} "
                                  f"(one per entry of block_out_channels={list(chans)})")
    used = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
            "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor"}
    _check_settings(config, part, used, VAE_FIXED, VAE_IGNORED)
    vae_config = AutoencoderConfig(
        in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
        block_out_channels=chans, layers_per_block=config.get("layers_per_block", 1),
        latent_channels=config.get("latent_channels", 4), norm_num_groups=config.get("norm_num_groups", 32),
        scaling_factor=config.get("scaling_factor", 0.18215))
    try:
        vae_config.validate()
    except ValueError as err:
        raise CheckpointError(f"vae/config.json: {err}") from None
    return vae_config


def text_config_from_transformers(config: Mapping[str, Any]) -> CLIPTextConfig:
    """The course's ``CLIPTextConfig`` from transformers' ``text_encoder/config.json``.

    Defined in notebook 11_real_weights.
    """
    architectures = config.get("architectures") or ["CLIPTextModel"]
    if "CLIPTextModel" not in architectures or config.get("model_type", "clip_text_model") != "clip_text_model":
        raise CheckpointError(f"text_encoder/config.json: architectures={architectures}, "
                              f"model_type={config.get('model_type')!r}: not a CLIPTextModel")
    absent = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "max_position_embeddings") if config.get(k) is None]
    if absent:
        raise CheckpointError(f"text_encoder/config.json: {', '.join(absent)} missing")
    try:
        return CLIPTextConfig.from_hf_config(dict(config))
    except ValueError as err:
        raise CheckpointError(f"text_encoder/config.json: {err}") from None


def _token_content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(tokenizer_dir: str | Path) -> CLIPStyleTokenizer:
    """The course's tokenizer from a diffusers ``tokenizer/`` folder, with its pad token.

    Reads ``vocab.json`` + ``merges.txt`` (Hub folders, transformers 4.x) or ``tokenizer.json``
    (what transformers 5.x writes). The pad token is read as transformers reads it:
    ``special_tokens_map.json`` first, then ``tokenizer_config.json``, else ``<|endoftext|>``
    (SD 2's folders say ``"!"`` in the first and ``<|endoftext|>`` in the second: "!" it is).
    Defined in notebook 11_real_weights.
    """
    folder = Path(tokenizer_dir)
    config_file, map_file = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
    config = _read_json(config_file, "tokenizer") if config_file.is_file() else {}
    special = _read_json(map_file, "tokenizer") if map_file.is_file() else {}
    pad = _token_content(special.get("pad_token")) or _token_content(config.get("pad_token")) or EOS_TOKEN
    length = config.get("model_max_length", 77)
    length = length if isinstance(length, int) and length < 100_000 else 77
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        try:
            return CLIPStyleTokenizer.from_folder(folder, context_length=length, pad_token=pad)
        except ValueError as err:
            raise CheckpointError(f"tokenizer: {err}") from None
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"tokenizer: {folder} has neither vocab.json + merges.txt nor tokenizer.json")
    model = _read_json(folder / "tokenizer.json", "tokenizer").get("model", {})
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise CheckpointError(f"tokenizer: tokenizer.json holds a {model.get('type')!r} model with end-of-word "
                              f"suffix {model.get('end_of_word_suffix')!r}, not CLIP's byte-level BPE with '</w>'")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    try:
        return CLIPStyleTokenizer(dict(model["vocab"]), merges, context_length=length, pad_token=pad)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"tokenizer: {err}") from None


# ----------------------------------------------------------------------------------------------
# Scheduler config: the noise schedule and the samplers' timestep conventions
# ----------------------------------------------------------------------------------------------

SUPPORTED_TRAIN_TIMESTEPS = 1000  # Stable Diffusion 1.x and 2.x


def _scheduler_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler config from a dict, a ``scheduler_config.json``, a scheduler folder or a pipeline folder."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "scheduler" / "scheduler_config.json" if (path / "scheduler").is_dir() \
            else path / "scheduler_config.json"
    return _read_json(path, "scheduler")


def schedule_from_config(source: str | Path | Mapping[str, Any]) -> tuple[NoiseSchedule, str]:
    """``(NoiseSchedule, prediction_type)`` from a diffusers scheduler config (dict, file or folder).

    Defined in notebook 11_real_weights.
    """
    config = _scheduler_config(source)
    T = config.get("num_train_timesteps", 1000)
    if T != SUPPORTED_TRAIN_TIMESTEPS:
        raise CheckpointError(f"scheduler/scheduler_config.json: num_train_timesteps={T!r}; Stable Diffusion 1.x and "
                              f"2.x, the models the course's loader reads, are trained with "
                              f"{SUPPORTED_TRAIN_TIMESTEPS} "
                              "timesteps, and a U-Net sampled with another count sees timesteps it was not "
                              f"trained at: set it to {SUPPORTED_TRAIN_TIMESTEPS} if the model was trained so")
    betas = config.get("trained_betas")
    if betas is not None and (not isinstance(betas, list | tuple) or len(betas) != T):
        raise CheckpointError(f"scheduler/scheduler_config.json: trained_betas has "
                              f"{len(betas) if isinstance(betas, list | tuple) else betas!r} values for "
                              f"num_train_timesteps={T}; give one beta per training timestep")
    if config.get("rescale_betas_zero_snr"):
        raise CheckpointError("scheduler/scheduler_config.json: rescale_betas_zero_snr=True is not supported; the "
                              "course's schedules are SD's (the last timestep keeps a little signal)")
    if config.get("trained_betas") is not None:
        schedule = NoiseSchedule(torch.tensor(config["trained_betas"], dtype=torch.float64), name="trained_betas")
    else:
        name = config.get("beta_schedule", "linear")
        kwargs = {} if name == "squaredcos_cap_v2" else {"beta_start": config.get("beta_start", 1e-4),
                                                          "beta_end": config.get("beta_end", 0.02)}
        try:
            schedule = make_schedule(name, T, **kwargs)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"scheduler/scheduler_config.json: beta_schedule={name!r}: {err}") from None
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise CheckpointError(f"scheduler/scheduler_config.json: prediction_type={prediction_type!r} is not one of "
                              f"{', '.join(PREDICTION_TYPES)}")
    return schedule, prediction_type


# course sampler -> (the diffusers scheduler it equals, that scheduler's defaults for the settings it maps)
SAMPLER_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {"timestep_spacing": "leading", "steps_offset": 0}),
    "ddim": ("DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True}),
    "plms": ("PNDMScheduler(skip_prk_steps=True)",
             {"timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": False}),
    "dpm-solver": ("DPMSolverMultistepScheduler(algorithm_type='dpmsolver')",
                   {"timestep_spacing": "linspace", "steps_offset": 0, "final_sigmas_type": "sigma_min",
                    "lower_order_final": True, "solver_order": 2}),
    "dpm-solver++": ("DPMSolverMultistepScheduler(algorithm_type='dpmsolver++')",
                     {"timestep_spacing": "linspace", "steps_offset": 0, "final_sigmas_type": "zero",
                      "lower_order_final": True, "solver_order": 2}),
}
# The other settings of each scheduler's __init__ (diffusers 0.42) with diffusers' defaults, which a
# config that omits them gets (``from_config``). The noise-schedule keys are schedule_from_config's.
_DPM_SETTINGS: dict[str, Any] = {
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "solver_type": "midpoint",
    "euler_at_final": False, "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    "use_lu_lambdas": False, "use_flow_sigmas": False, "flow_shift": 1.0, "lambda_min_clipped": -math.inf,
    "variance_type": None, "use_dynamic_shifting": False, "time_shift_type": "exponential"}
SCHEDULER_SETTINGS: dict[str, dict[str, Any]] = {
    "ddpm": {"variance_type": "fixed_small", "clip_sample": True, "clip_sample_range": 1.0, "thresholding": False,
             "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0},
    "ddim": {"clip_sample": True, "clip_sample_range": 1.0, "thresholding": False,
             "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0},
    "plms": {"skip_prk_steps": False},
    "dpm-solver": _DPM_SETTINGS,
    "dpm-solver++": _DPM_SETTINGS,
}
# settings that only act together with another one (key -> the key that switches them on)
_ONLY_WITH = {"dynamic_thresholding_ratio": "thresholding", "sample_max_value": "thresholding",
              "flow_shift": "use_flow_sigmas", "time_shift_type": "use_dynamic_shifting",
              "clip_sample_range": "clip_sample"}
# settings the course honours as sampler options (diffusers key -> the option of samplers.sample)
_HONOURED: dict[str, dict[str, str]] = {
    "ddpm": {"clip_sample": "clip_sample", "clip_sample_range": "clip_sample_range"},
    "ddim": {"clip_sample": "clip_sample", "clip_sample_range": "clip_sample_range"},
    "plms": {},
    "dpm-solver": {"use_karras_sigmas": "use_karras_sigmas"},
    "dpm-solver++": {"use_karras_sigmas": "use_karras_sigmas"},
}
# settings whose other values ask for something the course's samplers do not do:
# key -> (the values the course has, what another value would ask for)
_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "thresholding": ((False,), "dynamic thresholding of the x0 prediction"),
    "skip_prk_steps": ((True,), "PNDM's Runge-Kutta warm-up steps instead of PLMS's"),
    "variance_type": ((None, "fixed_small"), "a learned or other variance"),
    "solver_type": (("midpoint",), "the 'heun' second-order update"),
    "euler_at_final": ((False,), "an Euler last step"),
    "use_exponential_sigmas": ((False,), "exponential noise levels"),
    "use_beta_sigmas": ((False,), "beta-distributed noise levels"),
    "use_lu_lambdas": ((False,), "Lu's uniform-lambda noise levels"),
    "use_flow_sigmas": ((False,), "flow-matching noise levels"),
    "use_dynamic_shifting": ((False,), "resolution-dependent shifting"),
    "lambda_min_clipped": ((-math.inf,), "a clipped lambda range"),
}


def sampler_options(source: str | Path | Mapping[str, Any], sampler: str) -> dict[str, Any]:
    """Keyword options for ``course_lib.diffusion.samplers.sample(..., sampler, **options)`` that reproduce the
    diffusers scheduler matching ``sampler`` built from the folder's scheduler config, as
    ``DDIMScheduler.from_config(pipe.scheduler.config)`` would (settings the config does not give
    take *that scheduler's* defaults: a DDIM config without ``clip_sample`` clips, as diffusers does).
    ``source``: a pipeline folder, a scheduler folder, a ``scheduler_config.json`` or its dict.

    Stable Diffusion's configs (``steps_offset=1``, "leading", ``set_alpha_to_one=False``) give the
    course's defaults, except PLMS on a v-prediction model: diffusers combines the raw v outputs
    (``combine="model_output"``). Honoured beyond those: ``clip_sample``/``clip_sample_range``
    (DDPM, DDIM), ``use_karras_sigmas`` (DPM-Solvers), "trailing" and "linspace" timesteps with
    diffusers' step rule (``step_rule="stride"`` for DDIM and PLMS). Any other setting that asks for
    something the course does not do (thresholding, PNDM's Runge-Kutta steps, other sigmas, ...)
    raises a ``CheckpointError`` that names it. Defined in notebook 11_real_weights.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; available samplers: {', '.join(available_samplers())}")
    if sampler not in SCHEDULER_SETTINGS:
        raise ValueError(f"{sampler!r} samples rectified-flow models (notebook 12); SD 1-2 folders take "
                         f"{', '.join(available_samplers(flow=False))}")
    config = _scheduler_config(source)
    scheduler, defaults = SAMPLER_SCHEDULERS[sampler]
    where = "scheduler/scheduler_config.json"
    values = {key: config.get(key, default) for key, default in SCHEDULER_SETTINGS[sampler].items()}
    for key, value in values.items():
        switch = _ONLY_WITH.get(key)
        if key in _HONOURED[sampler] or (switch is not None and not values.get(switch)):
            continue
        if key in _UNSUPPORTED and value not in _UNSUPPORTED[key][0]:
            allowed, what = _UNSUPPORTED[key]
            given = "" if key in config else f" (diffusers' default for {scheduler}, which this config does not set)"
            raise CheckpointError(f"{where}: {key}={value!r}{given} asks for {what}, which the course's {sampler!r} "
                                  f"sampler does not do (it equals {scheduler} with {key}={allowed[0]!r})")
    settings = {key: config.get(key, default) for key, default in defaults.items()}
    if settings["timestep_spacing"] not in SPACINGS:
        raise CheckpointError(f"{where}: timestep_spacing={settings['timestep_spacing']!r} is "
                              f"not one the course's samplers have ({', '.join(SPACINGS)})")
    if sampler in ("ddim", "plms") and settings["timestep_spacing"] != "leading":
        settings["step_rule"] = "stride"              # diffusers steps to t - T//N, not to the next grid point
    order = settings.pop("solver_order", None)
    if order is not None:
        if order not in SAMPLERS[sampler].orders:
            raise CheckpointError(f"{where}: solver_order={order!r}; the course's {sampler!r} "
                                  f"has orders {SAMPLERS[sampler].orders}")
        settings["order"] = order
    if values.get("clip_sample"):
        range_ = values["clip_sample_range"]
        if isinstance(range_, bool) or not isinstance(range_, int | float) or range_ <= 0:
            raise CheckpointError(f"{where}: clip_sample_range={range_!r} must be a number > 0")
        settings.update(clip_sample=True, clip_sample_range=float(range_))
    if values.get("use_karras_sigmas"):
        settings["use_karras_sigmas"] = True
    if sampler == "plms":
        _, prediction_type = schedule_from_config(config)
        settings["combine"] = "model_output" if prediction_type == "v_prediction" else "eps"
    return settings


class SchedulerSettingWarning(UserWarning):
    """A folder's scheduler setting that diffusers' pipeline itself changes on loading (and so does the course).

    Defined in notebook 11_real_weights.
    """


def pipeline_scheduler_config(source: str | Path | Mapping[str, Any], sampler: str | None = None,
                              warn: bool = True) -> dict[str, Any]:
    """The scheduler config that diffusers' ``StableDiffusionPipeline`` runs ``sampler`` with, for
    ``sampler_options``.

    Loading a folder, the pipeline's ``__init__`` sets ``steps_offset`` to 1 and turns ``clip_sample=True``
    off, each with a deprecation warning; that holds for the folder's own scheduler (``sampler`` =
    ``scheduler_sampler(source)``, the class's defaults included: DDIM and DDPM clip by default).
    Switching samplers the documented way, ``pipe.scheduler = DDIMScheduler.from_config(
    pipe.scheduler.config)``, keeps those changes only for keys the file sets: a key it omits takes the
    new scheduler's default again (diffusers' ``_use_default_values``), so a PNDM or DDIM config
    without ``clip_sample`` gives a DDIM that clips. With ``warn``, each change is warned as a
    ``SchedulerSettingWarning`` naming the setting. Defined in notebook 11_real_weights.
    """
    config = _scheduler_config(source)
    own = sampler is not None and sampler == scheduler_sampler(config)
    cls = config.get("_class_name")
    clip_default = True if own and cls in ("DDIMScheduler", "DDPMScheduler") else None
    changes = []
    if ("steps_offset" in config or own) and config.get("steps_offset", 0) != 1:
        changes.append(f"steps_offset={config.get('steps_offset', 0)!r} becomes 1")
        config["steps_offset"] = 1
    if config.get("clip_sample", clip_default) is True:
        changes.append(f"clip_sample=True{'' if 'clip_sample' in config else ' (' + str(cls) + ' default)'} is "
                       "turned off")
        config["clip_sample"] = False
    if warn and changes:
        warnings.warn(f"scheduler/scheduler_config.json: {'; '.join(changes)} for the {sampler or cls!r} sampler, as "
                      "diffusers' StableDiffusionPipeline does when it loads the folder", SchedulerSettingWarning,
                      stacklevel=2)
    return config


def scheduler_sampler(source: str | Path | Mapping[str, Any]) -> str | None:
    """The course sampler that equals the folder's own scheduler class, or None if the course has none
    (``PNDMScheduler`` -> "plms", ``DDIMScheduler`` -> "ddim", ...). Defined in notebook 11_real_weights."""
    config = _scheduler_config(source)
    name = config.get("_class_name")
    if name == "DPMSolverMultistepScheduler":  # the SDE variants are other samplers
        return {"dpmsolver": "dpm-solver", "dpmsolver++": "dpm-solver++"}.get(config.get("algorithm_type",
                                                                                         "dpmsolver++"))
    return {"PNDMScheduler": "plms", "DDIMScheduler": "ddim", "DDPMScheduler": "ddpm"}.get(name)


# ----------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------

def _check_model_index(folder: Path) -> None:
    index = _read_json(folder / "model_index.json", "model_index.json")
    cls = index.get("_class_name", "StableDiffusionPipeline")
    if cls != "StableDiffusionPipeline":
        raise CheckpointError(f"model_index.json: _class_name {cls!r} is not a StableDiffusionPipeline; the course "
                              "runs text-to-image Stable Diffusion 1.x and 2.x (SDXL, inpainting and others add parts "
                              "it does not have)")
    for part in PARTS:
        entry = index.get(part)
        if not isinstance(entry, list | tuple) or len(entry) != 2 or entry[1] is None:
            raise CheckpointError(f"model_index.json: no {part!r} entry; a Stable Diffusion folder has "
                                  f"{', '.join(PARTS)}")
        if part in PART_CLASSES and entry[1] not in PART_CLASSES[part]:
            raise CheckpointError(f"model_index.json: {part} is a {entry[1]!r}, not a {PART_CLASSES[part][0]}")
        if not (folder / part).is_dir():
            raise CheckpointError(f"{part}: the folder {folder / part} is missing")


def load_diffusers_pipeline(folder: str | Path, *, use_bf16: bool = False, device: str | torch.device = "cpu",
                            variant: str | None = None) -> TextToImagePipeline:
    """The course's ``TextToImagePipeline`` running the weights of a diffusers Stable Diffusion folder.

    Every network is the course's own (notebooks 03, 04, 08); only the numbers come from the folder.
    ``variant``: e.g. "fp16" to read ``diffusion_pytorch_model.fp16.safetensors`` (cast to float32).
    ``use_bf16`` runs the U-Net in bfloat16 (see ``TextToImagePipeline``). Raises a
    ``CheckpointError`` naming the first part that does not fit. Defined in notebook 11_real_weights.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; download one with download_pipeline(model_id)")
    _check_model_index(folder)

    # Configs first (cheap), so that a folder that does not fit fails before any weights are read.
    unet_config = unet_config_from_diffusers(_read_json(folder / "unet" / "config.json", "unet"))
    vae_config = vae_config_from_diffusers(_read_json(folder / "vae" / "config.json", "vae"))
    text_config = text_config_from_transformers(_read_json(folder / "text_encoder" / "config.json", "text_encoder"))
    tokenizer = load_tokenizer(folder / "tokenizer")
    schedule, prediction_type = schedule_from_config(folder)
    if tokenizer.context_length > text_config.max_position_embeddings:
        raise CheckpointError(f"tokenizer: model_max_length={tokenizer.context_length} is longer than the text "
                              f"encoder's {text_config.max_position_embeddings} positions")
    for part in ("unet", "vae", "text_encoder"):  # fail on a missing or pickled file before reading any
        _weight_files(folder / part, WEIGHT_FILES[part], variant)

    unet = UNet(unet_config)
    _load_module_weights(unet, _read_weights(folder / "unet", WEIGHT_FILES["unet"], variant), "unet")
    unet.training_schedule = schedule       # samplers.sample checks the schedule it is given against this
    vae = AutoencoderKL(vae_config)
    _load_module_weights(vae, _read_weights(folder / "vae", WEIGHT_FILES["vae"], variant), "vae")
    text_encoder = CLIPTextEncoder(text_config)
    try:
        load_hf_clip_text_state_dict(
            text_encoder, _read_weights(folder / "text_encoder", WEIGHT_FILES["text_encoder"], variant))
    except ValueError as err:
        raise CheckpointError(f"text_encoder: {err}") from None

    # each sampler gets the folder's scheduler settings where it can follow them (see sampler_options)
    options: dict[str, dict[str, Any]] = {}
    for name in available_samplers(flow=False):    # SD 1-2 folders: the samplers of noise-prediction models
        try:
            config = pipeline_scheduler_config(folder, name, warn=name == scheduler_sampler(folder))
            options[name] = sampler_options(config, name)
        except CheckpointError as err:  # that sampler cannot copy this folder's scheduler: it refuses to run
            options[name] = {"refused": f"the {name!r} sampler cannot reproduce {folder.name}'s scheduler: {err}; "
                                        "choose another sampler"}
    kwargs: dict[str, Any] = {"sampler_options": options}
    try:
        return TextToImagePipeline(tokenizer, text_encoder, unet, vae, schedule, prediction_type,
                                   use_bf16=use_bf16, device=device, **kwargs)
    except ValueError as err:
        raise CheckpointError(f"{folder.name}: the parts do not belong together: {err}") from None


# ----------------------------------------------------------------------------------------------
# Downloading (Colab)
# ----------------------------------------------------------------------------------------------

def _download_patterns(variant: str | None) -> list[str]:
    suffix = f".{variant}" if variant else ""
    patterns = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*.json", "tokenizer/merges.txt"]
    for part, stem in WEIGHT_FILES.items():
        patterns += [f"{part}/config.json", f"{part}/{stem}{suffix}.safetensors",
                     f"{part}/{stem}{suffix}.safetensors.index.json", f"{part}/{stem}{suffix}-*-of-*.safetensors"]
    return patterns


def download_pipeline(model_id: str, *, variant: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Download the parts of a diffusers Stable Diffusion model from the Hugging Face Hub; return its folder.

    Only configs, tokenizer files and safetensors weights are fetched (no pickles, no single-file
    checkpoints): about 5.2 GB for SD 1.5 or 2.1-base in float32, half with ``variant="fp16"``.
    Already downloaded files are reused. Without internet it raises a ``ConnectionError`` that
    says so in one sentence. Defined in notebook 11_real_weights.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("download_pipeline needs huggingface_hub: pip install huggingface_hub") from None
    try:
        path = Path(snapshot_download(model_id, allow_patterns=_download_patterns(variant), cache_dir=cache_dir))
    except Exception as err:  # offline, unknown or gated model: one clear sentence, the cause chained
        kind = type(err).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            raise ConnectionError(f"the Hugging Face Hub has no public model {model_id!r} ({kind}); check the id "
                                  "(Stable Diffusion 2 now lives at sd2-community/..., 1.5 at sd-legacy/...)") from err
        raise ConnectionError(f"could not download {model_id!r} from the Hugging Face Hub ({kind}): this machine "
                              "seems to be offline; load a local folder with load_diffusers_pipeline instead") from err
    for part, stem in WEIGHT_FILES.items():
        try:
            _weight_files(path / part, stem, variant)
        except CheckpointError as err:
            raise CheckpointError(f"{model_id}: {err} (the Hub model has no safetensors weights for {part}"
                                  f"{' in variant ' + variant if variant else ''})") from None
    return path
