"""Noise schedules and the forward process (course_lib.diffusion.schedules, course_lib.diffusion.forward).

Reference: diffusers' DDPMScheduler (betas, alphas_cumprod, add_noise, get_velocity).
Tolerances: schedules agree with diffusers' float32 numbers to rtol 1e-5 (our float64 cumprod
against its float32 cumprod); statistical checks use many samples and tolerances of about four
standard errors, with fixed seeds.
"""

import math

import pytest
import torch
from conftest import require

from course_lib.diffusion.forward import (
    diffusion_loss,
    predict_eps,
    predict_v,
    predict_x0,
    q_sample,
    q_step,
    training_target,
    velocity,
)
from course_lib.diffusion.schedules import (
    NoiseSchedule,
    available_schedules,
    check_schedule,
    cosine_schedule,
    linear_schedule,
    make_schedule,
    scaled_linear_schedule,
)

diffusers = require("diffusers")

DIFFUSERS_CASES = [
    ("linear", {}, linear_schedule),
    ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}, scaled_linear_schedule),
    ("squaredcos_cap_v2", {}, cosine_schedule),
]


@pytest.mark.parametrize("name, kwargs, ours", DIFFUSERS_CASES, ids=[c[0] for c in DIFFUSERS_CASES])
def test_schedules_match_diffusers(name, kwargs, ours):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kwargs)
    sched = ours()
    assert sched.num_train_timesteps == 1000
    assert sched.betas.dtype == torch.float64
    torch.testing.assert_close(sched.betas.float(), ref.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sched.alphas.float(), ref.alphas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sched.alphas_cumprod.float(), ref.alphas_cumprod, rtol=2e-5, atol=1e-6)
    # the same schedule by name (diffusers' name works as an alias)
    torch.testing.assert_close(make_schedule(name, **kwargs).betas, sched.betas, rtol=0, atol=0)


def test_sd_schedule_values():
    s = scaled_linear_schedule()
    assert s.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    assert s.betas[500].item() == pytest.approx(((0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * 500 / 999)) ** 2)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.00466, abs=1e-4)  # SD keeps ~7% of the signal at t=999


def test_cosine_schedule_is_clipped_and_follows_its_formula():
    s = cosine_schedule(T=1000)
    assert s.betas.max().item() == pytest.approx(0.999)
    f = [math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in (0, 500)]
    assert s.alphas_cumprod[499].item() == pytest.approx(f[1] / f[0], rel=1e-9)


def test_schedule_helpers_are_consistent():
    s = scaled_linear_schedule()
    ac = s.alphas_cumprod
    torch.testing.assert_close(s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2,
                               torch.ones(1000, dtype=torch.float64))
    torch.testing.assert_close(s.snr, ac / (1 - ac))
    torch.testing.assert_close(s.log_snr, torch.log(s.snr))
    assert (s.log_snr[1:] < s.log_snr[:-1]).all(), "log-SNR must fall with t"
    t = torch.tensor([0, 10, 999])
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(alpha, ac[t].sqrt())
    torch.testing.assert_close(sigma, (1 - ac[t]).sqrt())
    torch.testing.assert_close(s.lambda_(t), torch.log(alpha / sigma))
    a, b = s.alpha_sigma(7)
    assert a.ndim == 0 and a.item() == pytest.approx(ac[7].sqrt().item())
    assert b.item() == pytest.approx((1 - ac[7]).sqrt().item())


def test_make_schedule_errors():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'.*cosine.*linear.*scaled_linear"):
        make_schedule("quadratic")
    assert set(available_schedules()) >= {"linear", "scaled_linear", "cosine", "squaredcos_cap_v2"}
    with pytest.raises(TypeError, match="beta_strat"):
        make_schedule("linear", beta_strat=0.1)
    with pytest.raises(ValueError, match="positive int"):
        linear_schedule(T=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule(torch.ones(2, 2) * 0.1)
    with pytest.raises(ValueError, match="0..999"):
        scaled_linear_schedule().alpha_sigma(1000)


def test_check_schedule():
    s = scaled_linear_schedule()
    check_schedule(s, s)
    check_schedule(1000, s)
    with pytest.raises(ValueError, match="trained with 500 timesteps but the schedule has 1000"):
        check_schedule(500, s)
    with pytest.raises(ValueError, match="differs from the model's training schedule"):
        check_schedule(linear_schedule(), s)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        check_schedule(s, "scaled_linear")


def test_q_sample_and_velocity_match_diffusers():
    ref = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    s = scaled_linear_schedule()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    torch.testing.assert_close(q_sample(x0, t, noise, s), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(velocity(x0, noise, t, s), ref.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-6)
    # an int t is the same timestep for the whole batch
    torch.testing.assert_close(q_sample(x0, 250, noise, s), q_sample(x0, torch.full((4,), 250), noise, s))


@pytest.mark.parametrize("k", [0, 99, 999])
def test_q_sample_agrees_with_iterated_q_step(k):
    """k+1 Markov steps from x0 give q(x_k | x0): mean alpha_k x0, std sigma_k (40k samples each)."""
    s = linear_schedule()  # DDPM's schedule, the one notebook 05 iterates
    g = torch.Generator().manual_seed(k)
    n = 40_000
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0]).expand(n, 4)   # (n, 4)
    x = x0.clone()
    for t in range(k + 1):
        x = q_step(x, t, torch.randn(x.shape, generator=g, dtype=x.dtype), s)
    alpha, sigma = (v.item() for v in s.alpha_sigma(k))
    # standard errors: sigma/sqrt(n) = 0.005 for the mean, sigma/sqrt(2n) = 0.0035 for the std
    tol_mean, tol_std = 4 * sigma / n**0.5, 4 * sigma / (2 * n) ** 0.5
    torch.testing.assert_close(x.mean(0), alpha * x0[0], rtol=0, atol=tol_mean)
    torch.testing.assert_close(x.std(0), torch.full((4,), sigma), rtol=0, atol=tol_std)
    # and the closed form's samples have the same statistics
    xq = q_sample(x0, k, torch.randn(x0.shape, generator=g, dtype=x0.dtype), s)
    torch.testing.assert_close(xq.mean(0), x.mean(0), rtol=0, atol=2 * tol_mean)
    torch.testing.assert_close(xq.std(0), x.std(0), rtol=0, atol=2 * tol_std)


@pytest.mark.parametrize("t", [0, 500, 999, "batch"])
def test_prediction_conversions_round_trip(t):
    s = scaled_linear_schedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    if t == "batch":
        t = torch.tensor([0, 500, 999])
    x_t = q_sample(x0, t, eps, s)
    v = velocity(x0, eps, t, s)
    for kind, out in [("epsilon", eps), ("v_prediction", v), ("sample", x0)]:
        torch.testing.assert_close(predict_x0(x_t, t, out, s, kind), x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(predict_eps(x_t, t, out, s, kind), eps, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(predict_v(x_t, t, out, s, kind), v, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(training_target(x0, eps, t, s, kind), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'.*epsilon, v_prediction, sample"):
        predict_x0(x_t, t, eps, s, "x0")


def test_velocity_identity():
    """v is the rotation of (x0, eps) by the angle phi_t with alpha = cos(phi), sigma = sin(phi)."""
    s = cosine_schedule()
    x0, eps = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    t = torch.tensor([100, 900])
    x_t, v = q_sample(x0, t, eps, s), velocity(x0, eps, t, s)
    torch.testing.assert_close(x_t.pow(2) + v.pow(2), x0.pow(2) + eps.pow(2))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_targets(prediction_type):
    """An oracle that knows x0 predicts the exact target: loss 0; the draws follow the generator."""
    s = scaled_linear_schedule()
    x0 = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    seen = {}

    def oracle(x_t, t, scale=1.0):
        alpha, sigma = (c.float().view(-1, 1, 1, 1) for c in s.alpha_sigma(t))
        eps = (x_t - alpha * x0) / sigma
        seen["t"], seen["scale"] = t, scale
        return {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[prediction_type]

    loss = diffusion_loss(oracle, x0, s, prediction_type, generator=torch.Generator().manual_seed(3), scale=2.0)
    assert loss.ndim == 0 and loss.item() < 1e-8
    assert seen["scale"] == 2.0
    t_expected = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(seen["t"], t_expected), "t must be drawn first from the generator"


def test_diffusion_loss_of_a_zero_model_is_the_target_power():
    s = scaled_linear_schedule()
    x0 = torch.zeros(64, 4, 8, 8)
    g = torch.Generator().manual_seed(4)
    loss = diffusion_loss(lambda x, t: torch.zeros_like(x), x0, s, generator=g)
    assert loss.item() == pytest.approx(1.0, abs=0.05)          # E[eps^2] = 1 over 16k values
    l1 = diffusion_loss(lambda x, t: x, x0, s, generator=torch.Generator().manual_seed(5))
    l2 = diffusion_loss(lambda x, t: x, x0, s, generator=torch.Generator().manual_seed(5))
    assert l1.item() == l2.item()
    with pytest.raises(ValueError, match="unknown prediction_type"):
        diffusion_loss(lambda x, t: x, x0, s, prediction_type="eps")
    with pytest.raises(TypeError, match="floating-point"):
        diffusion_loss(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), s)
    with pytest.raises(ValueError, match="shape of its input"):
        diffusion_loss(lambda x, t: x[:, :1], x0, s)
