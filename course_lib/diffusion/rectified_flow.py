"""Rectified flow: Stable Diffusion 3's training objective and its Euler sampler.

SD 1-2 blend an image ``x0`` and noise ``eps`` along a curved path, ``x_t = alpha_t x0 + sigma_t eps``
with ``alpha_t^2 + sigma_t^2 = 1``, and learn ``eps``. SD 3 (Esser et al. 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis") draws a straight line between them:

    x_sigma = (1 - sigma) x0 + sigma eps,            sigma in [0, 1]   (0: the image, 1: pure noise)
    v = d x_sigma / d sigma = eps - x0               what the network learns (the "velocity")
    sigma = sigmoid(u),  u ~ N(logit_mean, logit_std^2)   the logit-normal: more training near sigma = 1/2
    network input: the timestep sigma * num_train_timesteps (diffusers' convention, 0..1000)

Sampling integrates ``dx / dsigma = v(x, sigma)`` from sigma = 1 (noise) to 0 with Euler steps,
``x <- x + (sigma_next - sigma) v``, on a grid bent towards the noisy end by the *shift*

    sigma' = shift * sigma / (1 + (shift - 1) * sigma)   (SD 3 uses shift = 3 for 1024x1024 images)

which is ``samplers.sample(..., sampler="flow-euler")`` = diffusers' ``FlowMatchEulerDiscreteScheduler``.

Defined in notebook 12_stable_diffusion_3.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FLOW_PREDICTION", "FlowMatchSchedule", "shift_sigmas", "flow_interpolate", "flow_velocity",
           "logit_normal_sigmas", "flow_sigmas", "flow_matching_loss", "check_shift"]

#: The prediction type of a rectified-flow model: the velocity ``eps - x0``.
FLOW_PREDICTION = "flow"


def check_shift(shift: object) -> float:
    """``shift`` as a float, or a ``ValueError`` unless it is a finite number > 0.

    Supports notebook 12_stable_diffusion_3."""
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a number > 0 (1 leaves the sigmas alone, larger spends more steps near "
                         f"the noise; SD 3 uses 3.0), got {shift!r}")
    return float(shift)


def shift_sigmas(sigmas: torch.Tensor | np.ndarray | float, shift: float) -> Any:
    """SD 3's timestep shift ``shift * s / (1 + (shift - 1) * s)``: keeps 0 and 1, moves the middle towards 1.

    Defined in notebook 12_stable_diffusion_3."""
    shift = check_shift(shift)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True)
class FlowMatchSchedule:
    """What a rectified-flow model was trained with, and how to sample it.

    ``num_train_timesteps``: the network sees ``sigma * num_train_timesteps`` as its timestep (1000, as
    SD 3); ``logit_mean``/``logit_std``: the logit-normal of the training sigmas (SD 3: 0 and 1);
    ``shift``: the default timestep shift of the sampling grid (SD 3: 3.0; 1.0 for the course's 8x8
    latents). A model that records a ``FlowMatchSchedule`` can only be sampled by the flow samplers.
    Defined in notebook 12_stable_diffusion_3.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0

    name = "rectified_flow"

    def __post_init__(self) -> None:
        check_shift(self.shift)
        T = self.num_train_timesteps
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {T!r}")
        if not (isinstance(self.logit_std, numbers.Real) and self.logit_std > 0):
            raise ValueError(f"logit_std must be > 0, got {self.logit_std!r}")
        if not isinstance(self.logit_mean, numbers.Real):
            raise ValueError(f"logit_mean must be a number, got {self.logit_mean!r}")

    def config(self) -> dict[str, Any]:
        """The JSON description stored with a checkpoint (``FlowMatchSchedule(**config)`` rebuilds it)."""
        return {"name": self.name, "num_train_timesteps": self.num_train_timesteps, "shift": self.shift,
                "logit_mean": self.logit_mean, "logit_std": self.logit_std}

    def draw_training_sigmas(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training sigmas from the logit-normal, (n,) float32."""
        return logit_normal_sigmas(n, self.logit_mean, self.logit_std, generator)

    def sigmas(self, steps: int, shift: float | None = None) -> torch.Tensor:
        """The sampling grid, ``steps + 1`` sigmas from 1 down to 0 (``flow_sigmas``)."""
        return flow_sigmas(steps, self.shift if shift is None else shift, self.num_train_timesteps)


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The point ``(1 - sigma) x0 + sigma noise`` on the straight line; ``sigma`` a float or (B,) tensor.

    Defined in notebook 12_stable_diffusion_3."""
    if torch.is_tensor(sigma) and sigma.ndim == 1:
        sigma = sigma.reshape((-1,) + (1,) * (x0.ndim - 1)).to(x0)   # (B,) -> (B, 1, ..., 1)
    return (1 - sigma) * x0 + sigma * noise


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The training target ``noise - x0``: the line's direction, the same at every sigma.

    Defined in notebook 12_stable_diffusion_3."""
    return noise - x0


def logit_normal_sigmas(n: int, mean: float = 0.0, std: float = 1.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``sigmoid(N(mean, std^2))``: SD 3's training distribution of sigma ("rf/lognorm(0.00, 1.00)").

    Defined in notebook 12_stable_diffusion_3."""
    device = generator.device if generator is not None else "cpu"
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def flow_sigmas(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The Euler grid of ``steps`` steps: ``steps + 1`` sigmas, float32, from 1 to a last 0.

    Exactly diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(steps)``: evenly
    spaced from 1 to ``sigma_min``, then shifted, then 0 appended. diffusers' ``sigma_min`` is the
    *shifted* ``1 / num_train_timesteps``, so the shift bends the end of the grid twice (with shift 3
    the last sigma before 0 is 0.0089 rather than 0.003); we copy that to match it.
    Defined in notebook 12_stable_diffusion_3.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    T = num_train_timesteps
    sigma_min = float(np.float32(shift_sigmas(np.float32(1 / T), shift)))     # the scheduler's sigmas[-1]
    grid = np.linspace(T * 1.0, sigma_min * T, int(steps)) / T
    sigmas = torch.from_numpy(shift_sigmas(grid, shift)).to(torch.float32)     # (steps,)
    return torch.cat([sigmas, torch.zeros(1)])                                # (steps + 1,)


def flow_matching_loss(model: Any, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                       num_train_timesteps: int = 1000, **model_kwargs: Any) -> torch.Tensor:
    """Mean squared error between ``model(x_sigma, sigma * T, **model_kwargs)`` and ``noise - x0``.

    ``sigma`` (B,) in [0, 1] and ``noise`` like ``x0`` are drawn by the caller (the training loop
    draws them from its seeded generator: ``FlowMatchSchedule.draw_training_sigmas``, then the noise).
    Defined in notebook 12_stable_diffusion_3.
    """
    x_sigma = flow_interpolate(x0, noise, sigma)
    out = model(x_sigma, sigma.to(x0.device) * num_train_timesteps, **model_kwargs)
    if out.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x0.shape)}; "
                         "a flow model's output (the velocity) must have the shape of its input")
    return F.mse_loss(out, flow_velocity(x0, noise))
