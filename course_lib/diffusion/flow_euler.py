"""The sampler of rectified-flow models (SD 3): Euler steps of the velocity.

Built in notebook 12_stable_diffusion_3 (``sampler="flow-euler"``).

``FlowDenoiser`` is the ``Denoiser`` of a model that predicts the velocity ``noise - x0`` and takes
float timesteps ``sigma * T``; ``flow_euler`` integrates ``dx/dsigma = v`` from sigma = 1 to 0 on
``FlowMatchSchedule.sigmas`` (diffusers' ``FlowMatchEulerDiscreteScheduler``). Call it through
``samplers.sample(..., sampler="flow-euler")``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from course_lib.core.utils import progress
from course_lib.diffusion.denoiser import AfterStep, Denoiser, ModelFn
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule

__all__ = ["FlowDenoiser", "flow_euler"]


class FlowDenoiser(Denoiser):
    """A rectified-flow model as the flow samplers see it: ``model_fn(x, sigma * T)`` returns the velocity.

    The grid (``loop``, ``after_step``'s ``t_next``) holds the float timesteps ``sigma * T`` the model is
    called at (``sampler_timesteps``), not integers; ``timesteps`` records the calls made.
    Supports notebook 12_stable_diffusion_3.
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
    Supports notebook 12_stable_diffusion_3.
    """
    sigmas = model.schedule.sigmas(steps, shift)                        # (steps + 1,), ends at 0
    for i, sigma in model.loop(sigmas[:-1].tolist(), "flow Euler"):
        v = model.output(x, sigma)
        x = x + (sigmas[i + 1] - sigmas[i]).item() * v                 # sigma_next < sigma: towards the data
        x = model.end_step(x, i)
    return x
