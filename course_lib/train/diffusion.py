"""Training a diffusion model: a small, readable loop used by every notebook and training script.

    schedule = make_schedule("linear")
    result = train_diffusion_model(unet, images, schedule, TrainingConfig(steps=2000))
    result.losses, result.ema            # the loss per step, the averaged weights to sample from

Each step draws a batch of clean images ``x0``, a timestep ``t`` and noise ``eps`` per image,
forms ``x_t = alpha_t x0 + sigma_t eps`` and takes one AdamW step on the mean squared error
between the network's output and its target (``eps`` for ``"epsilon"``, the velocity
``alpha_t eps - sigma_t x0`` for ``"v_prediction"``): ``diffusion.diffusion_loss``. An
exponential moving average (EMA) of the weights is kept beside the trained weights; samples are
drawn from the EMA copy, which is smoother than the weights of any single step.

The loop itself is ``course_lib.train.loop.TrainLoop`` (optimizer, schedule, EMA, autocast, torchrun,
progress bar, resumable state, time limit), which every training function of the course shares; this
module brings the diffusion model's batches and loss (``course_lib.train.diffusion_data``).
``save_diffusion_checkpoint`` / ``load_diffusion_checkpoint`` (``course_lib.train.diffusion_checkpoint``)
store a model together with its noise schedule and prediction type, so that a sampler can never be
handed the wrong schedule.

Beyond one CPU (not built in the notebook; see the README's "Training bigger"): the same loop runs
on a GPU with bf16/fp16 autocast (``precision=``), on several processes under ``torchrun``
(``distributed=``, a ``course_lib.train.distributed.DistributedContext``), and saves and resumes its full
state (``checkpoint_dir=``, ``resume=``). Every process draws the whole global batch, its timesteps
and its noise from the one seeded generator and trains on its own slice, so a run on N processes
matches a single-process run with the same global batch to float tolerance, and a single-process
run is exactly what it always was.

Defined in notebook 06_reverse_diffusion.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib.diffusion.forward import check_prediction_type
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule
from course_lib.diffusion.schedules import NoiseSchedule
from course_lib.train.diffusion_checkpoint import (
    DiffusionCheckpoint,
    load_diffusion_checkpoint,
    save_diffusion_checkpoint,
    schedule_config,
)
from course_lib.train.diffusion_data import BatchFn, EpochBatches, batch_source, sliced_diffusion_loss
from course_lib.train.distributed import DistributedContext, training_context
from course_lib.train.loop import TrainLoop, ema_update
from course_lib.train.state import Checkpointing, describe_model

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "ema_update",
    "ema_decay_at",
    "lr_factor_at",
    "train_diffusion_model",
    "training_run_config",
    "schedule_config",
    "DiffusionCheckpoint",
    "save_diffusion_checkpoint",
    "load_diffusion_checkpoint",
    "BatchFn",
    "sliced_diffusion_loss",
]


@dataclass
class TrainingConfig:
    """How to train a diffusion model. Defined in notebook 06_reverse_diffusion.

    ``steps`` AdamW steps on batches of ``batch_size``; learning rate ``lr`` after a linear warm-up
    of ``warmup_steps``; gradients clipped to norm ``grad_clip`` (None: no clipping);
    ``ema_decay`` (None: no EMA) for the moving average of the weights; ``prediction_type``:
    what the network learns to output, ``"epsilon"`` (SD 1.x) or ``"v_prediction"`` (SD 2.x "-v"
    models) or ``"flow"`` (the rectified-flow velocity of SD 3, notebook 12, with a ``FlowMatchSchedule``);
    ``seed`` fixes the batches, timesteps and noise. ``lr_schedule``: after the warm-up,
    ``"constant"`` keeps ``lr`` (the default), ``"cosine"`` lowers it along a half cosine to 0 at the last
    step (``lr_factor_at``), so the final weights settle instead of hovering at the noise level of ``lr``.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    prediction_type: str = "epsilon"
    seed: int = 0
    lr_schedule: str = "constant"

    def validate(self) -> None:
        """Raise a ``ValueError`` that says which setting is wrong and what it should be."""
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainingConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainingConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"TrainingConfig.lr must be a positive number, got {self.lr!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainingConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"TrainingConfig.ema_decay must lie in (0, 1) (e.g. 0.999) or be None, "
                             f"got {self.ema_decay!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"TrainingConfig.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.prediction_type != FLOW_PREDICTION:
            check_prediction_type(self.prediction_type)
        if self.prediction_type == "sample":
            raise ValueError("train_diffusion_model trains 'epsilon', 'v_prediction' or 'flow' models; "
                             "'sample' (x0) prediction is not supported here")


@dataclass
class TrainingResult:
    """What ``train_diffusion_model`` returns. Supports notebook 06_reverse_diffusion.

    ``losses``: the loss of every step; ``ema``: the moving-average copy of the model (None without
    ``ema_decay``), the one to sample from; ``steps``: steps taken (fewer than asked if
    ``max_seconds`` ran out); ``images``: training images seen; ``seconds``: wall-clock time.
    """

    losses: list[float] = field(default_factory=list)
    ema: nn.Module | None = None
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    # Beyond one CPU (README, "Training bigger"): processes that trained together, the step a
    # resumed run started from, and the largest weight difference between processes at the end.
    world_size: int = 1
    start_step: int = 0
    replica_difference: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Training throughput."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay used after ``step`` optimiser steps: ``min(decay, (1 + step) / (10 + step))``.

    The warm-up lets the average forget the random initial weights quickly in short runs
    (diffusers' ``EMAModel`` does the same); ``train_diffusion_model`` uses it.
    """
    return min(decay, (1 + step) / (10 + step))


def lr_factor_at(step: int, config: TrainingConfig) -> float:
    """The multiple of ``config.lr`` used by optimiser step ``step`` (0-based).

    A linear warm-up ``(step + 1) / warmup_steps`` to 1, then 1 (``"constant"``) or, for ``"cosine"``,
    ``(1 + cos(pi p)) / 2`` with ``p`` going from 0 after the warm-up to 1 at the last step (factor 0).
    """
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    if config.lr_schedule == "constant" or step < config.warmup_steps:
        return warm
    p = min(1.0, (step + 1 - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * p))


def training_run_config(model: nn.Module, schedule: NoiseSchedule | FlowMatchSchedule, config: TrainingConfig,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must be equal for a run to resume another: the training settings (all but ``steps``, which may
    grow, except under a ``"cosine"`` ``lr_schedule``), the model's configuration, the noise schedule
    and ``extra`` (e.g. the data).

    Not built in a notebook: see the README's "Training bigger".
    """
    training = {k: v for k, v in asdict(config).items() if k != "steps"}
    if config.lr_schedule == "constant":   # absent from states saved before the option existed
        del training["lr_schedule"]
    else:                                  # a decaying schedule is tied to the run's length
        training["steps"] = config.steps
    sched = schedule.config() if isinstance(schedule, FlowMatchSchedule) else {
        "name": schedule.name, "T": schedule.num_train_timesteps,
        "betas_sum": round(float(schedule.betas.double().sum()), 12)}
    return {"training": training, "model": describe_model(model), "schedule": sched, "extra": extra or {}}


def train_diffusion_model(model: nn.Module, data: torch.Tensor | BatchFn, schedule: NoiseSchedule | FlowMatchSchedule,
                          config: TrainingConfig | None = None, *, max_seconds: float | None = None,
                          show_progress: bool = True, log_every: int = 50,
                          distributed: DistributedContext | None = None, precision: str = "fp32",
                          checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
                          resume: str | Path | None = None, run_config: dict[str, Any] | None = None
                          ) -> TrainingResult:
    """Train ``model(x_t, t, **model_kwargs)`` in place to denoise, and return its losses and EMA copy.

    ``data``: training images ``(N, C, H, W)`` (shuffled into epochs), or a function
    ``(batch_size, generator) -> x0`` or ``-> (x0, model_kwargs)`` (for conditional models).
    ``schedule``: the noise schedule (keep it with the model: ``save_diffusion_checkpoint``), or for
    rectified flow (notebook 12_stable_diffusion_3, ``config.prediction_type="flow"``) a
    ``FlowMatchSchedule``: each step then draws logit-normal sigmas and learns the velocity.
    ``config``: a :class:`TrainingConfig`. ``max_seconds``: stop early when this much time has
    passed (the result says how many steps were taken). Batches, timesteps and noise all come
    from one generator seeded with ``config.seed``. The loop is ``course_lib.train.loop.TrainLoop``;
    this function brings the batches and the loss (``sliced_diffusion_loss``).
    Defined in notebook 06_reverse_diffusion.

    Beyond one CPU (README, "Training bigger"): ``distributed``, the context of a torchrun
    process (``course_lib.train.distributed.init_distributed()``; the model must already be on its
    device): every process draws the global batch of ``config.batch_size`` and trains on its slice,
    gradients are averaged, the losses reported are the global ones and only rank 0 shows progress.
    ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` autocast, or ``"auto"``.
    ``checkpoint_dir``: where rank 0 saves the full training state (every ``checkpoint_every``
    steps and at the end); ``resume``: a folder saved that way to continue from, which must come
    from the same configuration (``run_config`` adds what else must match, e.g. the data).
    """
    config = config or TrainingConfig()
    config.validate()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module called as model(x_t, t), got {type(model).__name__}")
    flow = isinstance(schedule, FlowMatchSchedule)
    if not flow and not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule (or a FlowMatchSchedule for rectified flow), got "
                        f"{type(schedule).__name__}; build one with course_lib.diffusion.schedules.make_schedule")
    if flow != (config.prediction_type == FLOW_PREDICTION):
        raise ValueError("rectified flow needs both a FlowMatchSchedule and prediction_type='flow'; got "
                         f"{type(schedule).__name__} with prediction_type={config.prediction_type!r}")
    checkpoint = Checkpointing(checkpoint_dir, checkpoint_every, resume, extra_config=run_config)
    device = next(model.parameters()).device
    ctx, world = training_context(distributed, device, config.batch_size)
    next_batch = batch_source(data, config.batch_size)
    g = torch.Generator().manual_seed(config.seed)
    # DDP: weights broadcast from rank 0 here. A model whose parameters do not all get a gradient says so
    # (the MMDiT's last block keeps text-query weights it never uses, so that SD 3's weights load).
    unused = {"find_unused_parameters": True} if getattr(model, "ddp_find_unused_parameters", False) else {}
    net = ctx.wrap(model, **unused) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor_at(step, config))
    ema = copy.deepcopy(model).eval().requires_grad_(False) if config.ema_decay is not None else None
    loop = TrainLoop(model, opt, total_steps=config.steps, lr_schedule=warmup, grad_clip=config.grad_clip, ema=ema,
                     ema_decay=None if ema is None else (lambda step: ema_decay_at(step, config.ema_decay)),
                     precision=precision, distributed=ctx, checkpoint=checkpoint,
                     run_config=training_run_config(model, schedule, config) if checkpoint.enabled else {},
                     generators={"generator": g}, global_rng=False,  # every random number comes from g
                     state={"data": next_batch} if isinstance(next_batch, EpochBatches) else {},
                     max_seconds=max_seconds, desc=f"training ({config.prediction_type})",
                     show_progress=show_progress, postfix_every=log_every)

    def step(i: int) -> torch.Tensor:
        batch = next_batch(config.batch_size, g)
        x0, model_kwargs = batch if isinstance(batch, tuple) else (batch, {})
        part = ctx.local_slice(len(x0)) if world > 1 else slice(None)
        with loop.autocast():
            return sliced_diffusion_loss(net, x0, schedule, config.prediction_type, g, model_kwargs, part, device)

    run = loop.run(step)
    result = TrainingResult(losses=run.history.get("loss", []), ema=ema, steps=run.steps,
                            images=run.steps * config.batch_size, seconds=run.seconds, world_size=world,
                            start_step=run.start_step, replica_difference=run.replica_difference)
    if result.replica_difference > 1e-4:
        raise RuntimeError(f"after training, the processes' weights differ by up to {result.replica_difference:g}; "
                           "they should be identical under DistributedDataParallel (was the model changed "
                           "outside the training loop on some processes?)")
    return result
