"""The timestep grids of the samplers: which training timesteps a sampler calls the model at.

``make_timesteps`` gives the grid of DDPM, DDIM and PLMS (diffusers' "leading", "trailing" and
"linspace" spacings), ``dpm_solver_timesteps`` that of the DPM-Solvers; ``_previous_timestep`` says
where a step goes (the next grid point, or diffusers' DDIM/PNDM stride rule). Karras' noise levels,
which come with their own timesteps, are in ``dpm_solver.karras_sigmas``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SPACINGS", "STEP_RULES", "make_timesteps", "dpm_solver_timesteps"]

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
    ``round(linspace(0, T-1, N))``. Supports notebook 06_reverse_diffusion.
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
