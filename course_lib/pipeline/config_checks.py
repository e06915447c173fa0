"""A config against what its checkpoints record, and the errors of configs. Defined in notebook 10_full_sampler.

Each checkpoint of ``data/manifest.json`` has a JSON of the settings it was trained with;
``checkpoint_differences`` lists, one line each, every way a built model differs from them (U-Net
sizes, schedule, parameterization, text-encoder layer, autoencoder, ...). ``ConfigError`` is what a
config that cannot build the model raises, ``ConfigMismatchWarning`` what ``strict=False`` warns.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from course_lib.core.checkpoints import read_manifest
from course_lib.core.paths import data_dir
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule
from course_lib.models.clip import CLIPTextEncoder
from course_lib.models.mmdit import MMDiT
from course_lib.models.unet import UNet
from course_lib.models.vae import AutoencoderKL as _AutoencoderKL

__all__ = ["ConfigError", "ConfigMismatchWarning", "checkpoint_differences"]


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
    encoder's config against theirs. Supports notebook 10_full_sampler.
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
