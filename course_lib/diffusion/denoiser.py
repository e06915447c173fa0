"""The model as a sampler sees it, and what a sampler returns.

Part of notebook 06_reverse_diffusion's samplers (``samplers.sample`` builds it).

``Denoiser`` wraps ``model_fn(x, t)`` with its noise schedule and prediction type: it makes the
model calls (and counts them), converts the model output to the x0 and noise predictions, loops over
a sampler's timestep grid (from ``start_step`` on, for img2img) and records the trajectory.
``SampleResult`` is what ``samplers.sample`` returns; ``_randn_like`` draws the samplers' noise as
diffusers does (one generator per batch row when given a list). The samplers themselves live in
``ddpm_ddim``, ``plms``, ``dpm_solver`` and ``flow_euler``; ``samplers`` holds the one interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from course_lib.core.utils import progress
from course_lib.diffusion.forward import check_prediction_type, predict_eps, predict_x0
from course_lib.diffusion.schedules import NoiseSchedule

__all__ = ["ModelFn", "AfterStep", "Generators", "SampleResult", "Denoiser"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# after_step(x, t_next) -> x: called after every executed step with the grid's next timestep (None after the last)
AfterStep = Callable[[torch.Tensor, int | None], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SampleResult:
    """What ``sample`` returns.

    ``sample``: the final x_0. ``trajectory``: ``[x_T, x after step 1, ..., x_0]`` when asked
    for, else None. ``model_calls``: how many times ``model_fn`` really ran. ``timesteps``: the
    timestep of each of those calls, in order. Supports notebook 06_reverse_diffusion.
    """

    sample: torch.Tensor
    trajectory: list[torch.Tensor] | None
    model_calls: int
    timesteps: list[int] = field(default_factory=list)


class Denoiser:
    """The model as a sampler sees it: ``model_fn`` + schedule + prediction type.

    Counts the calls it makes (``calls``, ``timesteps``), converts the model's output to the
    x0 and noise predictions, and records the trajectory. Supports notebook 06_reverse_diffusion.

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
