"""A diffusers scheduler config: the noise schedule and the samplers' timestep conventions.

Defined in notebook 11_real_weights.

Rule 6 of ``convert``'s docstring. ``schedule_from_config`` gives the ``NoiseSchedule`` and the
prediction type; ``sampler_options`` the options of ``samplers.sample`` that reproduce the diffusers
scheduler matching a course sampler, as ``Scheduler.from_config(pipe.scheduler.config)`` would;
``pipeline_scheduler_config`` applies the changes diffusers' pipeline makes on loading a folder;
``scheduler_sampler`` names the course sampler that equals a folder's own scheduler. A setting the
course's samplers do not do is a ``CheckpointError`` that names it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from course_lib.core.checkpoints import CheckpointError
from course_lib.diffusion.forward import PREDICTION_TYPES
from course_lib.diffusion.samplers import SAMPLERS, SPACINGS, available_samplers
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule
from course_lib.pipeline.convert.files import _read_json

__all__ = ["SUPPORTED_TRAIN_TIMESTEPS", "schedule_from_config", "SAMPLER_SCHEDULERS", "SCHEDULER_SETTINGS",
           "sampler_options", "SchedulerSettingWarning", "pipeline_scheduler_config", "scheduler_sampler"]

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

    Supports notebook 11_real_weights.
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

    Supports notebook 11_real_weights.
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
    ``SchedulerSettingWarning`` naming the setting. Supports notebook 11_real_weights.
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
