"""The U-Net and its parts against diffusers (blocks: 1e-6, whole models: 1e-4 absolute)."""

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.downsampling import Downsample2D as RefDownsample2D
from diffusers.models.embeddings import TimestepEmbedding as RefTimestepEmbedding
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.upsampling import Upsample2D as RefUpsample2D

from course_lib.core.utils import seed_everything
from course_lib.models.unet import (
    Downsample2D,
    TimestepEmbedding,
    UNet,
    UNetConfig,
    Upsample2D,
    timestep_embedding,
)

BLOCK_TOL = 1e-6
MODEL_TOL = 1e-4


def randomize_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter so norms' weights and all biases differ from their defaults."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def load_same_weights(ours: torch.nn.Module, ref: torch.nn.Module) -> torch.nn.Module:
    ours_keys, ref_keys = set(ours.state_dict()), set(ref.state_dict())
    assert ours_keys == ref_keys, (f"only in ours: {sorted(ours_keys - ref_keys)[:5]}, "
                                   f"only in diffusers: {sorted(ref_keys - ours_keys)[:5]}")
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


@pytest.mark.parametrize("dim", [32, 320, 7])
@pytest.mark.parametrize("flip,shift", [(True, 0), (False, 1)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    t = torch.tensor([0, 1, 10, 500, 999])
    expected = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_embedding(t, dim, flip, shift), expected, atol=BLOCK_TOL, rtol=0)
    t_float = torch.tensor([0.5, 123.25])  # continuous times, as DPM-Solver may ask for
    torch.testing.assert_close(timestep_embedding(t_float, dim, flip, shift),
                               get_timestep_embedding(t_float, dim, flip, shift), atol=BLOCK_TOL, rtol=0)


def test_timestep_embedding_is_cos_then_sin_for_sd():
    emb = timestep_embedding(torch.tensor([0]), 8)
    torch.testing.assert_close(emb, torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="1-D tensor"):
        timestep_embedding(torch.tensor(5), 8)


def test_timestep_mlp_matches_diffusers():
    seed_everything(0)
    ref = randomize_(RefTimestepEmbedding(32, 128))
    ours = load_same_weights(TimestepEmbedding(32, 128), ref)
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=BLOCK_TOL, rtol=BLOCK_TOL)


@pytest.mark.parametrize("padding", [1, 0])
def test_downsample_matches_diffusers(padding):
    seed_everything(1)
    ref = randomize_(RefDownsample2D(16, use_conv=True, out_channels=16, padding=padding, name="op"))
    ours = load_same_weights(Downsample2D(16, padding=padding), ref)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        got = ours(x)
        torch.testing.assert_close(got, ref(x), atol=BLOCK_TOL, rtol=BLOCK_TOL)
    assert got.shape == (2, 16, 4, 4)


def test_upsample_matches_diffusers():
    seed_everything(2)
    ref = randomize_(RefUpsample2D(16, use_conv=True, out_channels=16))
    ours = load_same_weights(Upsample2D(16), ref)
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        got = ours(x)
        torch.testing.assert_close(got, ref(x), atol=BLOCK_TOL, rtol=BLOCK_TOL)
    assert got.shape == (2, 16, 8, 8)


# (name, our config, the matching diffusers UNet2DConditionModel kwargs)
CONDITIONAL_CASES = {
    "sd1_style": (
        UNetConfig(in_channels=4, out_channels=4, sample_size=16, block_out_channels=(32, 64),
                   layers_per_block=1, attention_levels=(0,), norm_num_groups=8, cross_attention_dim=24,
                   num_attention_heads=2),
        # diffusers' `attention_head_dim` of UNet2DConditionModel is really the number of heads.
        dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2),
    ),
    "sd2_style_linear_proj_per_level_heads": (
        UNetConfig(in_channels=4, out_channels=4, sample_size=16, block_out_channels=(32, 64),
                   layers_per_block=2, attention_levels=(0, 1), norm_num_groups=16, cross_attention_dim=24,
                   num_attention_heads=None, attention_head_dim=16, use_linear_projection=True,
                   transformer_depth=2),
        dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
             use_linear_projection=True, transformer_layers_per_block=2),
    ),
}


@pytest.mark.parametrize("case", sorted(CONDITIONAL_CASES))
def test_conditional_unet_matches_diffusers_unet2dcondition(case):
    cfg, extra = CONDITIONAL_CASES[case]
    seed_everything(3)
    ref = randomize_(UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, cross_attention_dim=cfg.cross_attention_dim, **extra))
    ours = load_same_weights(UNet(cfg), ref)
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 24)
    with torch.no_grad():
        for t in (torch.tensor([3, 700]), 999, torch.tensor(250), 17.5):
            expected = ref(x, t, encoder_hidden_states=context, return_dict=False)[0]
            got = ours(x, t, context)
            assert got.shape == x.shape
            torch.testing.assert_close(got, expected, atol=MODEL_TOL, rtol=MODEL_TOL)
        # Time and text both change the prediction.
        assert not torch.allclose(ours(x, 10, context), ours(x, 900, context), atol=1e-3)
        assert not torch.allclose(ours(x, 10, context), ours(x, 10, torch.randn(2, 5, 24)), atol=1e-3)


def test_unconditional_unet_matches_diffusers_unet2dmodel():
    # UNet2DModel's `attention_head_dim` is the real head size; its mid block always has attention.
    cfg = UNetConfig(in_channels=3, out_channels=3, sample_size=16, block_out_channels=(32, 64),
                     layers_per_block=1, attention_levels=(1,), norm_num_groups=8,
                     num_attention_heads=None, attention_head_dim=16)
    seed_everything(4)
    ref = randomize_(UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16, norm_num_groups=8))
    ours = load_same_weights(UNet(cfg), ref)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for t in (torch.tensor([3, 700]), 999):
            expected = ref(x, t, return_dict=False)[0]
            torch.testing.assert_close(ours(x, t), expected, atol=MODEL_TOL, rtol=MODEL_TOL)


def test_three_level_unet_trains_one_step_and_runs_in_bfloat16():
    seed_everything(5)
    unet = UNet(UNetConfig(block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=16,
                           cross_attention_dim=8))
    x, context = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8)
    loss = unet(x, torch.randint(0, 1000, (4,)), context).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in unet.parameters())
    out = unet.to(torch.bfloat16)(x.bfloat16(), 5, context.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match=r"block_out_channels\[1\]=48 is not divisible .* 32"):
        UNet(UNetConfig(block_out_channels=(32, 48)))
    with pytest.raises(ValueError, match=r"levels \[3\] outside 0\.\.2"):
        UNet(UNetConfig(attention_levels=(3,), norm_num_groups=8))
    with pytest.raises(ValueError, match="exactly one of num_attention_heads"):
        UNet(UNetConfig(num_attention_heads=4, attention_head_dim=16, norm_num_groups=8))
    with pytest.raises(ValueError, match=r"block_out_channels\[2\]=64 cannot be split into attention heads"):
        UNet(UNetConfig(num_attention_heads=3, norm_num_groups=8))
    with pytest.raises(ValueError, match=r"sample_size=30 must be divisible by .*4.*28 or 32"):
        UNet(UNetConfig(sample_size=30, norm_num_groups=8))


def test_forward_errors_say_what_to_do():
    seed_everything(6)
    uncond = UNet(UNetConfig(block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=16))
    cond = UNet(UNetConfig(block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=16,
                           cross_attention_dim=8))
    x, ctx = torch.randn(2, 3, 16, 16), torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 3, H, W\), got \(2, 1, 16, 16\)"):
        uncond(torch.randn(2, 1, 16, 16), 3)
    with pytest.raises(ValueError, match=r"height 18 is not divisible by 4 .* 16 or 20"):
        uncond(torch.randn(2, 3, 18, 16), 3)
    with pytest.raises(ValueError, match=r"unconditional .* takes no context"):
        uncond(x, 3, ctx)
    with pytest.raises(ValueError, match=r"\(cross_attention_dim=8\): pass context of shape \(B, L, 8\)"):
        cond(x, 3)
    with pytest.raises(ValueError, match=r"context should have shape \(2, L, 8\) .* got \(2, 5, 7\)"):
        cond(x, 3, torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"t should be a scalar or have shape \(2,\)"):
        cond(x, torch.tensor([1, 2, 3]), ctx)
    with pytest.raises(TypeError, match="t must be an int, a float or a tensor"):
        cond(x, "10", ctx)
