"""Samplers: turn a noise-predicting network into images, with one interface for all of them.

    result = sample(model_fn, schedule, x_T, sampler="dpm-solver++", steps=20)
    result.sample, result.model_calls, result.trajectory

``model_fn(x, t)`` is any function (a network, a guided network, an analytic toy); ``t`` is a
(B,) long tensor of training timesteps 0..T-1. The samplers never see a network class.

Every sampler here reproduces a diffusers scheduler run with Stable Diffusion's settings to
float32 precision (tests/test_samplers.py):

============  ===================================================================  ==============
name          what it is                                                           model calls
============  ===================================================================  ==============
ddpm          ancestral sampling (Ho et al. 2020) = ``DDPMScheduler``               N
ddim          DDIM, ``eta`` = 0 deterministic (Song et al. 2021) = ``DDIMScheduler``  N
plms          pseudo linear multistep, SD's plms.py (Liu et al. 2022)               N + 1
              = ``PNDMScheduler(skip_prk_steps=True)``
dpm-solver    DPM-Solver on the noise prediction, orders 1-3, multistep or          N
              singlestep (Lu et al. 2022a) = ``DPMSolver{Multi,Single}stepScheduler(
              algorithm_type="dpmsolver")``
dpm-solver++  DPM-Solver++ on the x0 prediction, 2M/3M (Lu et al. 2022b)            N
              = the same schedulers with ``algorithm_type="dpmsolver++"``
flow-euler    Euler steps of a rectified-flow model's velocity (SD 3)               N
              = ``FlowMatchEulerDiscreteScheduler``
============  ===================================================================  ==============

The first five sample a model trained on a ``NoiseSchedule``; ``flow-euler`` samples a model trained
with rectified flow (``schedule`` a ``rectified_flow.FlowMatchSchedule``; its ``model_fn(x, t)`` gets
float timesteps ``sigma * 1000``). Each refuses the other kind of model.

Defaults follow Stable Diffusion: DDIM and PLMS use "leading" timesteps with
``steps_offset=1`` (``[901, 801, ..., 1]`` for 10 steps) and step last to ``alphas_cumprod[0]``
(``set_alpha_to_one=False``); DDPM uses diffusers' ``DDPMScheduler`` defaults ("leading",
``steps_offset=0``, so 1000 steps is the full chain 999..0); the DPM-Solvers use
``DPMSolverMultistepScheduler``'s defaults ("linspace" timesteps ``[999, 899, ..., 100]`` for
10 steps, ``lower_order_final=True``). SD's own ``DPMSolverSampler`` uses continuous times
instead; we follow diffusers.

``ddpm`` and ``ddim`` are defined in notebook 06_reverse_diffusion, ``plms`` and the
DPM-Solvers in notebook 07_plms_and_dpm_solver, ``flow-euler`` in notebook 12_stable_diffusion_3.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from course_lib.diffusion.forward import check_prediction_type, predict_eps, predict_x0
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule, check_shift
from course_lib.diffusion.schedules import NoiseSchedule, check_schedule
from course_lib.core.utils import progress

__all__ = [
    "SampleResult",
    "Denoiser",
    "SamplerInfo",
    "SAMPLERS",
    "available_samplers",
    "sample",
    "make_timesteps",
    "sampler_timesteps",
    "dpm_solver_timesteps",
    "ddpm",
    "ddim",
    "plms",
    "dpm_solver",
    "dpm_solver_pp",
    "flow_euler",
    "FlowDenoiser",
    "FLOW_SAMPLERS",
    "karras_sigmas",
    "model_schedule_of",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# after_step(x, t_next) -> x: called after every executed step with the grid's next timestep (None after the last)
AfterStep = Callable[[torch.Tensor, int | None], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SampleResult:
    """What ``sample`` returns.

    ``sample``: the final x_0. ``trajectory``: ``[x_T, x after step 1, ..., x_0]`` when asked
    for, else None. ``model_calls``: how many times ``model_fn`` really ran. ``timesteps``: the
    timestep of each of those calls, in order. Defined in notebook 06_reverse_diffusion.
    """

    sample: torch.Tensor
    trajectory: list[torch.Tensor] | None
    model_calls: int
    timesteps: list[int] = field(default_factory=list)


class Denoiser:
    """The model as a sampler sees it: ``model_fn`` + schedule + prediction type.

    Counts the calls it makes (``calls``, ``timesteps``), converts the model's output to the
    x0 and noise predictions, and records the trajectory. Defined in notebook 06_reverse_diffusion.

    ``start_step`` (img2img, notebook 13_beyond_text_to_image): the samplers skip the first
    ``start_step`` steps of their grid (``loop`` starts there, so every sampler gets it; multistep
    histories start empty at the first executed step, as diffusers' schedulers with a begin index do).
    ``after_step(x, t_next) -> x`` runs after every executed step (inpainting blends the known region
    there), ``t_next`` the grid's next timestep or None after the last step.
    """

    def __init__(self, model_fn: ModelFn, schedule: NoiseSchedule, prediction_type: str = "epsilon",
                 record_trajectory: bool = False, show_progress: bool = False, start_step: int = 0,
                 after_step: AfterStep | None = None):
        check_prediction_type(prediction_type)
        self.model_fn = model_fn
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.calls = 0
        self.timesteps: list[int] = []
        self.trajectory: list[torch.Tensor] | None = [] if record_trajectory else None
        self.show_progress = show_progress
        self.start_step = start_step
        self.after_step = after_step
        self.grid: list[int] = []               # the running sampler's timesteps (set by ``loop``)

    def output(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The raw model output at (x, t): one model call."""
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)  # (B,)
        out = self.model_fn(x, t_batch)
        if not torch.is_tensor(out) or out.shape != x.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"model_fn(x, t) returned {got} for x of shape {tuple(x.shape)}; a sampler "
                             "needs an output of the same shape (split off a learned variance channel first)")
        self.calls += 1
        self.timesteps.append(int(t))
        return out.to(x.dtype)

    def x0(self, x: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
        """The x0 prediction implied by the model output ``out`` at (x, t)."""
        return predict_x0(x, t, out, self.schedule, self.prediction_type)

    def eps(self, x: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
        """The noise prediction implied by the model output ``out`` at (x, t)."""
        return predict_eps(x, t, out, self.schedule, self.prediction_type)

    def alpha_bar(self, t: int, final: float = 1.0) -> float:
        """alphas_cumprod[t] as a float; ``final`` for t < 0 (the step past the last timestep)."""
        return float(self.schedule.alphas_cumprod[t]) if t >= 0 else final

    def record(self, x: torch.Tensor) -> None:
        """Append ``x`` to the trajectory if one is being recorded."""
        if self.trajectory is not None:
            self.trajectory.append(x)

    def loop(self, timesteps: Sequence[int], desc: str) -> Iterable[tuple[int, int]]:
        """``enumerate(timesteps)`` from ``start_step`` on, with a progress bar when ``show_progress``."""
        self.grid = [int(t) for t in timesteps]
        if not 0 <= self.start_step < len(timesteps):
            raise ValueError(f"start_step must be from 0 to steps - 1 = {len(timesteps) - 1}, got {self.start_step}")
        todo = list(enumerate(timesteps))[self.start_step:]
        return progress(todo, desc=desc, total=len(todo), disable=None if self.show_progress else True)

    def end_step(self, x: torch.Tensor, i: int, record: bool = True) -> torch.Tensor:
        """After step ``i`` (which lands on the grid's next timestep): ``after_step``, then the trajectory."""
        if self.after_step is not None:
            x = self.after_step(x, self.grid[i + 1] if i + 1 < len(self.grid) else None)
        if record:
            self.record(x)
        return x


def _randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (as diffusers does).
    A list of generators draws row ``i`` of the batch from generator ``i`` (diffusers' ``randn_tensor``)."""
    if isinstance(generator, Sequence):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}: pass one per row")
        return torch.cat([_randn_like(x[i:i + 1], g) for i, g in enumerate(generator)])   # (B, ...)
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# ----------------------------------------------------------------------------------------------
# Timestep grids
# ----------------------------------------------------------------------------------------------

SPACINGS = ("leading", "trailing", "linspace")


def _check_spacing(timestep_spacing: str) -> None:
    if timestep_spacing not in SPACINGS:
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; use one of {', '.join(SPACINGS)}")


def _checked_grid(ts: np.ndarray, T: int, steps: int, how: str) -> list[int]:
    grid = [int(t) for t in ts]
    if (len(grid) != steps or any(t < 0 or t >= T for t in grid)
            or any(a <= b for a, b in zip(grid, grid[1:], strict=False))):
        shown = f"{grid[:5]}{'...' if len(grid) > 5 else ''}"
        raise ValueError(f"{how} gives the timesteps {shown} for steps={steps}, which are not {steps} "
                         f"distinct timesteps in 0..{T - 1}; use fewer steps, another timestep_spacing, "
                         "or steps_offset=0")
    return grid


def make_timesteps(num_train_timesteps: int, steps: int, timestep_spacing: str = "leading",
                   steps_offset: int = 1) -> list[int]:
    """The N timesteps (descending) that DDPM, DDIM and PLMS evaluate the model at.

    Exactly diffusers' ``DDIMScheduler.set_timesteps``: "leading" is
    ``arange(N) * (T // N) + steps_offset`` (SD: ``[901, ..., 1]`` for 10 steps), "trailing"
    ``round(arange(T, 0, -T/N)) - 1`` (``[999, ..., 99]``), "linspace"
    ``round(linspace(0, T-1, N))``. Defined in notebook 06_reverse_diffusion.
    """
    _check_spacing(timestep_spacing)
    T, N = num_train_timesteps, steps
    if timestep_spacing == "leading":
        ts = (np.arange(N) * (T // N)).round()[::-1] + steps_offset
    elif timestep_spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
    else:
        ts = np.linspace(0, T - 1, N).round()[::-1]
    return _checked_grid(ts, T, N, f"timestep_spacing={timestep_spacing!r}, steps_offset={steps_offset}")


def dpm_solver_timesteps(num_train_timesteps: int, steps: int, timestep_spacing: str = "linspace",
                         steps_offset: int = 0) -> list[int]:
    """The N timesteps (descending) of the DPM-Solvers, as diffusers' ``DPMSolverMultistepScheduler``.

    "linspace" takes N+1 points ``round(linspace(0, T-1, N+1))`` and drops the 0
    (``[999, 899, ..., 100]`` for 10 steps); the solver then steps from the last one to the end
    point (see ``final_sigmas_type``). Defined in notebook 07_plms_and_dpm_solver.
    """
    _check_spacing(timestep_spacing)
    T, N = num_train_timesteps, steps
    if timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, N + 1).round()[::-1][:-1]
    elif timestep_spacing == "leading":
        ts = (np.arange(N + 1) * (T // (N + 1))).round()[::-1][:-1] + steps_offset
    else:
        ts = np.arange(T, 0, -T / N).round() - 1
    return _checked_grid(ts, T, N, f"timestep_spacing={timestep_spacing!r}")


STEP_RULES = ("grid", "stride")


def _previous_timestep(timesteps: Sequence[int], i: int, T: int, step_rule: str) -> int:
    """Where step ``i`` goes: the next timestep of the grid (``"grid"``), or diffusers' DDIM/PNDM rule
    ``t - T // N`` (``"stride"``); -1 means past the last timestep (the final alpha_bar)."""
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be 'grid' (step to the next timestep of the grid) or 'stride' "
                         f"(diffusers' DDIM/PNDM rule t - T // N), got {step_rule!r}")
    if step_rule == "stride":
        return max(timesteps[i] - T // len(timesteps), -1)
    return timesteps[i + 1] if i + 1 < len(timesteps) else -1


def _check_clip_range(clip_sample_range: float) -> None:
    if not (isinstance(clip_sample_range, numbers.Real) and clip_sample_range > 0):
        raise ValueError(f"clip_sample_range must be a number > 0, got {clip_sample_range!r}")


# ----------------------------------------------------------------------------------------------
# DDPM and DDIM (notebook 06_reverse_diffusion)
# ----------------------------------------------------------------------------------------------

def ddpm(model: Denoiser, x: torch.Tensor, steps: int, *, generator: torch.Generator | None = None,
         timestep_spacing: str = "leading", steps_offset: int = 0, clip_sample: bool = False,
         clip_sample_range: float = 1.0) -> torch.Tensor:
    """Ancestral sampling: draw x_{t'} from the Gaussian posterior q(x_{t'} | x_t, x0_pred).

    With fewer steps than T it jumps between the strided timesteps, treating
    ``beta = 1 - alpha_bar_t / alpha_bar_t'`` as one step's beta; the variance is the posterior's
    ("fixed_small"). One noise draw per step with t > 0, from ``generator``: the same generator
    gives the same sample as diffusers' ``DDPMScheduler``. ``clip_sample`` clamps the x0 prediction
    to ``[-clip_sample_range, clip_sample_range]`` before the step, as diffusers' ``clip_sample=True``
    (its default) does. Defined in notebook 06_reverse_diffusion.
    """
    _check_clip_range(clip_sample_range)
    T = model.schedule.num_train_timesteps
    timesteps = make_timesteps(T, steps, timestep_spacing, steps_offset)
    for i, t in model.loop(timesteps, "DDPM"):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_t, ab_prev = model.alpha_bar(t), model.alpha_bar(t_prev, final=1.0)
        beta = 1 - ab_t / ab_prev                          # this (possibly strided) step's beta

        x0 = model.x0(x, t, model.output(x, t))
        if clip_sample:
            x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        # mean of q(x_prev | x_t, x0): a blend of the clean prediction and the current sample
        mean = (ab_prev**0.5 * beta / (1 - ab_t)) * x0 + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab_t)) * x
        if t > 0:
            variance = max((1 - ab_prev) / (1 - ab_t) * beta, 1e-20)
            x = mean + variance**0.5 * _randn_like(x, generator)
        else:
            x = mean
        x = model.end_step(x, i)
    return x


def ddim(model: Denoiser, x: torch.Tensor, steps: int, *, eta: float = 0.0,
         generator: torch.Generator | None = None, timestep_spacing: str = "leading", steps_offset: int = 1,
         set_alpha_to_one: bool = False, clip_sample: bool = False, clip_sample_range: float = 1.0,
         step_rule: str = "grid") -> torch.Tensor:
    """DDIM: predict x0, then move to the next timestep along the predicted noise direction.

        x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s z,
        s = eta * sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).

    ``eta = 0`` is deterministic (the ODE's first-order solver); ``eta = 1`` is DDPM-like. After
    the last timestep it steps to ``alphas_cumprod[0]`` (SD) or to 1 with ``set_alpha_to_one``.
    Each step goes to the next timestep of the grid. (diffusers' ``DDIMScheduler`` and
    ``PNDMScheduler`` step to ``t - T // N`` instead, which is the same for "leading" and, when N
    divides T, "trailing" spacing, but not for "linspace".) ``step_rule="stride"`` copies diffusers'
    rule for every spacing and step count. ``clip_sample`` clamps the x0 prediction (not the noise
    estimate) to ``[-clip_sample_range, clip_sample_range]``, as diffusers' ``clip_sample=True`` does.
    Defined in notebook 06_reverse_diffusion.
    """
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
    _check_clip_range(clip_sample_range)
    T = model.schedule.num_train_timesteps
    timesteps = make_timesteps(T, steps, timestep_spacing, steps_offset)
    final = 1.0 if set_alpha_to_one else model.alpha_bar(0)
    for i, t in model.loop(timesteps, "DDIM"):
        t_prev = _previous_timestep(timesteps, i, T, step_rule)
        ab_t, ab_prev = model.alpha_bar(t), model.alpha_bar(t_prev, final=final)

        out = model.output(x, t)
        x0, eps = model.x0(x, t, out), model.eps(x, t, out)
        if clip_sample:
            x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        s = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
        x = ab_prev**0.5 * x0 + (1 - ab_prev - s**2) ** 0.5 * eps
        if eta > 0:
            x = x + s * _randn_like(x, generator)
        x = model.end_step(x, i)
    return x


# ----------------------------------------------------------------------------------------------
# PLMS (notebook 07_plms_and_dpm_solver)
# ----------------------------------------------------------------------------------------------

def _ddim_transfer(x: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_prev: float) -> torch.Tensor:
    """Deterministic DDIM step from alpha_bar ``ab_t`` to ``ab_prev`` with the noise estimate ``eps``."""
    x0 = (x - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5
    return ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps


def plms(model: Denoiser, x: torch.Tensor, steps: int, *, timestep_spacing: str = "leading",
         steps_offset: int = 1, set_alpha_to_one: bool = False, combine: str = "eps",
         step_rule: str = "grid") -> torch.Tensor:
    """PLMS: DDIM steps driven by an Adams-Bashforth combination of the last noise estimates.

    Step 1 is a pseudo improved-Euler step (two model calls: at x and at the DDIM-predicted next
    x, averaged); then AB2 ``(3e - e1)/2``, AB3 ``(23e - 16e1 + 5e2)/12`` and AB4
    ``(55e - 59e1 + 37e2 - 9e3)/24``. N steps cost N + 1 model calls (1 for N = 1). This is SD's
    plms.py and diffusers' ``PNDMScheduler(skip_prk_steps=True)``, whose timestep list shows the
    extra call as a repeated timestep (``[901, 801, 801, 701, ...]``).

    ``combine="eps"`` converts each model output to a noise estimate at its own (x, t) before
    combining. For a v-prediction model diffusers instead combines the raw outputs and converts
    the result at the current (x, t): ``combine="model_output"`` reproduces that (for an epsilon
    model the two are the same). ``step_rule="stride"`` steps to ``t - T // N`` as diffusers does
    (the same as ``"grid"`` for "leading" spacing; see ``ddim``); its first step then combines from
    ``t_1 + T // N`` to ``t_1`` as ``PNDMScheduler`` does. Defined in notebook 07_plms_and_dpm_solver.
    """
    if combine not in ("eps", "model_output"):
        raise ValueError(f"combine must be 'eps' or 'model_output', got {combine!r}")
    T = model.schedule.num_train_timesteps
    timesteps = make_timesteps(T, steps, timestep_spacing, steps_offset)
    final = 1.0 if set_alpha_to_one else model.alpha_bar(0)

    def estimate(x: torch.Tensor, t: int) -> torch.Tensor:
        out = model.output(x, t)
        return model.eps(x, t, out) if combine == "eps" else out

    history: list[torch.Tensor] = []                  # earlier estimates, newest last
    for i, t in model.loop(timesteps, "PLMS"):
        t_prev = _previous_timestep(timesteps, i, T, step_rule)
        ab_t, ab_prev = model.alpha_bar(t), model.alpha_bar(t_prev, final=final)

        e = estimate(x, t)
        if not history and i + 1 < len(timesteps):    # pseudo improved Euler: predict, re-evaluate, average
            e_pred = e if combine == "eps" else model.eps(x, t, e)
            # the predictor lands on the next timestep: after_step sees it, as diffusers' step callbacks do
            x_pred = model.end_step(_ddim_transfer(x, e_pred, ab_t, ab_prev), i, record=False)
            t_next = timesteps[i + 1]                 # the model sees the grid's next timestep
            e_combined = (e + estimate(x_pred, t_next)) / 2
            # diffusers' first PLMS step goes from t_next + T//N to t_next (= from t to t_next on a "leading" grid)
            t_from = t_next + T // len(timesteps) if step_rule == "stride" else t
            eps = e_combined if combine == "eps" else model.eps(x, t_from, e_combined)
            x = _ddim_transfer(x, eps, model.alpha_bar(t_from), model.alpha_bar(t_next, final=final))
            history = [e]
            x = model.end_step(x, i)
            continue
        elif not history:                             # a single step: plain DDIM
            e_combined = e
        elif len(history) == 1:
            e_combined = (3 * e - history[-1]) / 2
        elif len(history) == 2:
            e_combined = (23 * e - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_combined = (55 * e - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        eps = e_combined if combine == "eps" else model.eps(x, t, e_combined)
        x = _ddim_transfer(x, eps, ab_t, ab_prev)
        history = (history + [e])[-3:]
        x = model.end_step(x, i)
    return x


# ----------------------------------------------------------------------------------------------
# DPM-Solver and DPM-Solver++ (notebook 07_plms_and_dpm_solver)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Point:
    """A noise level on the solver's grid: alpha, sigma and lambda = log(alpha / sigma)."""

    alpha: float
    sigma: float

    @property
    def lam(self) -> float:
        return math.inf if self.sigma == 0 else math.log(self.alpha / self.sigma)

    @staticmethod
    def from_alpha_bar(ab: float) -> _Point:
        return _Point(ab**0.5, (1 - ab) ** 0.5)


def _first_order(x: torch.Tensor, d0: torch.Tensor, s: _Point, t: _Point, plus: bool) -> torch.Tensor:
    """One DPM-Solver-1 step from s to t (= DDIM); ``d0`` is the x0 (``plus``) or noise prediction."""
    h = t.lam - s.lam
    if plus:                                          # x_t = sigma_t/sigma_s x - alpha_t (e^-h - 1) x0
        return (t.sigma / s.sigma) * x - (t.alpha * math.expm1(-h)) * d0
    # x_t = alpha_t/alpha_s x - sigma_t (e^h - 1) eps;  sigma_t (e^h - 1) = alpha_t sigma_s/alpha_s - sigma_t
    coef = t.sigma * math.expm1(h) if t.sigma > 0 else t.alpha * s.sigma / s.alpha
    return (t.alpha / s.alpha) * x - coef * d0


def _multistep_update(x: torch.Tensor, d: list[torch.Tensor], pts: list[_Point], t: _Point,
                      plus: bool) -> torch.Tensor:
    """Multistep DPM-Solver(++) of order len(d): ``d`` holds the predictions at the grid points
    ``pts`` (oldest first, the last is the current point s0); steps from s0 to t."""
    order, s0 = len(d), pts[-1]
    if order == 1:
        return _first_order(x, d[-1], s0, t, plus)
    h = t.lam - s0.lam
    if h == 0:                                        # a zero step (Karras sigmas ending at sigma_min)
        return x
    m0, m1 = d[-1], d[-2]
    r0 = (s0.lam - pts[-2].lam) / h
    D1_0 = (m0 - m1) / r0                             # ~ h * derivative of the prediction in lambda
    if order == 2:
        if plus:   # DPM-Solver++(2M)
            return ((t.sigma / s0.sigma) * x - (t.alpha * math.expm1(-h)) * m0
                    - 0.5 * (t.alpha * math.expm1(-h)) * D1_0)
        return ((t.alpha / s0.alpha) * x - (t.sigma * math.expm1(h)) * m0
                - 0.5 * (t.sigma * math.expm1(h)) * D1_0)
    m2 = d[-3]
    r1 = (pts[-2].lam - pts[-3].lam) / h
    D1_1 = (m1 - m2) / r1
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)      # first derivative, second-order accurate
    D2 = (D1_0 - D1_1) / (r0 + r1)                    # second derivative
    if plus:       # DPM-Solver++(3M)
        return ((t.sigma / s0.sigma) * x - (t.alpha * math.expm1(-h)) * m0
                + (t.alpha * (math.expm1(-h) / h + 1.0)) * D1
                - (t.alpha * ((math.expm1(-h) + h) / h**2 - 0.5)) * D2)
    return ((t.alpha / s0.alpha) * x - (t.sigma * math.expm1(h)) * m0
            - (t.sigma * (math.expm1(h) / h - 1.0)) * D1
            - (t.sigma * ((math.expm1(h) - h) / h**2 - 0.5)) * D2)


def _singlestep_update(x_s: torch.Tensor, d: list[torch.Tensor], pts: list[_Point], t: _Point,
                       plus: bool) -> torch.Tensor:
    """Singlestep DPM-Solver(++) of order len(d) from the group's start ``pts[0]`` (sample ``x_s``)
    to t, using the predictions ``d`` at ``pts`` (the start first, then intermediate points)."""
    order, s = len(d), pts[0]
    if order == 1:
        return _first_order(x_s, d[0], s, t, plus)
    h = t.lam - s.lam
    if order == 2:
        r = (pts[1].lam - s.lam) / h
        D1 = (d[1] - d[0]) / r
        if plus:
            return ((t.sigma / s.sigma) * x_s - (t.alpha * math.expm1(-h)) * d[0]
                    - 0.5 * (t.alpha * math.expm1(-h)) * D1)
        return ((t.alpha / s.alpha) * x_s - (t.sigma * math.expm1(h)) * d[0]
                - 0.5 * (t.sigma * math.expm1(h)) * D1)
    # third order (DPM-Solver-3): its final update needs only the last intermediate point
    r2 = (pts[2].lam - s.lam) / h
    D1 = (d[2] - d[0]) / r2
    if plus:
        return ((t.sigma / s.sigma) * x_s - (t.alpha * math.expm1(-h)) * d[0]
                + (t.alpha * (math.expm1(-h) / h + 1.0)) * D1)
    return ((t.alpha / s.alpha) * x_s - (t.sigma * math.expm1(h)) * d[0]
            - (t.sigma * (math.expm1(h) / h - 1.0)) * D1)


def _singlestep_orders(steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The order of each step of a singlestep solver, as diffusers' ``DPMSolverSinglestepScheduler``.

    Steps come in groups ``1, 2, ..., order``: a group of k steps is one k-th order step whose
    first k-1 steps land on its intermediate points. ``lower_order_final`` lets the last group be
    shorter (diffusers switches it on when N is not a multiple of the order, or for a "zero" end);
    a "zero" end always makes the last step first order.
    """
    lower_order_final = lower_order_final or final_zero or steps % order != 0
    group = list(range(1, order + 1))
    if order == 1:
        orders = [1] * steps
    elif not lower_order_final:
        orders = group * (steps // order)
    elif order == 2:
        orders = group * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else group * (steps // 2) + [1]
    elif steps % 3 == 0:
        orders = group * (steps // 3 - 1) + [1, 2] + [1]
    else:
        orders = group * (steps // 3) + ([1] if steps % 3 == 1 else [1, 2])
    if final_zero:
        orders[-1] = 1
    return orders


def karras_sigmas(schedule: NoiseSchedule, steps: int, rho: float = 7.0) -> tuple[list[float], list[int]]:
    """Karras et al.'s noise levels for ``steps`` steps and the timesteps the model is called at.

    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` between
    the schedule's largest and smallest ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``; each sigma's
    timestep is interpolated in log-sigma and rounded. Exactly diffusers' ``use_karras_sigmas=True``
    (sigmas in float32, as diffusers keeps them). Defined in notebook 07_plms_and_dpm_solver.
    """
    ab = schedule.alphas_cumprod.float().numpy().astype(np.float64)    # diffusers' float32 alphas_cumprod
    sig = ((1 - ab) / ab) ** 0.5
    log_sig = np.log(sig)
    ramp = np.linspace(0, 1, steps)
    lo, hi = sig[0] ** (1 / rho), sig[-1] ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    log_s = np.log(np.maximum(sigmas, 1e-10))
    dists = log_s - log_sig[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sig) - 2)
    w = np.clip((log_sig[low] - log_s) / (log_sig[low] - log_sig[low + 1]), 0, 1)
    timesteps = ((1 - w) * low + w * (low + 1)).round().astype(np.int64)
    return [float(v) for v in sigmas.astype(np.float32)], [int(t) for t in timesteps]


def _point_from_sigma(sigma: float) -> _Point:
    """The grid point of diffusers' sigma = sigma_t / alpha_t (``_sigma_to_alpha_sigma_t``)."""
    alpha = float(np.float32(1.0) / np.sqrt(np.float32(sigma) ** 2 + np.float32(1.0)))
    return _Point(alpha, float(np.float32(sigma) * np.float32(alpha)))


def _dpm_solve(model: Denoiser, x: torch.Tensor, steps: int, *, plus: bool, order: int,
               timestep_spacing: str, steps_offset: int, final_sigmas_type: str, lower_order_final: bool,
               method: str, use_karras_sigmas: bool = False) -> torch.Tensor:
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(f"final_sigmas_type must be 'zero' (end at a clean x0) or 'sigma_min' (end at "
                         f"alphas_cumprod[0]), got {final_sigmas_type!r}")
    if method not in ("multistep", "singlestep"):
        raise ValueError(f"method must be 'multistep' or 'singlestep', got {method!r}")
    T = model.schedule.num_train_timesteps
    if use_karras_sigmas:
        if method != "multistep":
            raise ValueError("use_karras_sigmas is implemented for the multistep solvers (diffusers' "
                             "DPMSolverMultistepScheduler); use method='multistep'")
        sigmas, timesteps = karras_sigmas(model.schedule, steps)
        last = sigmas[-1] if final_sigmas_type == "sigma_min" else 0.0
        grid = [_point_from_sigma(s) for s in sigmas] + [_Point(1.0, 0.0) if last == 0 else _point_from_sigma(last)]
    else:
        timesteps = dpm_solver_timesteps(T, steps, timestep_spacing, steps_offset)
        end = 1.0 if final_sigmas_type == "zero" else model.alpha_bar(0)
        grid = [_Point.from_alpha_bar(model.alpha_bar(t)) for t in timesteps] + [_Point.from_alpha_bar(end)]
    N, name = len(timesteps), ("DPM-Solver++" if plus else "DPM-Solver")

    def prediction(x: torch.Tensor, t: int, p: _Point) -> torch.Tensor:
        out = model.output(x, t)
        if not use_karras_sigmas:
            return model.x0(x, t, out) if plus else model.eps(x, t, out)
        # the noise level is the grid point's (a Karras sigma), not the rounded timestep's
        kind = model.prediction_type
        if kind == "epsilon":
            return (x - p.sigma * out) / p.alpha if plus else out
        if kind == "v_prediction":
            return p.alpha * x - p.sigma * out if plus else p.alpha * out + p.sigma * x
        return out if plus else (x - p.alpha * out) / p.sigma

    if method == "multistep":
        d: list[torch.Tensor] = []                    # predictions at the grid points so far
        for i, t in model.loop(timesteps, f"{name} {order}M"):
            d = (d + [prediction(x, t, grid[i])])[-order:]
            k = len(d)                                # warm up with lower orders (from the first executed step)
            if i == N - 1 and ((lower_order_final and N < 15) or final_sigmas_type == "zero"):
                k = 1                                 # the last step is first order
            if i == N - 2 and lower_order_final and N < 15:
                k = min(k, 2)
            x = _multistep_update(x, d[-k:], grid[i + 1 - k:i + 1], grid[i + 1], plus)
            x = model.end_step(x, i)
        return x

    orders = _singlestep_orders(N, order, lower_order_final, final_sigmas_type == "zero")
    for i, t in model.loop(timesteps, f"{name} {order}S"):
        if orders[i] == 1 or i == model.start_step:   # a new group starts here (lower order if cut short)
            x_s, start, d = x, i, []
        d.append(prediction(x, t, grid[i]))
        x = _singlestep_update(x_s, d, grid[start:i + 1], grid[i + 1], plus)
        x = model.end_step(x, i)
    return x


def dpm_solver(model: Denoiser, x: torch.Tensor, steps: int, *, order: int = 2, method: str = "multistep",
               timestep_spacing: str = "linspace", steps_offset: int = 0,
               final_sigmas_type: str = "sigma_min", lower_order_final: bool = True,
               use_karras_sigmas: bool = False) -> torch.Tensor:
    """DPM-Solver (Lu et al. 2022a): exact integration of the linear part of the diffusion ODE in
    lambda = log(alpha/sigma), Taylor expansion of the noise prediction.

        order 1:  x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s,   h = lambda_t - lambda_s

    (= DDIM). ``method="multistep"`` reuses earlier predictions (one call per step, orders 2 and 3
    from finite differences); ``"singlestep"`` spends the calls of a group on intermediate points.
    The last step goes to ``alphas_cumprod[0]`` (``final_sigmas_type="sigma_min"``, the only end
    diffusers allows for this algorithm) or to a clean x0 (``"zero"``). ``lower_order_final``
    drops to lower orders for the last steps when N < 15. ``use_karras_sigmas`` steps through Karras'
    noise levels instead (``karras_sigmas``; multistep only, as diffusers). Defined in notebook
    07_plms_and_dpm_solver.
    """
    return _dpm_solve(model, x, steps, plus=False, order=order, timestep_spacing=timestep_spacing,
                      steps_offset=steps_offset, final_sigmas_type=final_sigmas_type,
                      lower_order_final=lower_order_final, method=method, use_karras_sigmas=use_karras_sigmas)


def dpm_solver_pp(model: Denoiser, x: torch.Tensor, steps: int, *, order: int = 2, method: str = "multistep",
                  timestep_spacing: str = "linspace", steps_offset: int = 0,
                  final_sigmas_type: str = "zero", lower_order_final: bool = True,
                  use_karras_sigmas: bool = False) -> torch.Tensor:
    """DPM-Solver++ (Lu et al. 2022b): the same exact integration, written for the x0 prediction.

        order 1:  x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) x0_s
        2M:       x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) (x0_i + (x0_i - x0_{i-1}) / (2 r)),
                  r = h_{i-1} / h_i

    Stable with large guidance scales, which is why SD samples with DPM-Solver++(2M). By default
    the last step returns the x0 prediction (``final_sigmas_type="zero"``, diffusers' default).
    Options as ``dpm_solver``. Defined in notebook 07_plms_and_dpm_solver.
    """
    return _dpm_solve(model, x, steps, plus=True, order=order, timestep_spacing=timestep_spacing,
                      steps_offset=steps_offset, final_sigmas_type=final_sigmas_type,
                      lower_order_final=lower_order_final, method=method, use_karras_sigmas=use_karras_sigmas)


# ----------------------------------------------------------------------------------------------
# Rectified flow (notebook 12_stable_diffusion_3)
# ----------------------------------------------------------------------------------------------

class FlowDenoiser(Denoiser):
    """A rectified-flow model as the flow samplers see it: ``model_fn(x, sigma * T)`` returns the velocity.

    The grid (``loop``, ``after_step``'s ``t_next``) holds the float timesteps ``sigma * T`` the model is
    called at (``sampler_timesteps``), not integers; ``timesteps`` records the calls made.
    Defined in notebook 12_stable_diffusion_3.
    """

    def __init__(self, model_fn: ModelFn, schedule: FlowMatchSchedule, record_trajectory: bool = False,
                 show_progress: bool = False, start_step: int = 0, after_step: AfterStep | None = None):
        super().__init__(model_fn, schedule, "epsilon", record_trajectory, show_progress, start_step, after_step)
        self.prediction_type = FLOW_PREDICTION
        self.grid: list[float] = []            # timesteps sigma * T

    def output(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The velocity at (x, sigma): one model call with the timestep ``sigma * T``."""
        t = sigma * self.schedule.num_train_timesteps
        out = self.model_fn(x, torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device))   # t: (B,)
        if not torch.is_tensor(out) or out.shape != x.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"model_fn(x, t) returned {got} for x of shape {tuple(x.shape)}; a flow sampler "
                             "needs a velocity of the same shape")
        self.calls += 1
        self.timesteps.append(t)
        return out.to(x.dtype)

    def loop(self, sigmas: Sequence[float], desc: str) -> Iterable[tuple[int, float]]:
        """``enumerate(sigmas)`` from ``start_step`` on (the sigmas the model is called at, not the final 0)."""
        self.grid = [float(s) * self.schedule.num_train_timesteps for s in sigmas]
        todo = list(enumerate(float(s) for s in sigmas))[self.start_step:]
        return progress(todo, desc=desc, total=len(todo), disable=None if self.show_progress else True)


def flow_euler(model: FlowDenoiser, x: torch.Tensor, steps: int, *, shift: float | None = None) -> torch.Tensor:
    """Euler's method on ``dx/dsigma = v(x, sigma)`` from sigma = 1 to 0: ``x <- x + (sigma_next - sigma) v``.

    The grid is ``FlowMatchSchedule.sigmas(steps, shift)`` (``shift``: None takes the schedule's);
    the same steps as diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...)``.
    Defined in notebook 12_stable_diffusion_3.
    """
    sigmas = model.schedule.sigmas(steps, shift)                        # (steps + 1,), ends at 0
    for i, sigma in model.loop(sigmas[:-1].tolist(), "flow Euler"):
        v = model.output(x, sigma)
        x = x + (sigmas[i + 1] - sigmas[i]).item() * v                 # sigma_next < sigma: towards the data
        x = model.end_step(x, i)
    return x


# ----------------------------------------------------------------------------------------------
# The one interface
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler: its function, the orders it has and the notebook that builds it."""

    fn: Callable[..., torch.Tensor]
    orders: tuple[int, ...]
    default_order: int
    notebook: str
    summary: str

    @property
    def options(self) -> list[str]:
        """The sampler-specific keyword options (timestep spacing, end point, ...)."""
        params = inspect.signature(self.fn).parameters
        return [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _COMMON]


_COMMON = ("generator", "eta", "order")

SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(ddpm, (1,), 1, "06_reverse_diffusion", "ancestral sampling, stochastic"),
    "ddim": SamplerInfo(ddim, (1,), 1, "06_reverse_diffusion", "DDIM, deterministic for eta=0"),
    "plms": SamplerInfo(plms, (4,), 4, "07_plms_and_dpm_solver", "pseudo linear multistep, N+1 calls"),
    "dpm-solver": SamplerInfo(dpm_solver, (1, 2, 3), 2, "07_plms_and_dpm_solver",
                              "DPM-Solver on the noise prediction"),
    "dpm-solver++": SamplerInfo(dpm_solver_pp, (1, 2, 3), 2, "07_plms_and_dpm_solver",
                                "DPM-Solver++ on the x0 prediction"),
    "flow-euler": SamplerInfo(flow_euler, (1,), 1, "12_stable_diffusion_3",
                              "Euler on a rectified-flow model's velocity (SD 3)"),
}
#: The samplers of rectified-flow models (a ``FlowMatchSchedule``); the others need a ``NoiseSchedule``.
FLOW_SAMPLERS = ("flow-euler",)


def model_schedule_of(model_fn: object) -> NoiseSchedule | FlowMatchSchedule | None:
    """The training schedule recorded on a model (``model.training_schedule``, set by the loaders of
    ``training``, ``config`` and ``convert``), looking through bound methods, ``functools.partial``,
    DDP's ``.module`` and ``torch.compile``'s ``_orig_mod``; None when the model does not say.
    Defined in notebook 06_reverse_diffusion."""
    seen: set[int] = set()
    todo = [model_fn]
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        found = getattr(obj, "training_schedule", None)
        if isinstance(found, NoiseSchedule | FlowMatchSchedule):
            return found
        todo += [getattr(obj, name, None) for name in ("__self__", "func", "module", "_orig_mod")]
    return None


def sampler_timesteps(sampler: str, schedule: NoiseSchedule | FlowMatchSchedule, steps: int,
                      **sampler_options) -> list[int] | list[float]:
    """The timesteps (descending) at which ``sampler`` evaluates the model for ``steps`` steps, with
    its default options or ``sampler_options``: the grid that ``sample``'s ``start_step`` indexes
    (diffusers' ``scheduler.timesteps``; PLMS's list there repeats its second timestep, this grid
    does not). Defined in notebook 13_beyond_text_to_image.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; available samplers: {', '.join(available_samplers())}")
    params = inspect.signature(SAMPLERS[sampler].fn).parameters
    unknown = sorted(set(sampler_options) - set(params))
    if unknown:
        raise TypeError(f"sampler {sampler!r} has no option(s) {', '.join(unknown)}")
    opts = {name: p.default for name, p in params.items() if p.kind is p.KEYWORD_ONLY} | sampler_options
    _check_model_kind(sampler, schedule)
    T = schedule.num_train_timesteps
    if sampler in FLOW_SAMPLERS:     # float timesteps sigma * T, as FlowMatchEulerDiscreteScheduler.timesteps
        return (schedule.sigmas(steps, opts["shift"])[:-1] * T).tolist()
    if sampler in ("ddpm", "ddim", "plms"):
        return make_timesteps(T, steps, opts["timestep_spacing"], opts["steps_offset"])
    if opts.get("use_karras_sigmas"):
        return karras_sigmas(schedule, steps)[1]
    return dpm_solver_timesteps(T, steps, opts["timestep_spacing"], opts["steps_offset"])


def _check_model_kind(sampler: str, schedule: object) -> None:
    """A flow sampler needs a rectified-flow model and the others a noise-schedule model: a clear error otherwise."""
    flow = isinstance(schedule, FlowMatchSchedule)
    if sampler in FLOW_SAMPLERS and not flow:
        raise ValueError(f"sampler {sampler!r} integrates the velocity of a rectified-flow model (SD 3, notebook 12), "
                         f"but this model was trained on a noise schedule ({schedule!r}); use one of "
                         f"{', '.join(n for n in SAMPLERS if n not in FLOW_SAMPLERS)}")
    if flow and sampler not in FLOW_SAMPLERS:
        raise ValueError(f"this model was trained with rectified flow (it predicts the velocity noise - x0, not the "
                         f"noise), so the {sampler!r} sampler cannot run it; use sampler={FLOW_SAMPLERS[0]!r}")
    if not flow and not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule (or a FlowMatchSchedule for a rectified-flow model), got "
                        f"{type(schedule).__name__}; build one with course_lib.diffusion.schedules.make_schedule")


def available_samplers(flow: bool | None = None) -> list[str]:
    """The names ``sample`` accepts: all of them, or with ``flow=False`` those for a model trained on a
    noise schedule, with ``flow=True`` those for a rectified-flow model (notebook 12).
    Defined in notebook 06_reverse_diffusion."""
    return [n for n in SAMPLERS if flow is None or (n in FLOW_SAMPLERS) == flow]


def sample(model_fn: ModelFn, schedule: NoiseSchedule | FlowMatchSchedule, x_T: torch.Tensor,
           sampler: str = "ddim", steps: int = 20, *, prediction_type: str | None = None,
           generator: torch.Generator | Sequence[torch.Generator] | None = None,
           eta: float = 0.0, order: int | None = None, return_trajectory: bool = False,
           model_schedule: NoiseSchedule | FlowMatchSchedule | int | None = None, show_progress: bool = False,
           refused: str | None = None, start_step: int = 0, after_step: AfterStep | None = None,
           **sampler_options) -> SampleResult:
    """Run a sampler from the noise ``x_T`` to a sample; one interface for every sampler.

    ``model_fn(x, t)``: the model, ``t`` a (B,) long tensor of training timesteps.
    ``schedule``: the noise schedule the model was trained with; pass ``model_schedule`` (the
    model's schedule, or its number of training timesteps) to have that checked. A model that
    records its schedule (``model_fn.training_schedule``, see ``model_schedule_of``) is checked
    without it: sampling it with another schedule is an error.
    ``x_T``: the starting noise, float, (B, ...) (all samplers here start from unit variance).
    ``sampler``: one of ``available_samplers()``; ``steps``: solver steps (N).
    ``prediction_type``: what the model predicts: "epsilon" (None: the default), "v_prediction" or
    "sample"; for a rectified-flow model (``schedule`` a ``FlowMatchSchedule``, notebook 12) "flow" (the
    default there), with ``sampler="flow-euler"`` and its option ``shift``.
    ``generator``: for the noise of ddpm and ddim with ``eta > 0`` (a list: one generator per batch
    row, as diffusers' lists of generators). ``order``: for the
    DPM-Solvers (1, 2, 3; default 2). ``sampler_options``: timestep spacing and similar, see
    ``SAMPLERS[name].options`` and each sampler's docstring.
    ``refused``: a reason this sampler must not run here (``convert.load_diffusers_pipeline`` sets it
    for a sampler that cannot copy a folder's scheduler settings); raised as a ``ValueError``.
    ``start_step`` (img2img, notebook 13_beyond_text_to_image): skip the first ``start_step`` steps
    of the sampler's grid (``sampler_timesteps``): ``x_T`` is then a sample at the timestep
    ``sampler_timesteps(...)[start_step]``, e.g. an image noised there. ``after_step(x, t_next) -> x``
    runs after every step (``t_next``: the grid's next timestep, None after the last); inpainting
    blends the known region there.
    Runs without gradients. Defined in notebook 06_reverse_diffusion.
    """
    if refused:
        raise ValueError(refused)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; available samplers: "
                         f"{', '.join(available_samplers())}")
    info = SAMPLERS[sampler]
    if not isinstance(schedule, NoiseSchedule | FlowMatchSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule (or a FlowMatchSchedule for a rectified-flow model), got "
                        f"{type(schedule).__name__}; build one with course_lib.diffusion.schedules.make_schedule")
    if model_schedule is None:
        model_schedule = model_schedule_of(model_fn)
    flow = isinstance(schedule, FlowMatchSchedule)
    if isinstance(model_schedule, NoiseSchedule | FlowMatchSchedule) and isinstance(model_schedule,
                                                                                     FlowMatchSchedule) != flow:
        raise ValueError(("this model was trained with rectified flow, but schedule= is a NoiseSchedule; pass its "
                          f"FlowMatchSchedule and sampler={FLOW_SAMPLERS[0]!r}") if not flow else
                         ("this model was trained on a noise schedule, but schedule= is a FlowMatchSchedule; pass "
                          "its NoiseSchedule and a sampler such as 'dpm-solver++'"))
    _check_model_kind(sampler, schedule)
    if flow:
        T_model = getattr(model_schedule, "num_train_timesteps", model_schedule)
        if T_model is not None and T_model != schedule.num_train_timesteps:
            raise ValueError(f"the model takes timesteps sigma * {T_model}, the schedule gives sigma * "
                             f"{schedule.num_train_timesteps}; sample with the model's own schedule")
        if prediction_type not in (None, FLOW_PREDICTION):
            raise ValueError(f"a rectified-flow model predicts the velocity (prediction_type={FLOW_PREDICTION!r}), "
                             f"got prediction_type={prediction_type!r}")
        if "shift" in sampler_options and sampler_options["shift"] is not None:
            check_shift(sampler_options["shift"])
    elif model_schedule is not None:
        check_schedule(model_schedule, schedule)
    prediction_type = prediction_type or ("epsilon" if not flow else FLOW_PREDICTION)
    if not torch.is_tensor(x_T) or not torch.is_floating_point(x_T):
        got = f"a tensor of dtype {x_T.dtype}" if torch.is_tensor(x_T) else type(x_T).__name__
        raise TypeError(f"x_T must be a floating-point tensor of starting noise, got {got}; "
                        "use e.g. torch.randn(B, C, H, W, generator=g)")
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"x_T needs a batch dimension first, got shape {tuple(x_T.shape)}")
    T = schedule.num_train_timesteps
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int from 1 to num_train_timesteps={T}, got {steps!r}")
    steps = int(steps)
    if not isinstance(start_step, numbers.Integral) or isinstance(start_step, bool) or not 0 <= start_step < steps:
        raise ValueError(f"start_step must be an int from 0 to steps - 1 = {steps - 1} (the first step to run), "
                         f"got {start_step!r}")
    if not flow:
        check_prediction_type(prediction_type)
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable as model_fn(x, t), got {type(model_fn).__name__}")

    params = inspect.signature(info.fn).parameters
    if order is not None and order not in info.orders:
        raise ValueError(f"sampler {sampler!r} has no order {order!r}; its orders: "
                         f"{', '.join(map(str, info.orders))}" + ("" if "order" in params else
                                                                 "; for higher orders use dpm-solver++"))
    unknown = sorted(set(sampler_options) - set(info.options))
    if unknown:
        raise TypeError(f"sampler {sampler!r} has no option(s) {', '.join(unknown)}; its options: "
                        f"{', '.join(info.options) or 'none'}")
    kwargs = dict(sampler_options)
    if "order" in params:
        kwargs["order"] = info.default_order if order is None else order
    if "eta" in params:
        kwargs["eta"] = eta
    elif eta != 0:
        raise ValueError(f"eta only applies to the ddim sampler, not to {sampler!r}; leave eta=0")
    if "generator" in params:
        kwargs["generator"] = generator

    if flow:
        model = FlowDenoiser(model_fn, schedule, record_trajectory=return_trajectory, show_progress=show_progress,
                             start_step=int(start_step), after_step=after_step)
    else:
        model = Denoiser(model_fn, schedule, prediction_type, record_trajectory=return_trajectory,
                         show_progress=show_progress, start_step=int(start_step), after_step=after_step)
    model.record(x_T)
    with torch.no_grad():
        x = info.fn(model, x_T, steps, **kwargs)
    return SampleResult(sample=x, trajectory=model.trajectory, model_calls=model.calls,
                        timesteps=model.timesteps)
