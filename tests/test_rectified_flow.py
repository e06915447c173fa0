"""Rectified flow (notebook 12): the objective, the Euler sampler against diffusers'
FlowMatchEulerDiscreteScheduler, training and checkpoints, and the clear errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from course_lib.diffusion.rectified_flow import (
    FlowMatchSchedule,
    flow_interpolate,
    flow_matching_loss,
    flow_sigmas,
    flow_velocity,
    logit_normal_sigmas,
    shift_sigmas,
)
from course_lib.diffusion.samplers import sample, sampler_timesteps
from course_lib.diffusion.schedules import make_schedule
from course_lib.train.diffusion import (
    TrainingConfig,
    load_diffusion_checkpoint,
    save_diffusion_checkpoint,
    train_diffusion_model,
)


def _toy_velocity(dim: int = 6, seed: int = 0):
    """A fixed smooth function of (x, t), standing in for a network."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g) / dim ** 0.5

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w) * (0.5 + t[:, None] / 1000) - 0.3 * x
    return v


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_grid_equals_diffusers(shift, steps):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    ours = flow_sigmas(steps, shift)
    assert ours.shape == (steps + 1,) and ours[-1] == 0
    torch.testing.assert_close(ours, sched.sigmas, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(sampler_timesteps("flow-euler", FlowMatchSchedule(shift=shift), steps)),
                               sched.timesteps, atol=2e-4, rtol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 8, 28])
def test_euler_sampler_equals_diffusers(shift, steps):
    v = _toy_velocity()
    x_T = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(v(x, t.expand(len(x))), t, x).prev_sample
    ours = sample(v, FlowMatchSchedule(shift=shift), x_T, "flow-euler", steps)
    assert ours.model_calls == steps
    torch.testing.assert_close(ours.sample, x, atol=1e-5, rtol=0)
    # the shift given at sampling time overrides the schedule's
    other = sample(v, FlowMatchSchedule(shift=1.0), x_T, "flow-euler", steps, shift=shift)
    torch.testing.assert_close(other.sample, x, atol=1e-5, rtol=0)


def test_one_point_data_is_reached_in_one_step():
    """With a single training image the best velocity is (x - x0) / sigma: the paths are straight lines,
    so one Euler step from any noise lands exactly on x0."""
    x0 = torch.tensor([[0.3, -1.2, 2.0]])

    def exact(x, t):
        return (x - x0) / (t[:, None] / 1000)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    out = sample(exact, FlowMatchSchedule(), x_T, "flow-euler", 1).sample
    torch.testing.assert_close(out, x0.expand(4, 3), atol=1e-6, rtol=0)


def test_interpolation_velocity_and_shift():
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    xs = flow_interpolate(x0, noise, sigma)
    torch.testing.assert_close(xs[0], x0[0])
    torch.testing.assert_close(xs[2], noise[2])
    # the velocity is the derivative along the line
    h = 1e-3
    d = (flow_interpolate(x0, noise, 0.5 + h) - flow_interpolate(x0, noise, 0.5 - h)) / (2 * h)
    torch.testing.assert_close(d, flow_velocity(x0, noise), atol=1e-3, rtol=0)
    s = torch.linspace(0, 1, 11)
    shifted = shift_sigmas(s, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted[1:-1] > s[1:-1]).all())
    torch.testing.assert_close(shift_sigmas(s, 1.0), s)


def test_logit_normal_sigmas():
    s = logit_normal_sigmas(20000, generator=torch.Generator().manual_seed(0))
    logit = torch.log(s / (1 - s))
    assert abs(float(logit.mean())) < 0.03 and abs(float(logit.std()) - 1) < 0.03
    assert float(s.min()) > 0 and float(s.max()) < 1


def test_clear_errors():
    v = _toy_velocity()
    x = torch.randn(2, 6)
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="shift must be a number > 0"):
            FlowMatchSchedule(shift=bad)
    with pytest.raises(ValueError, match="shift must be a number > 0"):
        sample(v, FlowMatchSchedule(), x, "flow-euler", 4, shift=0.0)
    with pytest.raises(ValueError, match="trained with rectified flow.*use sampler='flow-euler'"):
        sample(v, FlowMatchSchedule(), x, "dpm-solver++", 4)
    with pytest.raises(ValueError, match="integrates the velocity of a rectified-flow model"):
        sample(v, make_schedule("scaled_linear"), x, "flow-euler", 4)
    with pytest.raises(ValueError, match="predicts the velocity"):
        sample(v, FlowMatchSchedule(), x, "flow-euler", 4, prediction_type="epsilon")
    with pytest.raises(ValueError, match="steps must be"):
        sample(v, FlowMatchSchedule(), x, "flow-euler", 0)

    class Net(torch.nn.Module):       # a model that records a flow schedule refuses the epsilon samplers
        def __init__(self):
            super().__init__()
            self.training_schedule = FlowMatchSchedule()

        def forward(self, x, t):
            return x
    with pytest.raises(ValueError, match="trained with rectified flow"):
        sample(Net(), make_schedule("scaled_linear"), x, "ddim", 4)


def test_training_learns_a_velocity_and_checkpoint_round_trip(tmp_path):
    from course_lib.models.mmdit import MMDiT, MMDiTConfig

    torch.manual_seed(0)
    cfg = MMDiTConfig(sample_size=4, patch_size=2, in_channels=2, out_channels=2, num_layers=2,
                      attention_head_dim=8, num_attention_heads=2, joint_attention_dim=8,
                      caption_projection_dim=16, pooled_projection_dim=8)
    model = MMDiT(cfg)
    data = torch.randn(64, 2, 4, 4) * 0.5 + 1.0
    ctx = torch.randn(64, 3, 8)

    def batches(n, g):
        idx = torch.randint(0, 64, (n,), generator=g)
        return data[idx], {"context": ctx[idx], "context_mask": torch.ones(n, 3, dtype=torch.bool)}
    schedule = FlowMatchSchedule()
    result = train_diffusion_model(model, batches, schedule,
                                   TrainingConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5,
                                                  prediction_type="flow", ema_decay=None), show_progress=False)
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.7 * first
    # the loss the loop minimises is flow_matching_loss on the drawn sigmas and noise
    g = torch.Generator().manual_seed(5)
    sigma, noise = schedule.draw_training_sigmas(8, g), torch.randn(8, 2, 4, 4, generator=g)
    x0, kw = batches(8, g)
    with torch.no_grad():
        loss = flow_matching_loss(model, x0, sigma, noise, **kw)
        direct = ((model(flow_interpolate(x0, noise, sigma), sigma * 1000, **kw) - (noise - x0)) ** 2).mean()
    torch.testing.assert_close(loss, direct)

    save_diffusion_checkpoint(model, "tiny_flow", schedule, "flow", folder=str(tmp_path))
    ck = load_diffusion_checkpoint("tiny_flow", folder=str(tmp_path))
    assert isinstance(ck.model, MMDiT) and ck.schedule == schedule and ck.prediction_type == "flow"
    x = torch.randn(2, 2, 4, 4)
    kw = {"context": ctx[:2], "context_mask": torch.ones(2, 3, dtype=torch.bool)}
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x, torch.tensor([500.0, 20.0]), **kw),
                                   model(x, torch.tensor([500.0, 20.0]), **kw))
    with pytest.raises(ValueError, match="trained with rectified flow"):
        sample(lambda x, t: ck.model(x, t, **kw), make_schedule("scaled_linear"), x, "ddim", 4,
               model_schedule=ck.schedule)


def test_flow_training_needs_both_schedule_and_prediction_type():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs both a FlowMatchSchedule and prediction_type='flow'"):
        train_diffusion_model(model, torch.randn(32, 2), FlowMatchSchedule(), TrainingConfig(steps=1, batch_size=8))
    with pytest.raises(ValueError, match="needs both a FlowMatchSchedule and prediction_type='flow'"):
        train_diffusion_model(model, torch.randn(32, 2), make_schedule("linear"),
                              TrainingConfig(steps=1, batch_size=8, prediction_type="flow"))


def test_sliced_flow_loss_is_the_single_process_loss():
    """Under torchrun each process draws the whole global batch's sigmas and noise and keeps its slice, so
    the mean of the slices' losses is the single-process loss of the same generator state."""
    from course_lib.train.diffusion_data import sliced_diffusion_loss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 8), torch.nn.Unflatten(1, (2, 2, 2)))
    model = lambda x, t: net(x) * (1 + t[:, None, None, None] / 1000)   # noqa: E731
    x0, schedule = torch.randn(6, 2, 2, 2), FlowMatchSchedule()
    g = torch.Generator().manual_seed(4)
    sigma, noise = schedule.draw_training_sigmas(6, g), torch.randn(x0.shape, generator=g)
    whole = flow_matching_loss(model, x0, sigma, noise)
    halves = [sliced_diffusion_loss(model, x0, schedule, "flow", torch.Generator().manual_seed(4), {}, part,
                                     torch.device("cpu")) for part in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)


def test_mismatched_schedules_name_the_fix():
    v = _toy_velocity()
    x = torch.randn(2, 6)
    with pytest.raises(ValueError, match="trained on a noise schedule, but schedule= is a FlowMatchSchedule"):
        sample(v, FlowMatchSchedule(), x, "flow-euler", 4, model_schedule=make_schedule("linear"))
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        sample(v, "rectified flow", x, "flow-euler", 4)
    with pytest.raises(ValueError, match="trained with rectified flow"):
        sampler_timesteps("ddim", FlowMatchSchedule(), 10)
