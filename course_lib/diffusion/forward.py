"""The forward process and the training loss of a diffusion model.

Notation (the same in every notebook): ``alpha_t = sqrt(alphas_cumprod[t])`` scales the signal,
``sigma_t = sqrt(1 - alphas_cumprod[t])`` scales the noise, and

    x_t = alpha_t * x0 + sigma_t * eps,          eps ~ N(0, I).

A network may predict ``eps`` (``"epsilon"``, SD 1.x), the velocity
``v = alpha_t * eps - sigma_t * x0`` (``"v_prediction"``, SD 2.x "-v" models) or ``x0`` itself
(``"sample"``). Given ``x_t`` any one of them determines the other two; ``predict_x0`` and
``predict_eps`` do the conversions.

``q_sample`` is defined in notebook 05_forward_diffusion; the conversions and
``diffusion_loss`` in notebook 06_reverse_diffusion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib.diffusion.schedules import NoiseSchedule

__all__ = [
    "PREDICTION_TYPES",
    "check_prediction_type",
    "q_sample",
    "q_step",
    "velocity",
    "predict_x0",
    "predict_eps",
    "predict_v",
    "training_target",
    "diffusion_loss",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> None:
    """Raise a clear ``ValueError`` for an unknown prediction type."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; use one of "
                         f"{', '.join(PREDICTION_TYPES)} (what the model was trained to predict)")


def _check_schedule(schedule: NoiseSchedule) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}; "
                        "build one with course_lib.diffusion.schedules.make_schedule")


def _coefficients(schedule: NoiseSchedule, t: int | torch.Tensor, like: torch.Tensor
                  ) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """(alpha_t, sigma_t) ready to multiply ``like``: floats for an int ``t``, (B, 1, ..., 1) tensors
    for a (B,) tensor ``t`` (one timestep per batch element)."""
    _check_schedule(schedule)
    if not torch.is_tensor(like) or not torch.is_floating_point(like):
        raise TypeError(f"expected a floating-point tensor, got {type(like).__name__}"
                        f"{'' if not torch.is_tensor(like) else ' of dtype ' + str(like.dtype)}")
    if isinstance(t, int) or (torch.is_tensor(t) and t.ndim == 0):
        alpha, sigma = schedule.alpha_sigma(int(t))
        return alpha.item(), sigma.item()
    if not torch.is_tensor(t) or t.ndim != 1 or t.shape[0] != like.shape[0]:
        shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"t must be an int or a (B,) tensor with one timestep per batch element "
                         f"(B={like.shape[0]}), got {shape}")
    alpha, sigma = schedule.alpha_sigma(t)
    shape = (-1,) + (1,) * (like.ndim - 1)  # (B,) -> (B, 1, ..., 1) to broadcast over the sample
    return (alpha.to(like.device, like.dtype).reshape(shape),
            sigma.to(like.device, like.dtype).reshape(shape))


def q_sample(x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule
             ) -> torch.Tensor:
    """Jump straight to timestep ``t``: ``x_t = alpha_t x0 + sigma_t noise`` (closed form of q(x_t | x0)).

    ``t`` is an int or a (B,) tensor of timesteps 0..T-1. Defined in notebook 05_forward_diffusion.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    alpha, sigma = _coefficients(schedule, t, x0)
    return alpha * x0 + sigma * noise


def q_step(x_prev: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule
           ) -> torch.Tensor:
    """One Markov step of the forward process: ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise``.

    ``x_prev`` is the sample at timestep ``t-1`` (the clean data for ``t = 0``), so applying
    ``q_step`` for ``t = 0, 1, ..., k`` gives a sample of q(x_k | x0).
    Defined in notebook 05_forward_diffusion.
    """
    _check_schedule(schedule)
    if noise.shape != x_prev.shape:
        raise ValueError(f"noise must have the shape of x_prev {tuple(x_prev.shape)}, "
                         f"got {tuple(noise.shape)}")
    beta = schedule.betas[schedule._index(t)]
    if beta.ndim == 1:
        beta = beta.to(x_prev.device, x_prev.dtype).reshape((-1,) + (1,) * (x_prev.ndim - 1))
    else:
        beta = beta.item()
    return (1 - beta) ** 0.5 * x_prev + beta**0.5 * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor, schedule: NoiseSchedule
             ) -> torch.Tensor:
    """The v-prediction target ``v = alpha_t * noise - sigma_t * x0`` (Salimans & Ho 2022).

    Supports notebook 06_reverse_diffusion.
    """
    alpha, sigma = _coefficients(schedule, t, x0)
    return alpha * noise - sigma * x0


def predict_x0(x_t: torch.Tensor, t: int | torch.Tensor, model_out: torch.Tensor, schedule: NoiseSchedule,
               prediction_type: str = "epsilon") -> torch.Tensor:
    """The clean sample implied by a model output at ``(x_t, t)``.

    epsilon: ``(x_t - sigma eps) / alpha``; v_prediction: ``alpha x_t - sigma v``; sample: itself.
    Supports notebook 06_reverse_diffusion.
    """
    check_prediction_type(prediction_type)
    alpha, sigma = _coefficients(schedule, t, x_t)
    if prediction_type == "epsilon":
        return (x_t - sigma * model_out) / alpha
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * model_out
    return model_out


def predict_eps(x_t: torch.Tensor, t: int | torch.Tensor, model_out: torch.Tensor, schedule: NoiseSchedule,
                prediction_type: str = "epsilon") -> torch.Tensor:
    """The noise implied by a model output at ``(x_t, t)``.

    epsilon: itself; v_prediction: ``alpha v + sigma x_t``; sample: ``(x_t - alpha x0) / sigma``.
    Supports notebook 06_reverse_diffusion.
    """
    check_prediction_type(prediction_type)
    alpha, sigma = _coefficients(schedule, t, x_t)
    if prediction_type == "epsilon":
        return model_out
    if prediction_type == "v_prediction":
        return alpha * model_out + sigma * x_t
    return (x_t - alpha * model_out) / sigma


def predict_v(x_t: torch.Tensor, t: int | torch.Tensor, model_out: torch.Tensor, schedule: NoiseSchedule,
              prediction_type: str = "epsilon") -> torch.Tensor:
    """The velocity ``alpha eps - sigma x0`` implied by a model output at ``(x_t, t)``.

    Defined in notebook 06_reverse_diffusion.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "v_prediction":
        return model_out
    alpha, sigma = _coefficients(schedule, t, x_t)
    eps = predict_eps(x_t, t, model_out, schedule, prediction_type)
    x0 = predict_x0(x_t, t, model_out, schedule, prediction_type)
    return alpha * eps - sigma * x0


def training_target(x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor, schedule: NoiseSchedule,
                    prediction_type: str = "epsilon") -> torch.Tensor:
    """What a network of the given prediction type should output for ``x_t = q_sample(x0, t, noise)``.

    Supports notebook 06_reverse_diffusion.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(x0, noise, t, schedule)
    return x0


def diffusion_loss(model_fn: Callable[..., torch.Tensor], x0: torch.Tensor, schedule: NoiseSchedule,
                   prediction_type: str = "epsilon", generator: torch.Generator | None = None,
                   **model_kwargs) -> torch.Tensor:
    """The simple diffusion loss: MSE between ``model_fn(x_t, t, **model_kwargs)`` and its target.

    For each batch element a timestep ``t`` is drawn uniformly from 0..T-1 and then noise
    ``eps ~ N(0, I)`` (in that order, from ``generator`` if given); ``x_t = q_sample(x0, t, eps)``.
    Returns the scalar mean squared error. Supports notebook 06_reverse_diffusion.
    """
    _check_schedule(schedule)
    check_prediction_type(prediction_type)
    if not torch.is_tensor(x0) or not torch.is_floating_point(x0) or x0.ndim < 1:
        raise TypeError("x0 must be a floating-point tensor with a batch dimension first, got "
                        f"{type(x0).__name__}{' of dtype ' + str(x0.dtype) if torch.is_tensor(x0) else ''}")
    gen_device = generator.device if generator is not None else x0.device
    B = x0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (B,), generator=generator, device=gen_device)
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype)
    t, noise = t.to(x0.device), noise.to(x0.device)
    x_t = q_sample(x0, t, noise, schedule)
    out = model_fn(x_t, t, **model_kwargs)
    if out.shape != x0.shape:
        raise ValueError(f"model_fn returned shape {tuple(out.shape)} for input {tuple(x0.shape)}; "
                         "a diffusion model's output must have the shape of its input")
    return F.mse_loss(out, training_target(x0, noise, t, schedule, prediction_type))
