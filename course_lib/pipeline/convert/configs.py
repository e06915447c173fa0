"""The configs of a diffusers folder's networks and its tokenizer, in the course's terms.

Defined in notebook 11_real_weights.

Rules 2 to 5 of ``convert``'s docstring: ``unet_config_from_diffusers`` (block types to attention
levels, diffusers' ``attention_head_dim`` as the number of heads, every built-in setting checked
against diffusers' default), ``vae_config_from_diffusers``, ``text_config_from_transformers`` and
``load_tokenizer`` (vocab.json + merges.txt or tokenizer.json, the pad token read as transformers
reads it). A setting the course does not have is a ``CheckpointError`` that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from course_lib.core.checkpoints import CheckpointError
from course_lib.models.clip_text import CLIPTextConfig
from course_lib.models.tokenizer import EOS_TOKEN, CLIPStyleTokenizer
from course_lib.models.unet import UNetConfig
from course_lib.models.vae import AutoencoderConfig
from course_lib.pipeline.convert.clip import clip_text_config_from_hf
from course_lib.pipeline.convert.files import _META_KEYS, PART_CLASSES, _read_json

__all__ = ["unet_config_from_diffusers", "vae_config_from_diffusers", "text_config_from_transformers",
           "load_tokenizer"]


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
        return clip_text_config_from_hf(dict(config))
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
