"""Attention parts against diffusers on the same weights (blocks: tolerance 1e-6 absolute)."""

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock as RefBasicTransformerBlock
from diffusers.models.attention import FeedForward as RefFeedForward
from diffusers.models.attention_processor import Attention as RefAttention
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from course_lib.core.utils import seed_everything
from course_lib.models.attention import (
    AttentionBlock,
    BasicTransformerBlock,
    CrossAttention,
    FeedForward,
    SpatialTransformer,
)

ATOL = RTOL = 1e-6


def randomize_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter so norms' weights and all biases differ from their defaults."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def load_same_weights(ours: torch.nn.Module, ref: torch.nn.Module) -> torch.nn.Module:
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


@pytest.mark.parametrize("channels,heads,groups,eps", [(64, 4, 8, 1e-5), (32, 1, 8, 1e-6)])
def test_attention_block_matches_diffusers_unet2dmodel_attention(channels, heads, groups, eps):
    # This is how UNet2DModel's AttnDownBlock2D / AttnUpBlock2D / UNetMidBlock2D (and the SD VAE's mid
    # block, with one head and eps 1e-6) build their self-attention.
    seed_everything(0)
    ref = randomize_(RefAttention(channels, heads=heads, dim_head=channels // heads, eps=eps,
                                  norm_num_groups=groups, residual_connection=True, bias=True,
                                  upcast_softmax=True, _from_deprecated_attn_block=True))
    ours = load_same_weights(AttentionBlock(channels, heads, groups, eps), ref)
    x = torch.randn(2, channels, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("context_dim", [None, 24])
def test_cross_attention_matches_diffusers(context_dim):
    seed_everything(1)
    ref = randomize_(RefAttention(32, cross_attention_dim=context_dim, heads=4, dim_head=8))
    ours = load_same_weights(CrossAttention(32, context_dim, heads=4, head_dim=8), ref)
    assert ours.to_q.bias is None and ours.to_out[0].bias is not None
    x = torch.randn(2, 10, 32)
    context = None if context_dim is None else torch.randn(2, 7, context_dim)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=context)
        torch.testing.assert_close(ours(x, context), expected, atol=ATOL, rtol=RTOL)


def test_feed_forward_matches_diffusers_geglu():
    seed_everything(2)
    ref = randomize_(RefFeedForward(32, activation_fn="geglu"))
    ours = load_same_weights(FeedForward(32), ref)
    assert "net.0.proj.weight" in ours.state_dict() and "net.2.weight" in ours.state_dict()
    x = 3 * torch.randn(2, 10, 32)  # large inputs: exact gelu and tanh-gelu differ visibly here
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("context_dim", [None, 24])
def test_basic_transformer_block_matches_diffusers(context_dim):
    seed_everything(3)
    ref = randomize_(RefBasicTransformerBlock(32, 4, 8, cross_attention_dim=context_dim))
    ours = load_same_weights(BasicTransformerBlock(32, 4, 8, context_dim), ref)
    x = torch.randn(2, 10, 32)
    context = None if context_dim is None else torch.randn(2, 7, context_dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, context), ref(x, encoder_hidden_states=context),
                                   atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("use_linear_projection", [False, True])
@pytest.mark.parametrize("depth", [1, 2])
def test_spatial_transformer_matches_diffusers_transformer2d(use_linear_projection, depth):
    seed_everything(4)
    ref = randomize_(Transformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=32,
                                        num_layers=depth, cross_attention_dim=24, norm_num_groups=8,
                                        use_linear_projection=use_linear_projection))
    ours = load_same_weights(SpatialTransformer(32, 2, 16, depth, context_dim=24, groups=8,
                                                use_linear_projection=use_linear_projection), ref)
    x, context = torch.randn(2, 32, 6, 5), torch.randn(2, 7, 24)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=context, return_dict=False)[0]
        got = ours(x, context)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
        # The context really steers the output.
        assert not torch.allclose(ours(x, context + 1.0), got)


def test_spatial_transformer_gradients_match():
    seed_everything(5)
    ref = randomize_(Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16,
                                        cross_attention_dim=12, norm_num_groups=4,
                                        use_linear_projection=True))
    ours = SpatialTransformer(16, 2, 8, context_dim=12, groups=4, use_linear_projection=True)
    load_same_weights(ours, ref)
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 12)
    ref(x, encoder_hidden_states=context, return_dict=False)[0].square().sum().backward()
    ours(x, context).square().sum().backward()
    ours_params = dict(ours.named_parameters())
    for name, p_ref in ref.named_parameters():
        torch.testing.assert_close(ours_params[name].grad, p_ref.grad, atol=1e-5, rtol=1e-5)


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match=r"channels=48 is not divisible .* 32"):
        AttentionBlock(48, 1, groups=32)
    with pytest.raises(ValueError, match=r"cannot be split into 5 attention heads"):
        AttentionBlock(64, 5, groups=8)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 64, H, W\)"):
        AttentionBlock(64, 4, groups=8)(torch.randn(1, 32, 4, 4))
    st = SpatialTransformer(32, 2, 16, context_dim=24, groups=8)
    with pytest.raises(ValueError, match=r"pass context of shape \(B, L, 24\)"):
        st(torch.randn(2, 32, 4, 4))
    with pytest.raises(ValueError, match=r"context should have shape \(2, L, 24\).*got \(2, 7, 16\)"):
        st(torch.randn(2, 32, 4, 4), torch.randn(2, 7, 16))
    with pytest.raises(ValueError, match="without context"):
        self_only = SpatialTransformer(32, 2, 16, context_dim=None, groups=8)
        self_only(torch.randn(2, 32, 4, 4), torch.randn(2, 7, 32))
    with pytest.raises(ValueError, match=r"context should have shape \(2, L, 24\)"):
        CrossAttention(32, 24, heads=2, head_dim=16)(torch.randn(2, 5, 32), torch.randn(2, 7, 32))
