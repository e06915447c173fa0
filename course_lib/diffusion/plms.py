"""PLMS, pseudo linear multistep: DDIM steps driven by earlier noise estimates.

Defined in notebook 07_plms_and_dpm_solver.

SD's plms.py and diffusers' ``PNDMScheduler(skip_prk_steps=True)``: a pseudo improved-Euler first
step (two model calls), then Adams-Bashforth combinations of up to four noise estimates, each step
a deterministic DDIM transfer. Call it through ``samplers.sample(..., sampler="plms")``.
"""

from __future__ import annotations

import torch

from course_lib.diffusion.denoiser import Denoiser
from course_lib.diffusion.timesteps import _previous_timestep, make_timesteps

__all__ = ["plms"]


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
