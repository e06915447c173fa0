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

``save_diffusion_checkpoint`` / ``load_diffusion_checkpoint`` store a model together with its
noise schedule and prediction type, so that a sampler can never be handed the wrong schedule.

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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.checkpoints import load_state_dict_checked, load_weights, save_checkpoint
from course_lib.diffusion.forward import check_prediction_type, diffusion_loss, q_sample, training_target
from course_lib.train.distributed import (
    DistributedContext,
    autocast,
    make_grad_scaler,
    resolve_precision,
    training_context,
)
from course_lib.models.mmdit import MMDiT, MMDiTConfig
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule, flow_matching_loss
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule
from course_lib.train.state import (
    check_same_config,
    describe_model,
    load_optimizer_state,
    load_training_state,
    optimizer_state,
    save_training_state,
)
from course_lib.models.unet import UNet, UNetConfig
from course_lib.core.utils import progress

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
]

# A batch source: a tensor of training images (N, ...), or a function (batch_size, generator) ->
# x0, or -> (x0, model_kwargs) for conditional models (e.g. {"context": text embeddings}).
BatchFn = Callable[[int, torch.Generator], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]


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
    """What ``train_diffusion_model`` returns. Defined in notebook 06_reverse_diffusion.

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
    (diffusers' ``EMAModel`` does the same). Defined in notebook 06_reverse_diffusion.
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


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter; buffers are copied.

    Defined in notebook 06_reverse_diffusion.
    """
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


class _EpochBatches:
    """Batches from a tensor of images, walking through shuffled epochs (its position can be saved)."""

    def __init__(self, data: torch.Tensor):
        self.data = data
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def __call__(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.pos + n > len(self.order):   # a new epoch: reshuffle
            self.order, self.pos = torch.randperm(len(self.data), generator=g), 0
        idx = self.order[self.pos:self.pos + n]
        self.pos += n
        return self.data[idx]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"data.order": self.order.clone()}, {"pos": self.pos}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.order, self.pos = tensors["data.order"].clone(), int(meta["pos"])


def _batch_source(data: torch.Tensor | BatchFn, batch_size: int) -> BatchFn:
    """A tensor of images becomes a function that walks through shuffled epochs."""
    if callable(data) and not torch.is_tensor(data):
        return data
    if not torch.is_tensor(data) or not torch.is_floating_point(data) or data.ndim < 2:
        got = f"a tensor of shape {tuple(data.shape)} and dtype {data.dtype}" if torch.is_tensor(data) \
            else type(data).__name__
        raise TypeError(f"data must be a float tensor of training images (N, C, H, W) or a function "
                        f"(batch_size, generator) -> x0; got {got}")
    if len(data) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the data set ({len(data)} images); "
                         "use a smaller batch_size")
    return _EpochBatches(data)


def _to(value: Any, device: torch.device, part: slice | None = None, n: int | None = None) -> Any:
    """A model input on ``device``; with ``part``, only this process's rows of a per-example input."""
    if torch.is_tensor(value):
        if part is not None and value.ndim >= 1 and value.shape[0] == n:
            value = value[part]
        return value.to(device)
    if part is not None and isinstance(value, list | tuple) and len(value) == n:
        return value[part]
    return value


def _sliced_diffusion_loss(net: nn.Module, x0: torch.Tensor, schedule: NoiseSchedule | FlowMatchSchedule,
                           prediction_type: str,
                           g: torch.Generator, model_kwargs: dict[str, Any], part: slice,
                           device: torch.device) -> torch.Tensor:
    """``diffusion_loss`` on this process's rows of a global batch: the timesteps and noise of the *whole*
    batch are drawn (exactly as ``diffusion_loss`` draws them), then sliced, so the processes together
    use the very numbers a single process would."""
    if not torch.is_tensor(x0) or not torch.is_floating_point(x0) or x0.ndim < 1:
        raise TypeError("the batch function must return a floating-point tensor x0 with a batch dimension first, "
                        f"got {type(x0).__name__}")
    n = x0.shape[0]
    if isinstance(schedule, FlowMatchSchedule):
        sigma = schedule.draw_training_sigmas(n, g)
        noise = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype)
        return flow_matching_loss(net, x0[part].to(device), sigma[part].to(device), noise[part].to(device),
                                  schedule.num_train_timesteps,
                                  **{k: _to(v, device, part, n) for k, v in model_kwargs.items()})
    t = torch.randint(0, schedule.num_train_timesteps, (n,), generator=g, device=g.device)
    noise = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype)
    x0, t, noise = x0[part].to(device), t[part].to(device), noise[part].to(device)
    out = net(q_sample(x0, t, noise, schedule), t, **{k: _to(v, device, part, n) for k, v in model_kwargs.items()})
    if out.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x0.shape)}; "
                         "a diffusion model's output must have the shape of its input")
    return F.mse_loss(out, training_target(x0, noise, t, schedule, prediction_type))


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


def _save_state(folder: str | Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer,
                warmup: Any, scaler: Any, g: torch.Generator, next_batch: BatchFn, result: TrainingResult,
                run_config: dict[str, Any], precision: str) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = optimizer_state(opt)
    tensors.update(opt_tensors)
    tensors["rng.generator"] = g.get_state()
    data_meta: dict[str, Any] = {}
    if isinstance(next_batch, _EpochBatches):
        data_tensors, data_meta = next_batch.state()
        tensors.update(data_tensors)
    meta = {"step": result.steps, "images": result.images, "losses": result.losses, "config": run_config,
            "optimizer": opt_meta, "lr_schedule": warmup.state_dict(), "data": data_meta,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "precision": precision, "world_size": result.world_size}
    save_training_state(folder, tensors, meta)


def _load_state(folder: str | Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer,
                warmup: Any, scaler: Any, g: torch.Generator, next_batch: BatchFn, result: TrainingResult,
                run_config: dict[str, Any]) -> int:
    state = load_training_state(folder)
    check_same_config(folder, state.meta["config"], run_config)
    load_state_dict_checked(model, state.group("model"), what=f"training state {folder}")
    if ema is not None:
        load_state_dict_checked(ema, state.group("ema"), what=f"training state {folder} (EMA)")
    load_optimizer_state(opt, state.tensors, state.meta["optimizer"])
    warmup.load_state_dict(state.meta["lr_schedule"])
    g.set_state(state.tensors["rng.generator"])
    if isinstance(next_batch, _EpochBatches):
        next_batch.load_state(state.tensors, state.meta["data"])
    if scaler is not None and state.meta.get("grad_scaler"):
        scaler.load_state_dict(state.meta["grad_scaler"])
    result.losses = [float(v) for v in state.meta["losses"]]
    result.images = int(state.meta["images"])
    result.steps = result.start_step = state.step
    return state.step


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
    from one generator seeded with ``config.seed``. Defined in notebook 06_reverse_diffusion.

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
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int (steps) or None, got {checkpoint_every!r}")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs checkpoint_dir: the folder to save the training state in")
    device = next(model.parameters()).device
    ctx, world = training_context(distributed, device, config.batch_size)
    precision = resolve_precision(precision, device)
    next_batch = _batch_source(data, config.batch_size)
    g = torch.Generator().manual_seed(config.seed)
    # DDP: weights broadcast from rank 0 here. The MMDiT's last block keeps text-query weights it never uses
    # (add_q_proj, so that SD 3's weights load): those two parameters get no gradient.
    net = ctx.wrap(model, **({"find_unused_parameters": True} if isinstance(model, MMDiT) else {})) \
        if world > 1 else model

    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor_at(step, config))
    ema = copy.deepcopy(model).eval().requires_grad_(False) if config.ema_decay is not None else None
    scaler = make_grad_scaler(device, precision)
    result = TrainingResult(ema=ema, world_size=world)
    resumable = checkpoint_dir is not None or resume is not None
    run_cfg = training_run_config(model, schedule, config, run_config) if resumable else {}
    start_step = 0
    if resume is not None:
        start_step = _load_state(resume, model, ema, opt, warmup, scaler, g, next_batch, result, run_cfg)

    model.train()
    start = time.perf_counter()
    bar = progress(range(start_step, config.steps), desc=f"training ({config.prediction_type})", total=config.steps,
                   disable=None if show_progress and ctx.is_main else True,
                   **({"initial": start_step} if start_step else {}))
    for step in bar:
        batch = next_batch(config.batch_size, g)
        x0, model_kwargs = batch if isinstance(batch, tuple) else (batch, {})
        with autocast(device, precision):
            if world == 1 and flow:
                sigma = schedule.draw_training_sigmas(len(x0), g)           # (B,), then the noise, as the
                noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)   # sliced loss draws them
                loss = flow_matching_loss(net, x0.to(device), sigma.to(device), noise.to(device),
                                          schedule.num_train_timesteps,
                                          **{k: _to(v, device) for k, v in model_kwargs.items()})
            elif world == 1:
                loss = diffusion_loss(net, x0.to(device), schedule, config.prediction_type, generator=g,
                                      **{k: _to(v, device) for k, v in model_kwargs.items()})
            else:
                loss = _sliced_diffusion_loss(net, x0, schedule, config.prediction_type, g, model_kwargs,
                                              ctx.local_slice(len(x0)), device)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        warmup.step()
        if ema is not None:
            ema_update(ema, model, ema_decay_at(step, config.ema_decay))

        if world == 1:
            result.losses.append(loss.item())
            out_of_time = False
        else:   # the global loss (mean of the slices' means), and stop together when any process is out of time
            late = max_seconds is not None and time.perf_counter() - start > max_seconds
            total = ctx.all_reduce_sum(torch.tensor([loss.item(), float(late)], dtype=torch.float64))
            result.losses.append(float(total[0]) / world)
            out_of_time = bool(total[1] > 0)
        result.steps, result.images = step + 1, result.images + len(x0)
        if hasattr(bar, "set_postfix") and (step + 1) % log_every == 0:
            recent = result.losses[-log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if checkpoint_every is not None and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps \
                and ctx.is_main:
            _save_state(checkpoint_dir, model, ema, opt, warmup, scaler, g, next_batch, result, run_cfg, precision)
        if out_of_time or (world == 1 and max_seconds is not None and time.perf_counter() - start > max_seconds):
            break
    result.seconds = time.perf_counter() - start
    model.eval()
    if world > 1:  # float buffers (if any) were updated from each process's own slices
        ctx.average_buffers(model)
        if ema is not None:
            ctx.average_buffers(ema)
    if checkpoint_dir is not None and ctx.is_main:
        _save_state(checkpoint_dir, model, ema, opt, warmup, scaler, g, next_batch, result, run_cfg, precision)
    if world > 1:
        result.replica_difference = ctx.replica_difference(model)
        if result.replica_difference > 1e-4:
            raise RuntimeError(f"after training, the processes' weights differ by up to {result.replica_difference:g}; "
                               "they should be identical under DistributedDataParallel (was the model changed "
                               "outside the training loop on some processes?)")
    return result


def schedule_config(schedule: NoiseSchedule | FlowMatchSchedule) -> dict[str, Any]:
    """The JSON description of a named schedule, from which ``make_schedule(**...)`` rebuilds it
    (a ``FlowMatchSchedule``: its ``config()``).

    Defined in notebook 06_reverse_diffusion.
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
    Defined in notebook 06_reverse_diffusion.
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
    (safetensors + JSON). Defined in notebook 06_reverse_diffusion.
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
