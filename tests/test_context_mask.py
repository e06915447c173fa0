"""A U-Net that reads only each prompt's own tokens: the padding masked out of its cross-attention.

SD's U-Net attends to all 77 positions of the padded prompt. The course's ShapeWorld model was
trained with the padding masked (``mask_padding``), and the training data, the guidance function
and the pipeline must all feed it the same way: these tests check that masking is exact (masked
positions have no effect, masking equals cutting), and that the pieces agree with each other.
"""

from __future__ import annotations

import pytest
import torch

from course_lib.diffusion.guidance import guided_model_fn
from course_lib.diffusion.schedules import make_schedule
from course_lib.models.attention import CrossAttention, check_context_mask
from course_lib.models.clip import CLIPTextConfig, CLIPTextEncoder
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.models.unet import UNet
from course_lib.models.vae import AutoencoderConfig, AutoencoderKL
from course_lib.pipeline.text_to_image import TextToImagePipeline
from course_lib.train.text_to_image import TextConditioner, t2i_unet_config


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return UNet(t2i_unet_config(context_dim=16, block_out_channels=(16, 32), norm_num_groups=8)).eval()


@pytest.fixture(scope="module")
def tokenizer() -> CLIPStyleTokenizer:
    from course_lib.core.paths import data_dir

    return CLIPStyleTokenizer.from_folder(data_dir() / "tokenizer")


@pytest.fixture(scope="module")
def text_encoder(tokenizer) -> CLIPTextEncoder:
    torch.manual_seed(1)
    return CLIPTextEncoder(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=2, num_attention_heads=2,
                                          max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id)).eval()


def test_masked_tokens_have_no_effect_and_masking_equals_cutting(unet):
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    context = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        masked = unet(x, t, context, mask)
        other_padding = context.clone()
        other_padding[:, 4:] = 100 * torch.randn(2, 2, 16)
        assert torch.equal(unet(x, t, other_padding, mask), masked)
        torch.testing.assert_close(unet(x, t, context[:, :4]), masked, atol=1e-5, rtol=0)
        assert (unet(x, t, context) - masked).abs().max() > 1e-3      # unmasked, the padding is read


def test_bad_masks_are_clear_errors(unet):
    context = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="shape"):
        check_context_mask(torch.ones(2, 4, dtype=torch.bool), context)
    with pytest.raises(ValueError, match="at least the start token"):
        check_context_mask(torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]), context)
    with pytest.raises(ValueError, match="without a context"):
        check_context_mask(torch.ones(2, 5), None)
    with pytest.raises(ValueError, match="shape"):
        unet(torch.randn(2, 4, 8, 8), 5, context, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        CrossAttention(8, 16, heads=2, head_dim=4)(torch.randn(2, 3, 8), context, torch.ones(1, 5))
    with pytest.raises(ValueError, match="both context_mask and uncond_mask"):
        guided_model_fn(unet, context, context, 3.0, context_mask=torch.ones(2, 5, dtype=torch.bool))


def test_conditioner_keeps_each_prompts_own_states(tokenizer, text_encoder):
    prompts = ["a red circle", "a blue square to the left of a green triangle", ""]
    full = TextConditioner(tokenizer, text_encoder)(prompts)                          # (3, 77, 16)
    context, mask = TextConditioner(tokenizer, text_encoder, mask_padding=True)(prompts)
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    assert context.shape == (3, max(lengths), 16) and mask.sum(dim=1).tolist() == lengths
    for i, n in enumerate(lengths):   # causal text encoder: the padding after a prompt changes nothing before it
        torch.testing.assert_close(context[i, :n], full[i, :n], atol=1e-5, rtol=0)
        assert not context[i, n:].any()


def test_pipeline_with_mask_padding_ignores_the_batch(tokenizer, text_encoder, unet):
    """With a masked model, an image does not depend on which prompts share its batch (their lengths)."""
    torch.manual_seed(2)
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 16, 16), layers_per_block=1,
                                            norm_num_groups=4)).eval()
    pipe = TextToImagePipeline(tokenizer, text_encoder, unet, vae, make_schedule("scaled_linear"),
                               mask_padding=True)
    short, long = "a red circle", "three white crosses to the left of a very large purple square"
    context, mask = pipe.encode_prompt([short, long])
    assert context.shape[1] == len(tokenizer.encode(long)) and mask[0].sum() == len(tokenizer.encode(short))
    both = pipe([short, long], steps=3, seed=0, show_progress=False)
    alone = pipe(short, steps=3, seed=0, show_progress=False)
    torch.testing.assert_close(alone.images[0], both.images[0], atol=1e-5, rtol=0)
    pipe.mask_padding = False                                       # SD's way: the 77 padded positions
    context, mask = pipe.encode_prompt([short])
    assert context.shape[1] == 77 and mask is None
