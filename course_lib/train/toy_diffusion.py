"""Training the small diffusion models of the GAN-versus-diffusion comparison. Defined in notebook 01_gan_vs_diffusion.

``train_diffusion`` is a plain DDPM training run for any ``model(x, t)`` (e.g. the 2-D ``MLPDenoiser``
of ``course_lib.models.toy``) that can also keep snapshots of samples during training; like every
training function of the course it runs on ``course_lib.train.loop.TrainLoop`` and brings only its
data and loss (``sliced_diffusion_loss``, the loss ``train_diffusion_model`` of notebook 06 uses).
``generate`` samples with ``samplers.sample``, the same code every later notebook uses (built in
notebooks 05-07).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from course_lib.diffusion.samplers import sample
from course_lib.diffusion.schedules import NoiseSchedule, linear_schedule
from course_lib.models.toy import TOY_DENOISER, MLPDenoiser, MLPDenoiserConfig, ToyModelZoo
from course_lib.train.diffusion_data import sliced_diffusion_loss
from course_lib.train.distributed import DistributedContext, training_context
from course_lib.train.gan import RealData, check_real_data, real_batch
from course_lib.train.loop import Snapshots, TrainLoop
from course_lib.train.state import Checkpointing, describe_model

# MLPDenoiser, its config, TOY_DENOISER and ToyModelZoo live in course_lib.models.toy; named here too.
__all__ = ["MLPDenoiserConfig", "MLPDenoiser", "DiffusionTrainConfig", "DiffusionHistory", "train_diffusion",
           "generate", "ToyModelZoo", "toy_schedule", "TOY_DENOISER", "TOY_DIFFUSION_TRAINING"]


@dataclass
class DiffusionTrainConfig:
    """How to train a diffusion model. Supports notebook 01_gan_vs_diffusion.

    ``steps`` Adam(W) steps on batches of ``batch_size``, learning rate ``lr`` with a linear warm-up
    over ``warmup_steps``; ``ema_decay`` (or None) keeps an exponential moving average of the
    weights, which ``train_diffusion`` returns as the model to sample from. ``snapshot_steps``: after
    which steps (0 = before training) to call ``snapshot_fn(model)`` and keep its result.
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float | None = None
    prediction_type: str = "epsilon"
    snapshot_steps: tuple[int, ...] = ()
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DiffusionTrainConfig.{name} must be a positive int, got {v!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"DiffusionTrainConfig.lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"DiffusionTrainConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"DiffusionTrainConfig.ema_decay must lie in (0, 1) or be None, got {self.ema_decay}")
        bad = [s for s in self.snapshot_steps if not 0 <= s <= self.steps]
        if bad:
            raise ValueError(f"snapshot_steps {bad} lie outside 0..steps={self.steps}")


@dataclass
class DiffusionHistory:
    """What ``train_diffusion`` returns. Supports notebook 01_gan_vs_diffusion.

    ``losses``: the diffusion loss per step; ``snapshots``: step -> ``snapshot_fn(model)``;
    ``ema``: the moving-average copy of the model (None without ``ema_decay``); ``seconds``: the
    wall-clock training time (snapshots excluded).
    """

    losses: list[float] = field(default_factory=list)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    ema: nn.Module | None = None
    seconds: float = 0.0


def train_diffusion(model: nn.Module, data: RealData, schedule: NoiseSchedule,
                    config: DiffusionTrainConfig | None = None,
                    snapshot_fn: Callable[[nn.Module], torch.Tensor] | None = None,
                    show_progress: bool = True, *, distributed: DistributedContext | None = None,
                    checkpoint: Checkpointing | None = None) -> DiffusionHistory:
    """Train ``model(x, t)`` in place to predict the noise, with ``diffusion.diffusion_loss``.

    ``data``: a tensor of real samples (N, ...) or a function ``(n, torch.Generator) -> (n, ...)``.
    Each step draws a batch, a timestep per sample and the noise (all from ``config.seed``), and
    takes one AdamW step on the mean squared error. Returns a :class:`DiffusionHistory`.
    Defined in notebook 01_gan_vs_diffusion.

    Beyond one CPU (not built in the notebook; README, "Training bigger"): with ``distributed`` (a
    torchrun process's context) the model is wrapped in DistributedDataParallel and every process
    draws the whole global batch, its timesteps and noise from the one seeded generator and trains
    on its slice (as ``train_diffusion_model`` does), which matches one process to float
    tolerance; the losses recorded are the global means. ``checkpoint``: a
    ``train.state.Checkpointing`` (save, resume and stop the run; ``config.steps`` may grow).
    """
    config = config or DiffusionTrainConfig()
    config.validate()
    check_real_data(data)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}; "
                        "build one with course_lib.diffusion.schedules.make_schedule")
    if config.snapshot_steps and snapshot_fn is None:
        raise ValueError("snapshot_steps were given but no snapshot_fn(model) to take the snapshots")
    device = next(model.parameters()).device
    ctx, world = training_context(distributed, device, config.batch_size)
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    ema = copy.deepcopy(model).eval().requires_grad_(False) if config.ema_decay is not None else None
    snapshots = Snapshots()
    run_config = {"trainer": "toy_diffusion.train_diffusion", "model": describe_model(model),
                  "settings": {k: v for k, v in asdict(config).items() if k not in ("steps", "snapshot_steps")},
                  "schedule": {"name": schedule.name, "T": schedule.num_train_timesteps,
                               "betas_sum": round(float(schedule.betas.double().sum()), 12)}}
    loop = TrainLoop(model, opt, total_steps=config.steps, lr_schedule=warmup, ema=ema, ema_decay=config.ema_decay,
                     distributed=ctx, checkpoint=checkpoint, run_config=run_config, generators={"batches": g},
                     state={"snapshot": snapshots}, desc="diffusion", show_progress=show_progress)
    net = ctx.wrap(model) if world > 1 else model
    part = ctx.local_slice(config.batch_size) if world > 1 else slice(None)

    def snapshot(step: int) -> None:  # snapshot_fn of the EMA (else the model) after ``step`` steps
        if step in config.snapshot_steps:
            sampler = ema if ema is not None else model
            was_training = sampler.training
            sampler.eval()
            snapshots[step] = snapshot_fn(sampler).cpu()
            sampler.train(was_training)

    def step(i: int) -> torch.Tensor:  # the global batch, timesteps and noise, drawn as one process would
        x0 = real_batch(data, config.batch_size, g)
        return sliced_diffusion_loss(net, x0, schedule, config.prediction_type, g, {}, part, device)

    if loop.start_step == 0:
        snapshot(0)
    run = loop.run(step, on_step=lambda i, values: snapshot(i + 1))
    return DiffusionHistory(losses=run.history.get("loss", []), snapshots=dict(snapshots), ema=ema,
                            seconds=run.seconds)


def generate(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
             shape: tuple[int, ...], sampler: str = "ddpm", steps: int | None = None, seed: int = 0,
             batch_size: int | None = None, **sampler_options) -> torch.Tensor:
    """Draw samples of ``shape`` (``(N, ...)``) from a noise-predicting ``model`` with ``samplers.sample``.

    Starting noise and sampler noise come from ``seed``; ``steps`` defaults to every training
    timestep; ``batch_size`` splits a large N into chunks (same seed stream). Runs without gradients.
    Defined in notebook 01_gan_vs_diffusion.
    """
    steps = schedule.num_train_timesteps if steps is None else steps
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")
    n = shape[0]
    batch_size = batch_size or n
    out = []
    for i in range(0, n, batch_size):
        x_T = torch.randn((min(batch_size, n - i), *shape[1:]), generator=g).to(device)
        out.append(sample(model, schedule, x_T, sampler=sampler, steps=steps, generator=g, **sampler_options).sample)
    return torch.cat(out).cpu()


# ----------------------------------------------------------------------------------------------
# The settings of notebook 01's experiments (shared by the notebook and scripts/train_gan_vs_diffusion.py)
# ----------------------------------------------------------------------------------------------
#: The 2-D denoiser's sizes, TOY_DENOISER, are in course_lib.models.toy (named here too).
TOY_DIFFUSION_TRAINING = DiffusionTrainConfig(steps=6000, batch_size=256, lr=3e-3, warmup_steps=100,
                                              ema_decay=0.995)


def toy_schedule() -> NoiseSchedule:
    """The noise schedule of the 2-D diffusion models: DDPM's linear one, T = 1000.

    Defined in notebook 01_gan_vs_diffusion.
    """
    return linear_schedule(1000)
