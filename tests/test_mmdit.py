"""The MMDiT (SD3's denoiser) and its parts against diffusers' SD3Transformer2DModel (float32, 1e-5)."""

import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from course_lib.models.mmdit import (
    MMDiT,
    MMDiTConfig,
    patchify,
    pooled_from_context,
    sincos_pos_embed_2d,
    unpatchify,
)

TOL = 1e-5
TINY = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10)


def randomize_(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter so no weight or bias keeps its default (zero biases, identity gates)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def pair(pos_embed_max_size: int | None = None) -> tuple[MMDiT, SD3Transformer2DModel]:
    """Ours and diffusers' at the same tiny size, with the same random weights loaded strictly."""
    torch.manual_seed(0)
    ref = randomize_(SD3Transformer2DModel(**TINY, pos_embed_max_size=pos_embed_max_size))
    ours = MMDiT(MMDiTConfig(**TINY, pos_embed_max_size=pos_embed_max_size))
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval(), ref


@pytest.fixture(scope="module")
def models() -> tuple[MMDiT, SD3Transformer2DModel]:
    return pair()


def inputs(b: int = 2, size: tuple[int, int] = (8, 8), tokens: int = 5) -> dict[str, torch.Tensor]:
    return dict(x=torch.randn(b, 4, *size), context=torch.randn(b, tokens, 12), pooled=torch.randn(b, 10),
                t=torch.tensor([999.0, 321.5][:b]))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("max_size, size", [(None, (8, 8)), (6, (8, 8)), (6, (4, 8))])
@torch.no_grad()
def test_whole_model_matches_diffusers(max_size, size):
    ours, ref = pair(max_size)
    i = inputs(size=size)
    expected = ref(hidden_states=i["x"], encoder_hidden_states=i["context"], pooled_projections=i["pooled"],
                   timestep=i["t"]).sample
    assert close(ours(i["x"], i["t"], i["context"], pooled=i["pooled"]), expected)
    # A python number is one timestep for the whole batch.
    expected = ref(hidden_states=i["x"], encoder_hidden_states=i["context"], pooled_projections=i["pooled"],
                   timestep=torch.tensor([500.0, 500.0])).sample
    assert close(ours(i["x"], 500.0, i["context"], pooled=i["pooled"]), expected)


@torch.no_grad()
def test_parts_match_diffusers(models):
    ours, ref = models
    i = inputs()
    assert close(ours.pos_embed(i["x"]), ref.pos_embed(i["x"]))
    temb = ours.time_text_embed(i["t"], i["pooled"])
    assert close(temb, ref.time_text_embed(i["t"], i["pooled"]))
    h, c = torch.randn(2, 16, 16), torch.randn(2, 5, 16)
    for a, b in zip(ours.transformer_blocks[0].norm1(h, temb), ref.transformer_blocks[0].norm1(h, emb=temb),
                    strict=True):
        assert close(a, b)
    x_out, c_out = ours.transformer_blocks[0].attn(h, c)
    ref_x, ref_c = ref.transformer_blocks[0].attn(hidden_states=h, encoder_hidden_states=c)
    assert close(x_out, ref_x) and close(c_out, ref_c)
    x_out, c_out = ours.transformer_blocks[0](h, c, temb)          # a normal block updates both streams
    ref_c, ref_x = ref.transformer_blocks[0](hidden_states=h, encoder_hidden_states=c, temb=temb)
    assert close(x_out, ref_x) and close(c_out, ref_c)
    last = ours.transformer_blocks[-1]                              # the last block: image stream only
    assert last.context_pre_only and last.ff_context is None and last.attn.to_add_out is None
    x_out, c_out = last(h, c, temb)
    ref_c, ref_x = ref.transformer_blocks[-1](hidden_states=h, encoder_hidden_states=c, temb=temb)
    assert c_out is None and ref_c is None and close(x_out, ref_x)
    assert close(ours.norm_out(h, temb), ref.norm_out(h, temb))


def test_patchify_is_the_conv_patch_embedding(models):
    ours, ref = models
    x = torch.randn(2, 4, 8, 8)
    conv = ours.pos_embed.proj                                      # weight (D, C, p, p)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)   # -> (D, p*p*C), patchify's order
    with torch.no_grad():
        assert close(patchify(x, 2) @ weight.T + conv.bias, conv(x).flatten(2).transpose(1, 2))
    assert torch.equal(unpatchify(patchify(x, 2), 2, 4, 8, 8), x)
    tokens = torch.randn(2, 4 * 2, 2 * 2 * 3)                       # a 4x2 grid of 2x2 patches, 3 channels
    ref_out = torch.einsum("nhwpqc->nchpwq", tokens.reshape(2, 4, 2, 2, 2, 3)).reshape(2, 3, 8, 4)  # diffusers'
    assert torch.equal(unpatchify(tokens, 2, 3, 8, 4), ref_out)


@pytest.mark.parametrize("dim, grid, base", [(16, 4, 4), (16, 6, 4), (32, 5, 3)])
def test_sincos_pos_embed_matches_diffusers(dim, grid, base):
    expected = get_2d_sincos_pos_embed(dim, grid, base_size=base, interpolation_scale=1.0, output_type="pt")
    assert close(sincos_pos_embed_2d(dim, grid, base, 1.0), expected.float())


@torch.no_grad()
def test_pooled_defaults_to_last_unmasked_token():
    model = randomize_(MMDiT(MMDiTConfig(**{**TINY, "pooled_projection_dim": 12})))
    i = inputs(tokens=6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    pooled = torch.stack([i["context"][0, 2], i["context"][1, 4]])
    assert torch.equal(pooled_from_context(i["context"], mask), pooled)
    assert close(model(i["x"], i["t"], i["context"], mask), model(i["x"], i["t"], i["context"], mask, pooled))


@torch.no_grad()
def test_masked_tokens_are_as_if_removed(models):
    ours, _ = models
    i = inputs(tokens=7)
    i["context"][:, 3:] *= 100.0                                    # loud padding: must have no effect
    lengths = [3, 6]
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    out = ours(i["x"], i["t"], i["context"], mask, i["pooled"])
    for row, n in enumerate(lengths):
        alone = ours(i["x"][row:row + 1], i["t"][row:row + 1], i["context"][row:row + 1, :n], None,
                     i["pooled"][row:row + 1])
        assert close(out[row:row + 1], alone)
    assert not close(out, ours(i["x"], i["t"], i["context"], None, i["pooled"]))


def test_gradients_reach_every_parameter_but_the_last_text_queries(models):
    ours, _ = models
    i = inputs()
    ours.zero_grad(set_to_none=True)
    ours(i["x"], i["t"], i["context"], pooled=i["pooled"]).square().mean().backward()
    no_grad = {name for name, p in ours.named_parameters() if p.grad is None}
    ours.zero_grad(set_to_none=True)
    # The last block's text queries only feed text outputs, which nothing reads (as in diffusers):
    # under DistributedDataParallel this needs find_unused_parameters=True.
    assert no_grad == {"transformer_blocks.2.attn.add_q_proj.weight", "transformer_blocks.2.attn.add_q_proj.bias"}


def test_clear_errors(models):
    ours, _ = models
    with pytest.raises(ValueError, match="patch_size=3 does not divide sample_size=8.*1, 2, 4, 8"):
        MMDiT(MMDiTConfig(sample_size=8, patch_size=3))
    with pytest.raises(ValueError, match="caption_projection_dim=64 must equal the hidden size"):
        MMDiT(MMDiTConfig(caption_projection_dim=64))
    with pytest.raises(ValueError, match="pos_embed_max_size=2 is smaller"):
        MMDiT(MMDiTConfig(pos_embed_max_size=2))
    i = inputs()
    with pytest.raises(ValueError, match=r"context should have shape \(2, L, 12\)"):
        ours(i["x"], i["t"], torch.randn(2, 5, 7), pooled=i["pooled"])
    with pytest.raises(ValueError, match=r"context should have shape .* got None"):
        ours(i["x"], i["t"], None, pooled=i["pooled"])
    with pytest.raises(ValueError, match="pass pooled="):
        ours(i["x"], i["t"], i["context"])
    with pytest.raises(ValueError, match="differs from pooled_projection_dim"):
        ours(i["x"], i["t"], i["context"], torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"pooled should have shape \(2, 10\)"):
        ours(i["x"], i["t"], i["context"], pooled=torch.randn(2, 12))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, H, W\)"):
        ours(torch.randn(2, 3, 8, 8), i["t"], i["context"], pooled=i["pooled"])
    with pytest.raises(ValueError, match="divisible by patch_size=2"):
        ours(torch.randn(2, 4, 7, 8), i["t"], i["context"], pooled=i["pooled"])
    with pytest.raises(ValueError, match="positions for a 4x4 patch grid only"):
        ours(torch.randn(2, 4, 4, 8), i["t"], i["context"], pooled=i["pooled"])
    with pytest.raises(ValueError, match=r"t should be a number or have shape \(2,\)"):
        ours(i["x"], torch.ones(3), i["context"], pooled=i["pooled"])
