"""Small diffusion models for the GAN-versus-diffusion comparison. Defined in notebook 01_gan_vs_diffusion.

An MLP denoiser for 2-D points, ``MLPDenoiser(x, t) -> predicted noise``, and ``train_diffusion``,
a plain DDPM training loop for any ``model(x, t)`` that can also keep snapshots of samples during
training (``training.train_diffusion_model``, notebook 06, is the loop the image models use). The
diffusion mathematics is not repeated here: the loss is ``diffusion.diffusion_loss`` and sampling
is ``samplers.sample``, the same code every later notebook uses (built in notebooks 05-07).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from course_lib.diffusion.forward import diffusion_loss
from course_lib.train.distributed import DistributedContext, training_context
from course_lib.models.gan import MLPGANConfig, MLPGenerator, RealData, _check_data, real_batch
from course_lib.diffusion.samplers import sample
from course_lib.diffusion.schedules import NoiseSchedule, linear_schedule
from course_lib.train.diffusion import _sliced_diffusion_loss
from course_lib.train.state import Checkpointing, describe_model
from course_lib.models.unet import timestep_embedding
from course_lib.core.utils import progress

__all__ = ["MLPDenoiserConfig", "MLPDenoiser", "DiffusionTrainConfig", "DiffusionHistory", "train_diffusion",
           "generate", "ToyModelZoo", "toy_schedule", "TOY_DENOISER", "TOY_DIFFUSION_TRAINING"]


@dataclass
class MLPDenoiserConfig:
    """Sizes of the 2-D denoiser. Defined in notebook 01_gan_vs_diffusion.

    ``time_embed_dim``: size of the sinusoidal timestep embedding; ``hidden``/``layers``: width and
    number of residual hidden layers.
    """

    data_dim: int = 2
    hidden: int = 128
    layers: int = 3
    time_embed_dim: int = 32

    def validate(self) -> None:
        for name in ("data_dim", "hidden", "layers", "time_embed_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MLPDenoiserConfig.{name} must be a positive int, got {v!r}")
        if self.time_embed_dim % 2:
            raise ValueError(f"MLPDenoiserConfig.time_embed_dim must be even (cos and sin halves), "
                             f"got {self.time_embed_dim}")


class MLPDenoiser(nn.Module):
    """Predicts the noise in 2-D points: ``(x (B, data_dim), t (B,)) -> eps (B, data_dim)``.

    The timestep goes through a sinusoidal embedding and a small MLP; it is added to the input
    projection and to every residual layer (``h = h + Linear(SiLU(h + time))``).
    Defined in notebook 01_gan_vs_diffusion.
    """

    def __init__(self, config: MLPDenoiserConfig | None = None):
        super().__init__()
        self.config = config = config or MLPDenoiserConfig()
        config.validate()
        h = config.hidden
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.input = nn.Linear(config.data_dim, h)
        self.layers = nn.ModuleList([nn.Linear(h, h) for _ in range(config.layers)])
        self.act = nn.SiLU()
        self.output = nn.Linear(h, config.data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = self.config.data_dim
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != d:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"MLPDenoiser takes points of shape (B, {d}), got {got}")
        if not torch.is_tensor(t) or t.shape != (x.shape[0],):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"t must be a (B,) tensor of timesteps, one per point (B={x.shape[0]}), got {got}; "
                             "use torch.full((B,), t) for a single timestep")
        temb = self.time_mlp(timestep_embedding(t, self.config.time_embed_dim).to(x.dtype))  # (B,) -> (B, hidden)
        h = self.input(x) + temb                                                       # (B, d) -> (B, hidden)
        for layer in self.layers:
            h = h + layer(self.act(h + temb))
        return self.output(self.act(h))                                                # (B, hidden) -> (B, d)


@dataclass
class DiffusionTrainConfig:
    """How to train a diffusion model. Defined in notebook 01_gan_vs_diffusion.

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
    """What ``train_diffusion`` returns. Defined in notebook 01_gan_vs_diffusion.

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
    on its slice (as ``training.train_diffusion_model`` does), which matches one process to float
    tolerance; the losses recorded are the global means. ``checkpoint``: a
    ``training_state.Checkpointing`` (save, resume and stop the run; ``config.steps`` may grow).
    """
    config = config or DiffusionTrainConfig()
    config.validate()
    _check_data(data)
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
    history = DiffusionHistory(ema=ema)
    ckpt = checkpoint or Checkpointing()
    run_config = {"trainer": "toy_diffusion.train_diffusion", "model": describe_model(model),
                  "settings": {k: v for k, v in asdict(config).items() if k not in ("steps", "snapshot_steps")},
                  "schedule": {"name": schedule.name, "T": schedule.num_train_timesteps,
                               "betas_sum": round(float(schedule.betas.double().sum()), 12)}}
    state = ckpt.begin(ctx, run_config, total=config.steps,
                       modules={"model": model, **({"ema": ema} if ema is not None else {})},
                       optimizers={"optimizer": opt}, schedulers={"lr_schedule": warmup}, generators={"batches": g})
    seconds = 0.0
    if state is not None:
        loop = state.meta["loop"]
        history.losses, seconds = [float(v) for v in loop["losses"]], float(loop["seconds"])
        history.snapshots = {int(k.split(".", 1)[1]): v for k, v in state.tensors.items() if k.startswith("snapshot.")}
    first, end = ckpt.start_step, ckpt.end_step
    net = ctx.wrap(model) if world > 1 else model

    def loop_state() -> tuple[dict, dict]:
        return ({f"snapshot.{k}": v for k, v in history.snapshots.items()},
                {"losses": history.losses, "seconds": seconds})

    def snapshot(step: int) -> None:
        if step in config.snapshot_steps:
            net = ema if ema is not None else model
            was_training = net.training
            net.eval()
            history.snapshots[step] = snapshot_fn(net).cpu()
            net.train(was_training)

    model.train()
    if first == 0:
        snapshot(0)
    for step in progress(range(first + 1, end + 1), desc="diffusion",
                         disable=None if show_progress and ctx.is_main else True,
                         **({"initial": first, "total": config.steps} if first or end != config.steps else {})):
        start = time.perf_counter()
        if world == 1:
            x0 = real_batch(data, config.batch_size, g).to(device)
            loss = diffusion_loss(model, x0, schedule, config.prediction_type, generator=g)
        else:  # the global batch, timesteps and noise, drawn as one process would; this process's slice
            x0 = real_batch(data, config.batch_size, g)
            loss = _sliced_diffusion_loss(net, x0, schedule, config.prediction_type, g, {},
                                          ctx.local_slice(len(x0)), device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warmup.step()
        if ema is not None:
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - config.ema_decay)
                for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
                    b_ema.copy_(b)
        history.losses.append(loss.item() if world == 1 else float(ctx.all_reduce_mean(loss.detach().double().cpu())))
        seconds += time.perf_counter() - start
        snapshot(step)
        ckpt.step_done(step, loop_state)
    history.seconds = seconds
    ckpt.finish(max(first, end), loop_state)
    model.eval()
    return history


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
#: 2-D denoiser: 71k parameters, as many as the 2-D GAN's generator and discriminator together.
TOY_DENOISER = MLPDenoiserConfig(data_dim=2, hidden=128, layers=3, time_embed_dim=32)
TOY_DIFFUSION_TRAINING = DiffusionTrainConfig(steps=6000, batch_size=256, lr=3e-3, warmup_steps=100,
                                              ema_decay=0.995)


def toy_schedule() -> NoiseSchedule:
    """The noise schedule of the 2-D diffusion models: DDPM's linear one, T = 1000.

    Defined in notebook 01_gan_vs_diffusion.
    """
    return linear_schedule(1000)


class ToyModelZoo(nn.ModuleDict):
    """The sampling networks of several 2-D runs in one module, for one checkpoint file.

    Entry ``"{mixture}_gan"`` is a ModuleList of ``MLPGenerator`` (one per seed), and
    ``"{mixture}_diffusion"`` one of ``MLPDenoiser`` (the EMA weights). ``gan`` and ``denoiser``
    are config dicts. Defined in notebook 01_gan_vs_diffusion.
    """

    def __init__(self, mixtures: tuple[str, ...] | list[str] = ("ring8", "grid25"), seeds: int = 5,
                 gan: dict | None = None, denoiser: dict | None = None):
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be a positive int (the number of runs per mixture), got {seeds!r}")
        gan_cfg, den_cfg = MLPGANConfig(**(gan or {})), MLPDenoiserConfig(**(denoiser or {}))
        modules: dict[str, nn.Module] = {}
        for m in mixtures:
            modules[f"{m}_gan"] = nn.ModuleList([MLPGenerator(gan_cfg) for _ in range(seeds)])
            modules[f"{m}_diffusion"] = nn.ModuleList([MLPDenoiser(den_cfg) for _ in range(seeds)])
        super().__init__(modules)
        self.mixtures, self.seeds = tuple(mixtures), seeds

    def runs(self, mixture: str, kind: str) -> nn.ModuleList:
        """The networks of every seed for ``mixture`` and ``kind`` (``"gan"`` or ``"diffusion"``)."""
        key = f"{mixture}_{kind}"
        if key not in self:
            raise KeyError(f"no runs for mixture {mixture!r} and kind {kind!r}; mixtures: {self.mixtures}, "
                           "kinds: 'gan', 'diffusion'")
        return self[key]
