"""Storing a diffusion model with its noise schedule and prediction type. Defined in notebook 06_reverse_diffusion.

``save_diffusion_checkpoint`` / ``load_diffusion_checkpoint`` keep a model (a ``UNet``, or notebook 12's
``MMDiT``) together with its noise schedule and prediction type, so that a sampler can never be handed
the wrong schedule; ``course_lib.train.diffusion`` names them too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from course_lib.core.checkpoints import load_state_dict_checked, load_weights, save_checkpoint
from course_lib.diffusion.forward import check_prediction_type
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule
from course_lib.models.mmdit import MMDiT, MMDiTConfig
from course_lib.models.unet import UNet, UNetConfig

__all__ = ["schedule_config", "DiffusionCheckpoint", "save_diffusion_checkpoint", "load_diffusion_checkpoint"]


def schedule_config(schedule: NoiseSchedule | FlowMatchSchedule) -> dict[str, Any]:
    """The JSON description of a named schedule, from which ``make_schedule(**...)`` rebuilds it
    (a ``FlowMatchSchedule``: its ``config()``).

    Supports notebook 06_reverse_diffusion.
    """
    if isinstance(schedule, FlowMatchSchedule):
        return schedule.config()
    if schedule.name not in ("linear", "scaled_linear", "cosine"):
        raise ValueError(f"only named schedules can be stored with a checkpoint, got {schedule!r}; "
                         "build it with course_lib.diffusion.schedules.make_schedule")
    return {"name": schedule.name, "T": schedule.num_train_timesteps, **schedule.params}


@dataclass
class DiffusionCheckpoint:
    """A loaded diffusion model with everything a sampler needs to use it correctly.

    ``model``: the network (eval mode; a ``UNet``, or an ``MMDiT`` from notebook 12); ``schedule``: its
    training noise schedule (a ``FlowMatchSchedule`` for rectified flow); ``prediction_type``: what it
    outputs; ``meta``: the stored config, command and metrics.
    Supports notebook 06_reverse_diffusion.
    """

    model: nn.Module
    schedule: NoiseSchedule | FlowMatchSchedule
    prediction_type: str
    meta: dict[str, Any]


def save_diffusion_checkpoint(model: UNet | MMDiT, name: str, schedule: NoiseSchedule | FlowMatchSchedule,
                              prediction_type: str, *, command: str | None = None,
                              metrics: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                              folder: str | None = None) -> None:
    """Store a ``UNet`` (or notebook 12's ``MMDiT``) with its config, noise schedule and prediction type
    (safetensors + JSON). Supports notebook 06_reverse_diffusion.
    """
    if not isinstance(model, UNet | MMDiT):
        raise TypeError(f"save_diffusion_checkpoint stores a course_lib UNet or MMDiT, got {type(model).__name__}")
    if (prediction_type == FLOW_PREDICTION) != isinstance(schedule, FlowMatchSchedule):
        raise ValueError("a rectified-flow model is stored with a FlowMatchSchedule and prediction_type='flow'; got "
                         f"{type(schedule).__name__} with {prediction_type!r}")
    if prediction_type != FLOW_PREDICTION:
        check_prediction_type(prediction_type)
    kind = "unet" if isinstance(model, UNet) else "mmdit"
    config = {kind: asdict(model.config), "schedule": schedule_config(schedule),
              "prediction_type": prediction_type, "training": training or {}}
    save_checkpoint(model, name, config=config, folder=folder, command=command, metrics=metrics)


def _unet_config(d: dict[str, Any]) -> UNetConfig:
    """JSON lists back to the tuples UNetConfig uses."""
    return UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_diffusion_checkpoint(name: str, folder: str | None = None,
                              map_location: str | torch.device = "cpu") -> DiffusionCheckpoint:
    """Load a checkpoint stored by ``save_diffusion_checkpoint`` (checksum verified), e.g. ``"mnist_unet"``.

    Defined in notebook 06_reverse_diffusion.
    """
    state, meta = load_weights(name, folder)
    config = meta["config"]
    if not {"schedule", "prediction_type"} <= set(config) or not {"unet", "mmdit"} & set(config):
        raise ValueError(f"checkpoint {name!r} was not stored by save_diffusion_checkpoint (its config has "
                         f"{sorted(config)}); load it with course_lib.core.checkpoints.load_checkpoint")
    model = UNet(_unet_config(config["unet"])) if "unet" in config else MMDiT(MMDiTConfig(**config["mmdit"]))
    load_state_dict_checked(model, state, what=f"checkpoint {name!r}")
    sched = dict(config["schedule"])
    if sched.get("name") == FlowMatchSchedule.name:
        sched.pop("name")
        schedule = FlowMatchSchedule(**sched)
    else:
        schedule = make_schedule(sched.pop("name"), sched.pop("T"), **sched)
    model.training_schedule = schedule      # samplers.sample refuses another schedule for this model
    return DiffusionCheckpoint(model.to(map_location).eval(), schedule, config["prediction_type"], meta)
