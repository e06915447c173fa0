"""DPM-Solver and DPM-Solver++: exact integration of the diffusion ODE's linear part.

Built by hand in notebook 07_plms_and_dpm_solver (``sampler="dpm-solver"`` and ``"dpm-solver++"``).

Both solve in lambda = log(alpha / sigma), DPM-Solver on the noise prediction, DPM-Solver++ on the
x0 prediction, at orders 1 to 3, multistep (one call per step, higher orders from finite
differences of earlier predictions) or singlestep (intermediate points within a group of steps),
optionally on Karras' noise levels (``karras_sigmas``). They equal diffusers'
``DPMSolver{Multi,Single}stepScheduler``; call them through ``samplers.sample``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from course_lib.diffusion.denoiser import Denoiser
from course_lib.diffusion.schedules import NoiseSchedule
from course_lib.diffusion.timesteps import dpm_solver_timesteps

__all__ = ["dpm_solver", "dpm_solver_pp", "karras_sigmas"]


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
    (sigmas in float32, as diffusers keeps them). Supports notebook 07_plms_and_dpm_solver.
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
    Options as ``dpm_solver``. Supports notebook 07_plms_and_dpm_solver.
    """
    return _dpm_solve(model, x, steps, plus=True, order=order, timestep_spacing=timestep_spacing,
                      steps_offset=steps_offset, final_sigmas_type=final_sigmas_type,
                      lower_order_final=lower_order_final, method=method, use_karras_sigmas=use_karras_sigmas)
