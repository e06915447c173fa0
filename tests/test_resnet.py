"""ResnetBlock2D against diffusers' ResnetBlock2D on the same weights (tolerance 1e-6)."""

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D as RefResnetBlock2D

from course_lib.core.utils import seed_everything
from course_lib.models.resnet import ResnetBlock2D, check_group_norm

ATOL = RTOL = 1e-6


def randomize_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter so norms' weights and all biases differ from their defaults."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


@pytest.mark.parametrize("c_in,c_out", [(32, 32), (32, 64), (64, 32)])
def test_matches_diffusers_with_time_embedding(c_in, c_out):
    seed_everything(0)
    ref = randomize_(RefResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=48, groups=8,
                                      eps=1e-5))
    ours = ResnetBlock2D(c_in, c_out, temb_channels=48, groups=8, eps=1e-5).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert (ours.conv_shortcut is not None) == (c_in != c_out)
    x, temb = torch.randn(2, c_in, 8, 8), torch.randn(2, 48)
    with torch.no_grad():
        expected, got = ref(x, temb), ours(x, temb)
    assert got.shape == (2, c_out, 8, 8)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    # The time embedding really changes the output.
    with torch.no_grad():
        assert not torch.allclose(ours(x, temb), ours(x, temb + 1.0))


def test_matches_diffusers_without_time_embedding_like_the_vae():
    seed_everything(1)
    ref = randomize_(RefResnetBlock2D(in_channels=32, out_channels=64, temb_channels=None, groups=8,
                                      eps=1e-6))
    ours = ResnetBlock2D(32, 64, temb_channels=None, groups=8, eps=1e-6).eval()
    assert ours.time_emb_proj is None
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x, None), atol=ATOL, rtol=RTOL)


def test_backward_gradients_match():
    seed_everything(2)
    ref = randomize_(RefResnetBlock2D(in_channels=16, out_channels=32, temb_channels=8, groups=4, eps=1e-5))
    ours = ResnetBlock2D(16, 32, temb_channels=8, groups=4).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, temb = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    ref(x, temb).square().sum().backward()
    ours(x, temb).square().sum().backward()
    ours_params = dict(ours.named_parameters())
    for name, p_ref in ref.named_parameters():
        torch.testing.assert_close(ours_params[name].grad, p_ref.grad, atol=1e-5, rtol=1e-5)


def test_groups_not_dividing_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"in_channels=48 is not divisible by .* 32.*up to 32 is 24"):
        ResnetBlock2D(48, 64, temb_channels=16, groups=32)
    with pytest.raises(ValueError, match=r"out_channels=20 is not divisible"):
        ResnetBlock2D(32, 20, temb_channels=16, groups=8)
    check_group_norm(64, 32)  # fine: no error


def test_wrong_inputs_are_clear_errors():
    block = ResnetBlock2D(16, 16, temb_channels=8, groups=4)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 16, H, W\), got \(2, 3, 4, 4\)"):
        block(torch.randn(2, 3, 4, 4), torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"pass temb of shape \(B, 8\)"):
        block(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"temb should have shape \(2, 8\)"):
        block(torch.randn(2, 16, 4, 4), torch.randn(2, 7))
    no_time = ResnetBlock2D(16, 16, temb_channels=None, groups=4)
    with pytest.raises(ValueError, match="takes no time embedding"):
        no_time(torch.randn(2, 16, 4, 4), torch.randn(2, 8))
