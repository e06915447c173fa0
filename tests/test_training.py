"""course_lib.train.diffusion: the diffusion training loop, its targets, its EMA and its checkpoints.

A tiny U-Net (8x8, one channel, about 20k parameters) keeps every test well under a second or two.
"""

import copy

import pytest
import torch

from course_lib.diffusion.forward import diffusion_loss, q_sample, velocity
from course_lib.diffusion.schedules import make_schedule
from course_lib.models.unet import UNet, UNetConfig
from course_lib.train.diffusion import (
    TrainingConfig,
    ema_decay_at,
    ema_update,
    load_diffusion_checkpoint,
    lr_factor_at,
    save_diffusion_checkpoint,
    train_diffusion_model,
    training_run_config,
)


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(in_channels=1, out_channels=1, sample_size=8, block_out_channels=(8, 16),
                           layers_per_block=1, attention_levels=(), norm_num_groups=4, num_attention_heads=2))


def toy_images(n: int = 128) -> torch.Tensor:
    """Bars at random rows and columns, in [-1, 1]: structure a network can learn quickly."""
    g = torch.Generator().manual_seed(0)
    x = -torch.ones(n, 1, 8, 8)
    rows, cols = torch.randint(0, 8, (n,), generator=g), torch.randint(0, 8, (n,), generator=g)
    for i in range(n):
        x[i, 0, rows[i], :] = 1
        x[i, 0, :, cols[i]] = 1
    return x


@pytest.fixture(scope="module")
def schedule():
    return make_schedule("linear", 1000)


def fixed_eval_loss(model, images, schedule, prediction_type):
    """The loss on a fixed batch, fixed timesteps and fixed noise (so before/after are comparable)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return float(diffusion_loss(model, images[:64], schedule, prediction_type, generator=g))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_few_steps_reduce_the_loss(schedule, prediction_type):
    model, images = tiny_unet(), toy_images()
    before = fixed_eval_loss(model.eval(), images, schedule, prediction_type)
    result = train_diffusion_model(model, images, schedule,
                                   TrainingConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=5,
                                                  prediction_type=prediction_type, ema_decay=None),
                                   show_progress=False)
    after = fixed_eval_loss(model, images, schedule, prediction_type)
    assert len(result.losses) == result.steps == 60 and result.images == 60 * 32
    assert after < 0.7 * before, (before, after)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_first_loss_is_the_mse_against_the_right_target(schedule, prediction_type):
    """Replay the loop's random stream by hand: the first batch, timesteps and noise, then the target."""
    model, images = tiny_unet(), toy_images()
    reference = copy.deepcopy(model).train()
    result = train_diffusion_model(model, images, schedule,
                                   TrainingConfig(steps=1, batch_size=16, seed=7, prediction_type=prediction_type),
                                   show_progress=False)
    g = torch.Generator().manual_seed(7)
    x0 = images[torch.randperm(len(images), generator=g)[:16]]
    t = torch.randint(0, 1000, (16,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    target = noise if prediction_type == "epsilon" else velocity(x0, noise, t, schedule)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(reference(q_sample(x0, t, noise, schedule), t), target)
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-5)
    # v really differs from eps (it mixes in -sigma_t x0), so the two options train different things
    assert not torch.allclose(velocity(x0, noise, t, schedule), noise, atol=1e-2)


def test_ema_update_and_warmup():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.9 * pa.detach() + 0.1 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters(), strict=True)]
    ema_update(a, b, 0.9)
    for p, e in zip(a.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, atol=1e-7, rtol=0)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)          # (1 + 0) / (10 + 0)
    assert ema_decay_at(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay_at(10**6, 0.999) == 0.999


def _lrs_used(monkeypatch, schedule, config):
    """The learning rate of every optimiser step of a short run (read as AdamW.step is called)."""
    used, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    train_diffusion_model(tiny_unet(), toy_images(), schedule, config, show_progress=False)
    return used


def test_lr_schedule_default_is_the_old_warmup_then_constant(monkeypatch, schedule):
    config = TrainingConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=4)
    assert config.lr_schedule == "constant"
    old = [1e-2 * min(1.0, (k + 1) / 4) for k in range(12)]     # the formula before lr_schedule existed
    assert _lrs_used(monkeypatch, schedule, config) == old       # exactly: default runs stay bit-identical
    assert "lr_schedule" not in training_run_config(tiny_unet(), schedule, config)["training"]  # old states resume


def test_cosine_lr_decays_to_zero_at_the_last_step(monkeypatch, schedule):
    config = TrainingConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=4, lr_schedule="cosine")
    used = _lrs_used(monkeypatch, schedule, config)
    assert used[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])                 # the same warm-up
    assert all(a > b for a, b in zip(used[3:], used[4:], strict=False))        # then strictly decreasing
    assert used[-1] == 0.0 and lr_factor_at(11, config) == 0.0
    assert lr_factor_at(7, config) == pytest.approx(0.5)                         # halfway through the decay
    assert training_run_config(tiny_unet(), schedule, config)["training"]["steps"] == 12
    with pytest.raises(ValueError, match="lr_schedule must be"):
        TrainingConfig(lr_schedule="linear").validate()


def test_training_keeps_an_ema_copy(schedule):
    model, images = tiny_unet(), toy_images()
    start = copy.deepcopy(model)
    result = train_diffusion_model(model, images, schedule, TrainingConfig(steps=1, batch_size=16, lr=1e-2,
                                                                            ema_decay=0.999), show_progress=False)
    ema = result.ema
    assert ema is not model and not any(p.requires_grad for p in ema.parameters())
    # after one step the warm-up decay is 0.1: ema = 0.1 * initial + 0.9 * trained
    for p_ema, p0, p1 in zip(ema.parameters(), start.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p_ema, 0.1 * p0.detach() + 0.9 * p1.detach(), atol=1e-6, rtol=0)
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(start.parameters(), model.parameters(), strict=True))


def test_batch_function_with_model_kwargs(schedule):
    """A conditional model gets its extra inputs from a batch function."""
    seen = []

    class Conditional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, context=None):
            seen.append(context.shape)
            return self.scale * x * context.mean()

    def batches(n, g):
        return torch.randn(n, 1, 4, 4, generator=g), {"context": torch.ones(n, 3, 5)}

    train_diffusion_model(Conditional(), batches, schedule, TrainingConfig(steps=3, batch_size=4),
                          show_progress=False)
    assert seen == [(4, 3, 5)] * 3


def test_max_seconds_stops_early(schedule):
    result = train_diffusion_model(tiny_unet(), toy_images(), schedule, TrainingConfig(steps=10**6, batch_size=8),
                                   max_seconds=0.0, show_progress=False)
    assert result.steps == 1 and result.seconds > 0 and result.images_per_second > 0


def test_checkpoint_round_trip(tmp_path, schedule):
    model = tiny_unet(3).eval()
    save_diffusion_checkpoint(model, "tiny", schedule, "v_prediction", folder=str(tmp_path), command="test")
    loaded = load_diffusion_checkpoint("tiny", folder=str(tmp_path))
    assert loaded.prediction_type == "v_prediction" and loaded.meta["command"] == "test"
    torch.testing.assert_close(loaded.schedule.betas, schedule.betas, atol=0, rtol=0)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 900])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, t), model(x, t), atol=0, rtol=0)


def test_bad_input_is_a_clear_error(schedule):
    model = tiny_unet()
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_diffusion_model(model, toy_images(), schedule, TrainingConfig(steps=0))
    with pytest.raises(ValueError, match="unknown prediction_type"):
        train_diffusion_model(model, toy_images(), schedule, TrainingConfig(prediction_type="noise"))
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        TrainingConfig(ema_decay=1.5).validate()
    with pytest.raises(ValueError, match="larger than the data set"):
        train_diffusion_model(model, toy_images(8), schedule, TrainingConfig(batch_size=16))
    with pytest.raises(TypeError, match="float tensor of training images"):
        train_diffusion_model(model, torch.zeros(64, 1, 8, 8, dtype=torch.long), schedule)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        train_diffusion_model(model, toy_images(), "linear")
