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

This module holds the one interface (``sample``, the registry ``SAMPLERS``, ``sampler_timesteps``);
the pieces live beside it: ``denoiser`` (the model as a sampler sees it, ``SampleResult``),
``timesteps`` (the grids), ``ddpm_ddim``, ``plms``, ``dpm_solver`` and ``flow_euler`` (the samplers).
Their public names are importable from here too.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from course_lib.diffusion.ddpm_ddim import ddim, ddpm
from course_lib.diffusion.denoiser import AfterStep, Denoiser, ModelFn, SampleResult
from course_lib.diffusion.dpm_solver import dpm_solver, dpm_solver_pp, karras_sigmas
from course_lib.diffusion.flow_euler import FlowDenoiser, flow_euler
from course_lib.diffusion.forward import check_prediction_type
from course_lib.diffusion.plms import plms
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule, check_shift
from course_lib.diffusion.schedules import NoiseSchedule, check_schedule
from course_lib.diffusion.timesteps import SPACINGS, STEP_RULES, dpm_solver_timesteps, make_timesteps

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
    "SPACINGS",
    "STEP_RULES",
]


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
    Supports notebook 06_reverse_diffusion."""
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
    Supports notebook 06_reverse_diffusion."""
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
