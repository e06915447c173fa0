"""course_lib.models.gan, course_lib.train.gan and course_lib.train.toy_diffusion (notebook 01): shapes, loss values,
training, errors."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.core.utils import count_parameters, seed_everything
from course_lib.diffusion.forward import diffusion_loss
from course_lib.diffusion.samplers import sample
from course_lib.diffusion.schedules import linear_schedule
from course_lib.models import gan
from course_lib.models.gan import (
    DCGANConfig,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGANConfig,
    MLPGenerator,
    discriminator_loss,
    generator_loss,
)
from course_lib.models.unet import UNet, UNetConfig
from course_lib.train.gan import GANTrainConfig, train_gan
from course_lib.train.toy_diffusion import (
    DiffusionTrainConfig,
    MLPDenoiser,
    MLPDenoiserConfig,
    ToyModelZoo,
    generate,
    train_diffusion,
)
from course_lib.worlds.toy2d import ring_of_gaussians


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------
def test_mlp_gan_shapes():
    cfg = MLPGANConfig(latent_dim=4, hidden=16, layers=2)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    z = torch.randn(5, 4)
    assert G(z).shape == (5, 2)
    assert D(G(z)).shape == (5, 1)
    s1 = G.sample(7, torch.Generator().manual_seed(3))
    s2 = G.sample(7, torch.Generator().manual_seed(3))
    assert s1.shape == (7, 2) and not s1.requires_grad
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


def test_dcgan_shapes_range_and_sizes():
    seed_everything(0)
    G, D = DCGANGenerator(), DCGANDiscriminator()
    x = G(torch.randn(3, 64))
    assert x.shape == (3, 1, 28, 28)
    assert x.min() >= -1 and x.max() <= 1  # tanh output, the range of the data
    assert D(x).shape == (3, 1)
    # Notebook 01 compares models of about the same size: G + D against the course's digit U-Net
    # (scripts/train_mnist_diffusion.py: channels 16, 32, 64, attention at 7x7).
    unet = UNet(UNetConfig(in_channels=1, out_channels=1, sample_size=28, block_out_channels=(16, 32, 64),
                           layers_per_block=1, attention_levels=(2,), norm_num_groups=8, num_attention_heads=4))
    gd = count_parameters(G) + count_parameters(D)
    assert abs(gd - count_parameters(unet)) / gd < 0.02
    small = DCGANConfig(latent_dim=8, channels=4, image_channels=3, image_size=32)
    assert DCGANGenerator(small)(torch.randn(2, 8)).shape == (2, 3, 32, 32)
    assert DCGANDiscriminator(small)(torch.randn(2, 3, 32, 32)).shape == (2, 1)


def test_toy_models_have_comparable_sizes():
    g, d = count_parameters(MLPGenerator(gan.TOY_GAN)), count_parameters(MLPDiscriminator(gan.TOY_GAN))
    m = count_parameters(MLPDenoiser())
    assert abs((g + d) - m) / m < 0.05


def test_network_errors_are_clear():
    with pytest.raises(ValueError, match=r"latents z of shape \(B, 16\)"):
        MLPGenerator()(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"points of shape \(B, 2\)"):
        MLPDiscriminator()(torch.randn(4, 3))
    with pytest.raises(ValueError, match="divisible by 4"):
        DCGANGenerator(DCGANConfig(image_size=30))
    with pytest.raises(ValueError, match="positive int"):
        MLPGANConfig(hidden=0).validate()
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 28, 28\)"):
        DCGANDiscriminator()(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="positive int"):
        MLPGenerator().sample(0)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def test_losses_on_known_logits():
    zero = torch.zeros(4, 1)
    torch.testing.assert_close(discriminator_loss(zero, zero), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(generator_loss(zero), torch.tensor(math.log(2)))
    torch.testing.assert_close(generator_loss(zero, "minimax"), torch.tensor(-math.log(2)))
    # A confident, correct discriminator has a loss near 0.
    assert discriminator_loss(torch.full((4,), 20.0), torch.full((4,), -20.0)) < 1e-8
    # Against torch's binary cross-entropy on random logits.
    real, fake = torch.randn(64, 1), torch.randn(64, 1)
    bce = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
           + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    torch.testing.assert_close(discriminator_loss(real, fake), bce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(generator_loss(fake), F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(generator_loss(fake, "minimax"),
                               torch.log(1 - torch.sigmoid(fake)).mean(), rtol=1e-5, atol=1e-6)


def test_non_saturating_loss_keeps_its_gradient_where_minimax_loses_it():
    # D confidently rejects the fakes (logit -8): the minimax gradient is ~sigmoid(-8), tiny.
    logits = torch.full((8, 1), -8.0, requires_grad=True)
    (g_ns,) = torch.autograd.grad(generator_loss(logits), logits)
    (g_mm,) = torch.autograd.grad(generator_loss(logits, "minimax"), logits)
    assert g_ns.abs().mean() > 100 * g_mm.abs().mean()
    # Both push the logit up (gradient descent lowers the loss by raising D(G(z))).
    assert (g_ns < 0).all() and (g_mm < 0).all()


def test_loss_errors():
    with pytest.raises(TypeError, match="floating-point"):
        discriminator_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="unknown generator loss"):
        generator_loss(torch.zeros(3), "wasserstein")
    with pytest.raises(ValueError, match="empty"):
        generator_loss(torch.zeros(0))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _tiny_gan():
    cfg = MLPGANConfig(latent_dim=4, hidden=32, layers=2)
    return MLPGenerator(cfg), MLPDiscriminator(cfg)


def test_discriminator_learns_and_runs_are_reproducible():
    ring = ring_of_gaussians()
    config = GANTrainConfig(steps=60, batch_size=64, lr_generator=1e-4, lr_discriminator=2e-3,
                            snapshot_steps=(0, 30, 60), snapshot_size=10, seed=1)
    runs = []
    for _ in range(2):
        seed_everything(0)
        G, D = _tiny_gan()
        runs.append(train_gan(G, D, ring.sample, config, show_progress=False))
    h = runs[0]
    assert len(h.loss_d) == len(h.loss_g) == len(h.d_real) == 60
    assert sum(h.loss_d[-10:]) / 10 < 0.8 * sum(h.loss_d[:5]) / 5, "a few steps reduce D's loss"
    assert h.d_real[-1] > h.d_fake[-1]
    assert sorted(h.snapshots) == [0, 30, 60] and h.snapshots[60].shape == (10, 2)
    assert not torch.equal(h.snapshots[0], h.snapshots[60])
    assert runs[0].loss_d == runs[1].loss_d
    torch.testing.assert_close(runs[0].snapshots[60], runs[1].snapshots[60], rtol=0, atol=0)


def test_train_gan_on_a_tensor_of_images():
    seed_everything(0)
    cfg = DCGANConfig(latent_dim=8, channels=4)
    G, D = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    data = torch.rand(32, 1, 28, 28) * 2 - 1
    h = train_gan(G, D, data, GANTrainConfig(steps=3, batch_size=8), show_progress=False)
    assert len(h.loss_d) == 3 and all(math.isfinite(v) for v in h.loss_d + h.loss_g)
    assert not G.training and not D.training


def test_train_gan_errors():
    G, D = _tiny_gan()
    ring = ring_of_gaussians()
    with pytest.raises(ValueError, match="generator makes samples of shape"):
        train_gan(G, D, torch.randn(10, 3), GANTrainConfig(steps=1), show_progress=False)
    with pytest.raises(TypeError, match="tensor of real samples or a function"):
        train_gan(G, D, [1, 2, 3], GANTrainConfig(steps=1), show_progress=False)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_gan(G, D, ring.sample, GANTrainConfig(steps=0), show_progress=False)
    with pytest.raises(ValueError, match="snapshot_steps"):
        train_gan(G, D, ring.sample, GANTrainConfig(steps=5, snapshot_steps=(10,)), show_progress=False)
    with pytest.raises(ValueError, match="lr_generator"):
        train_gan(G, D, ring.sample, GANTrainConfig(steps=5, lr_generator=0), show_progress=False)
    with pytest.raises(ValueError, match="generator_loss"):
        train_gan(G, D, ring.sample, GANTrainConfig(steps=5, generator_loss="hinge"), show_progress=False)
    with pytest.raises(TypeError, match="latent_dim"):
        train_gan(torch.nn.Linear(2, 2), D, ring.sample, GANTrainConfig(steps=1), show_progress=False)
    wide = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="one logit per sample"):
        train_gan(G, wide, ring.sample, GANTrainConfig(steps=1), show_progress=False)


# ----------------------------------------------------------------------------------------------
# The diffusion side
# ----------------------------------------------------------------------------------------------
def test_mlp_denoiser_shapes_time_and_errors():
    seed_everything(0)
    m = MLPDenoiser(MLPDenoiserConfig(hidden=32, layers=2, time_embed_dim=8))
    x = torch.randn(6, 2)
    out = m(x, torch.full((6,), 10))
    assert out.shape == (6, 2)
    assert not torch.allclose(out, m(x, torch.full((6,), 900)))  # the timestep matters
    with pytest.raises(ValueError, match=r"\(B,\) tensor of timesteps"):
        m(x, torch.tensor(3))
    with pytest.raises(ValueError, match=r"points of shape \(B, 2\)"):
        m(torch.randn(6, 3), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="even"):
        MLPDenoiserConfig(time_embed_dim=7).validate()


def test_train_diffusion_uses_the_library_loss_and_learns():
    schedule = linear_schedule(100)
    data = ring_of_gaussians().means.repeat(8, 1)  # (64, 2)
    seed_everything(0)
    m = MLPDenoiser(MLPDenoiserConfig(hidden=32, layers=2, time_embed_dim=8))
    expected_first = None
    # The first loss equals diffusion_loss with the same random stream (batch, then t, then noise).
    g = torch.Generator().manual_seed(5)
    x0 = data[torch.randint(len(data), (32,), generator=g)]
    with torch.no_grad():
        expected_first = diffusion_loss(m, x0, schedule, generator=g).item()
    h = train_diffusion(m, data, schedule, DiffusionTrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=5,
                                                                ema_decay=0.9, seed=5), show_progress=False)
    assert h.losses[0] == pytest.approx(expected_first, rel=1e-6)
    assert sum(h.losses[-20:]) / 20 < 0.7 * sum(h.losses[:5]) / 5
    assert h.ema is not None and not torch.equal(h.ema.output.weight, m.output.weight)


def test_generate_is_samplers_sample_and_deterministic():
    seed_everything(0)
    schedule = linear_schedule(50)
    m = MLPDenoiser(MLPDenoiserConfig(hidden=16, layers=1, time_embed_dim=8)).eval()
    a = generate(m, schedule, (10, 2), "ddpm", steps=10, seed=3)
    b = generate(m, schedule, (10, 2), "ddpm", steps=10, seed=3, batch_size=4)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(10, 2, generator=g)
    ref = sample(m, schedule, x_T, sampler="ddpm", steps=10, generator=g).sample
    torch.testing.assert_close(a, ref, rtol=0, atol=0)
    assert b.shape == (10, 2) and not torch.equal(a, generate(m, schedule, (10, 2), "ddpm", steps=10, seed=4))


def test_train_diffusion_errors():
    m = MLPDenoiser(MLPDenoiserConfig(hidden=8, layers=1, time_embed_dim=4))
    with pytest.raises(TypeError, match="NoiseSchedule"):
        train_diffusion(m, torch.randn(8, 2), "linear", DiffusionTrainConfig(steps=1))
    with pytest.raises(ValueError, match="snapshot_fn"):
        train_diffusion(m, torch.randn(8, 2), linear_schedule(10), DiffusionTrainConfig(steps=2, snapshot_steps=(1,)))
    with pytest.raises(ValueError, match="ema_decay"):
        train_diffusion(m, torch.randn(8, 2), linear_schedule(10), DiffusionTrainConfig(steps=2, ema_decay=1.5))


def test_toy_model_zoo_round_trip():
    zoo = ToyModelZoo(("ring8",), 2, dataclasses.asdict(MLPGANConfig(hidden=8, layers=1)),
                      dataclasses.asdict(MLPDenoiserConfig(hidden=8, layers=1, time_embed_dim=4)))
    assert len(zoo.runs("ring8", "gan")) == 2 and isinstance(zoo.runs("ring8", "diffusion")[1], MLPDenoiser)
    assert "ring8_gan.0.net.0.weight" in zoo.state_dict()
    with pytest.raises(KeyError, match="kinds"):
        zoo.runs("ring8", "vae")
