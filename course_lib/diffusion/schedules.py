"""Noise schedules: how much signal and noise each training timestep keeps.

A schedule is a list of betas, one per training timestep ``t = 0 .. T-1``. The forward process
multiplies the signal by ``sqrt(1 - beta_t)`` and adds noise of variance ``beta_t`` at each
step, so after steps ``0..t`` the signal keeps ``alpha_t = sqrt(alphas_cumprod[t])`` and the
noise has ``sigma_t = sqrt(1 - alphas_cumprod[t])``. Everything a sampler needs follows from
``alphas_cumprod``.

The numbers are kept in float64; they agree with diffusers' float32 schedules to float32
precision (tests/test_schedules.py). Which quantity the network predicts (``"epsilon"``,
``"v_prediction"``, ``"sample"``) belongs to the model, not to the schedule.

Defined in notebook 05_forward_diffusion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "NoiseSchedule",
    "linear_schedule",
    "scaled_linear_schedule",
    "cosine_schedule",
    "make_schedule",
    "available_schedules",
    "check_schedule",
]


@dataclass(eq=False)
class NoiseSchedule:
    """A discrete noise schedule: ``betas`` and what follows from them (float64, CPU).

    ``betas[t]`` is the variance of the noise added by forward step ``t`` (``t = 0 .. T-1``);
    ``alphas = 1 - betas``; ``alphas_cumprod[t] = prod(alphas[:t+1])`` is the share of signal
    power left at timestep ``t``. ``name`` and ``params`` record how it was made.
    Defined in notebook 05_forward_diffusion.
    """

    betas: torch.Tensor
    name: str = "custom"
    params: dict = field(default_factory=dict)
    alphas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D sequence with one value per training timestep, "
                             f"got shape {tuple(betas.shape)}")
        if not torch.is_floating_point(betas):
            raise TypeError(f"betas must be floating point, got dtype {betas.dtype}; "
                            "pass e.g. torch.tensor(betas, dtype=torch.float64)")
        betas = betas.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            raise ValueError("every beta must lie in (0, 1]; got values from "
                             f"{betas.min().item():.3g} to {betas.max().item():.3g}")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v}" for k, v in self.params.items())
        return f"NoiseSchedule(name={self.name!r}, T={self.num_train_timesteps}{params})"

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return self.betas.numel()

    @property
    def sqrt_alphas_cumprod(self) -> torch.Tensor:
        """alpha_t = sqrt(alphas_cumprod), the signal scale at each timestep, shape (T,)."""
        return self.alphas_cumprod.sqrt()

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> torch.Tensor:
        """sigma_t = sqrt(1 - alphas_cumprod), the noise scale at each timestep, shape (T,)."""
        return (1.0 - self.alphas_cumprod).sqrt()

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_t^2 / sigma_t^2 at each timestep, shape (T,)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @property
    def log_snr(self) -> torch.Tensor:
        """log(alpha_t^2 / sigma_t^2) at each timestep, shape (T,)."""
        return torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    def _index(self, t: int | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(t)
        if idx.is_floating_point():
            if not torch.equal(idx, idx.round()):
                raise ValueError("timesteps must be whole numbers 0..T-1 for a discrete schedule, "
                                 f"got {idx.flatten()[:4].tolist()}...")
            idx = idx.round()
        idx = idx.long().cpu()
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in 0..{self.num_train_timesteps - 1}, got values from "
                             f"{idx.min().item()} to {idx.max().item()}")
        return idx

    def alpha_sigma(self, t: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) at timestep(s) ``t``: float64 tensors with the shape of ``t``."""
        ac = self.alphas_cumprod[self._index(t)]
        return ac.sqrt(), (1.0 - ac).sqrt()

    def lambda_(self, t: int | torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t / sigma_t), half the log-SNR, the time variable of DPM-Solver."""
        return 0.5 * self.log_snr[self._index(t)]


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM's schedule: betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020).

    diffusers calls it ``"linear"``. Supports notebook 05_forward_diffusion.
    """
    _check_T(T)
    _check_betas_range(beta_start, beta_end)
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return NoiseSchedule(betas, name="linear", params={"beta_start": beta_start, "beta_end": beta_end})


def scaled_linear_schedule(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
                           ) -> NoiseSchedule:
    """Stable Diffusion's schedule: ``linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2``.

    SD's configs call it ``linear`` (``linear_start``/``linear_end``); diffusers calls it
    ``"scaled_linear"``. Supports notebook 05_forward_diffusion.
    """
    _check_T(T)
    _check_betas_range(beta_start, beta_end)
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return NoiseSchedule(betas, name="scaled_linear", params={"beta_start": beta_start, "beta_end": beta_end})


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal's cosine schedule: ``alphas_cumprod(t) ~ cos((t/T + s)/(1 + s) * pi/2)^2``.

    Betas come from ratios of consecutive ``alphas_cumprod`` and are clipped at ``max_beta``, as
    in diffusers' ``"squaredcos_cap_v2"``. Supports notebook 05_forward_diffusion.
    """
    _check_T(T)
    if not (s >= 0 and 0 < max_beta <= 1):
        raise ValueError(f"need s >= 0 and 0 < max_beta <= 1, got s={s}, max_beta={max_beta}")

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return NoiseSchedule(torch.tensor(betas, dtype=torch.float64), name="cosine",
                         params={"s": s, "max_beta": max_beta})


_SCHEDULES: dict[str, Callable[..., NoiseSchedule]] = {
    "linear": linear_schedule,
    "scaled_linear": scaled_linear_schedule,
    "cosine": cosine_schedule,
}
# diffusers' names for the same schedules
_ALIASES = {"squaredcos_cap_v2": "cosine"}


def available_schedules() -> list[str]:
    """Names that ``make_schedule`` knows. Supports notebook 05_forward_diffusion."""
    return sorted(_SCHEDULES) + sorted(_ALIASES)


def make_schedule(name: str, T: int = 1000, **kwargs) -> NoiseSchedule:
    """A schedule by name: ``"linear"``, ``"scaled_linear"`` or ``"cosine"`` (alias ``"squaredcos_cap_v2"``).

    Extra keyword arguments go to the constructor (``beta_start``, ``beta_end``, ``s``).
    Defined in notebook 05_forward_diffusion.
    """
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; known schedules: "
                         f"{', '.join(available_schedules())}")
    try:
        return _SCHEDULES[key](T, **kwargs)
    except TypeError as err:
        raise TypeError(f"make_schedule({name!r}, ...): {err}; see help(course_lib.diffusion.schedules."
                        f"{_SCHEDULES[key].__name__}) for its parameters") from None


def check_schedule(model_schedule: NoiseSchedule | int, schedule: NoiseSchedule) -> None:
    """Raise a clear ``ValueError`` if ``schedule`` is not the one the model was trained with.

    ``model_schedule`` is the model's training schedule, or just its number of training
    timesteps. Supports notebook 06_reverse_diffusion.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}; "
                        "build one with course_lib.diffusion.schedules.make_schedule")
    if isinstance(model_schedule, NoiseSchedule):
        T_model = model_schedule.num_train_timesteps
    elif isinstance(model_schedule, int) and not isinstance(model_schedule, bool):
        T_model = model_schedule
    else:
        raise TypeError("model_schedule must be the model's NoiseSchedule or its number of training "
                        f"timesteps (int), got {type(model_schedule).__name__}")
    if T_model != schedule.num_train_timesteps:
        raise ValueError(f"the model was trained with {T_model} timesteps but the schedule has "
                         f"{schedule.num_train_timesteps}; sample with the model's own schedule")
    if isinstance(model_schedule, NoiseSchedule) and not torch.allclose(
            model_schedule.betas, schedule.betas, rtol=1e-5, atol=1e-8):
        raise ValueError(f"the schedule {schedule!r} differs from the model's training schedule "
                         f"{model_schedule!r}; sample with the model's own schedule")


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T (number of training timesteps) must be a positive int, got {T!r}")


def _check_betas_range(beta_start: float, beta_end: float) -> None:
    if not (0 < beta_start <= 1 and 0 < beta_end <= 1):
        raise ValueError(f"beta_start and beta_end must lie in (0, 1], got {beta_start} and {beta_end}")
