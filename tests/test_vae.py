"""Parity of course_lib.models.vae with diffusers' AutoencoderKL at a tiny size, and its error messages."""

from __future__ import annotations

import pytest
import torch
from conftest import require

diffusers = require("diffusers")
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # noqa: E402

from course_lib.models.vae import (  # noqa: E402
    AutoencoderConfig,
    AutoencoderKL,
    DiagonalGaussian,
    compute_scale_factor,
    vae_loss,
)

ATOL, RTOL = 1e-5, 1e-5  # whole-model tolerance in fp32 (observed max difference is ~1e-6 or below)

TINY = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
            latent_channels=4, norm_num_groups=8)


def _reference(**overrides) -> diffusers.AutoencoderKL:
    cfg = {**TINY, **overrides}
    n = len(cfg["block_out_channels"])
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                                  up_block_types=("UpDecoderBlock2D",) * n, sample_size=16, **cfg)
    # Random non-default values for every parameter, so GroupNorm affine and biases are tested too.
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return ref.eval()


@pytest.fixture(scope="module")
def pair() -> tuple[diffusers.AutoencoderKL, AutoencoderKL]:
    ref = _reference()
    ours = AutoencoderKL(AutoencoderConfig(**TINY))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_state_dict_keys_identical(pair):
    ref, ours = pair
    assert list(ours.state_dict()) == list(ref.state_dict())
    keys = set(ours.state_dict())
    for k in ("encoder.down_blocks.0.resnets.0.norm1.weight", "encoder.mid_block.attentions.0.to_q.weight",
              "encoder.down_blocks.0.downsamplers.0.conv.weight",
              "decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up_blocks.1.resnets.1.conv2.weight",
              "encoder.mid_block.attentions.0.to_out.0.weight", "quant_conv.weight",
              "post_quant_conv.weight"):
        assert k in keys
    assert all(m.eps == 1e-6 for m in ours.modules() if isinstance(m, torch.nn.GroupNorm))


def test_encoder_posterior_matches(pair, images):
    ref, ours = pair
    with torch.no_grad():
        theirs = ref.encode(images).latent_dist
        mine = ours.encode(images)
    assert mine.mean.shape == (2, 4, 8, 8)
    torch.testing.assert_close(mine.mean, theirs.mean, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(mine.logvar, theirs.logvar, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(mine.std, theirs.std, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(mine.kl(), theirs.kl(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mine.kl(mine), torch.zeros(2), atol=1e-5, rtol=0)


def test_decoder_and_forward_match(pair, images):
    ref, ours = pair
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=ATOL, rtol=RTOL)
        out = ours(images, sample_posterior=False)
        expected = ref(images, sample_posterior=False).sample
    assert out.sample.shape == images.shape
    torch.testing.assert_close(out.sample, expected, atol=ATOL, rtol=RTOL)


def test_posterior_sample_matches_diffusers():
    params = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(3)) * 3
    params[:, 4:, 0, 0] = 50.0  # a log-variance above the clamp at 20
    mine, theirs = DiagonalGaussian(params), DiagonalGaussianDistribution(params)
    torch.testing.assert_close(mine.logvar, theirs.logvar, atol=0, rtol=0)
    assert mine.logvar.max() == 20.0
    a = mine.sample(torch.Generator().manual_seed(7))
    b = theirs.sample(torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, mine.sample(torch.Generator().manual_seed(8)))
    other = DiagonalGaussian(torch.randn(3, 8, 4, 4))
    torch.testing.assert_close(mine.kl(other), theirs.kl(DiagonalGaussianDistribution(other.parameters)))
    assert torch.equal(mine.mode(), theirs.mode())


def test_forward_with_sampled_posterior_matches(pair, images):
    ref, ours = pair
    with torch.no_grad():
        mine = ours(images, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
        theirs = ref(images, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=RTOL)


def test_compute_scale_factor_is_one_over_std(pair):
    _, ours = pair
    imgs = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ours.train()
    factor = compute_scale_factor(ours, imgs, batch_size=2, generator=torch.Generator().manual_seed(9))
    assert ours.training  # mode restored
    ours.eval()
    with torch.no_grad():  # same draws: one generator, consumed batch by batch in order
        gen = torch.Generator().manual_seed(9)
        z = torch.cat([ours.encode(imgs[i:i + 2]).sample(gen) for i in range(0, 5, 2)])
        means = ours.encode(imgs).mode()
    assert factor == pytest.approx(1.0 / z.flatten().std().item(), rel=1e-5)
    mode_factor = compute_scale_factor(ours, imgs, batch_size=3, sample_posterior=False)
    assert mode_factor == pytest.approx(1.0 / means.flatten().std().item(), rel=1e-5)
    assert factor != pytest.approx(mode_factor, rel=1e-6)


def test_vae_loss_and_gradients(pair, images):
    _, ours = pair
    model = AutoencoderKL(AutoencoderConfig(**TINY))
    model.load_state_dict(ours.state_dict())
    out = model(images, sample_posterior=True, generator=torch.Generator().manual_seed(0))
    loss = vae_loss(images, out.sample, out.posterior, kl_weight=1e-3)
    expected_rec = (out.sample - images).abs().sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(loss.reconstruction, expected_rec)
    torch.testing.assert_close(loss.kl, out.posterior.kl().mean())
    torch.testing.assert_close(loss.total, expected_rec + 1e-3 * out.posterior.kl().mean())
    mse = vae_loss(images, out.sample, out.posterior, kl_weight=0.0, kind="mse")
    torch.testing.assert_close(mse.total, (out.sample - images).pow(2).sum(dim=(1, 2, 3)).mean())
    loss.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_three_levels_match_diffusers():
    cfg = dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4, latent_channels=3,
               in_channels=1, out_channels=2)
    ref = _reference(**cfg)
    ours = AutoencoderKL(**{**TINY, **cfg}).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 1, 16, 24)
    with torch.no_grad():
        expected = ref(x).sample
        out = ours(x)
    assert out.posterior.mean.shape == (2, 3, 4, 6) and out.sample.shape == (2, 2, 16, 24)
    torch.testing.assert_close(out.sample, expected, atol=ATOL, rtol=RTOL)


def test_clear_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, H, W\).*in_channels=1"):
        ours.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"x\[None\]"):
        ours.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"15x16 is not divisible .* factor 2.*multiple of 2"):
        ours.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, h, w\).*posterior.mode\(\)"):
        ours.decode(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, h, w\)"):
        ours.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"not divisible by the GroupNorm group count 32"):
        AutoencoderKL(block_out_channels=(32, 48))
    with pytest.raises(ValueError, match=r"latent_channels must be a positive int"):
        AutoencoderKL(latent_channels=0)
    with pytest.raises(TypeError, match=r"fields of AutoencoderConfig"):
        AutoencoderKL(channels=3)
    with pytest.raises(ValueError, match=r"'l1'.*'mse'"):
        vae_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), DiagonalGaussian(torch.zeros(1, 8, 1, 1)),
                 kind="l2")
    with pytest.raises(ValueError, match=r"batch_size must be a positive int"):
        compute_scale_factor(ours, torch.zeros(2, 3, 16, 16), batch_size=0)
