"""The first samplers: DDPM's ancestral steps and DDIM's deterministic ones. Defined in notebook 06_reverse_diffusion.

Both predict x0 at each timestep of the grid and step to the next one: DDPM draws from the Gaussian
posterior q(x_prev | x_t, x0), DDIM moves along the predicted noise direction (``eta`` = 0:
deterministic). Each equals diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` with SD's settings
(``samplers`` has the table); call them through ``samplers.sample``.
"""

from __future__ import annotations

import numbers

import torch

from course_lib.diffusion.denoiser import Denoiser, _randn_like
from course_lib.diffusion.timesteps import _previous_timestep, make_timesteps

__all__ = ["ddpm", "ddim"]


def _check_clip_range(clip_sample_range: float) -> None:
    if not (isinstance(clip_sample_range, numbers.Real) and clip_sample_range > 0):
        raise ValueError(f"clip_sample_range must be a number > 0, got {clip_sample_range!r}")


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
