"""The course's CLIP text encoder against transformers' CLIPTextModel, and the contrastive pieces.

Whole-model parity: the same weights give the same outputs within 1e-5 absolute (fp32).
"""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import CLIPTextConfig as HFTextConfig
from transformers import CLIPTextModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from course_lib.core.utils import seed_everything
from course_lib.models.clip import (
    CLIPTextConfig,
    CLIPTextEncoder,
    ContrastiveModel,
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoderOutput,
    causal_mask,
    clip_loss,
    retrieval_recall_at_k,
    zero_shot_classify,
)
from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe
from course_lib.pipeline.convert.clip import clip_text_config_from_hf, load_hf_clip_text_state_dict

ATOL = RTOL = 1e-5
# PROMPTS[2] is longer than the 16-token context on purpose (truncated rows are compared too).
pytestmark = pytest.mark.filterwarnings("ignore::course_lib.models.tokenizer.PromptTruncatedWarning")
COLOURS = ["red", "green", "blue"]
CORPUS = [f"a {c} {s} above a {c2} {s2}" for c in COLOURS + ["yellow"] for s in ["circle", "square"]
          for c2 in COLOURS for s2 in ["star", "triangle"]] + ["a photo of a red image"] * 3
PROMPTS = ["a red circle above a blue star", "a green square", "Something else entirely, with ümlauts!", ""]


@pytest.fixture(scope="module")
def tokenizer():
    vocab, merges = train_bpe(CORPUS, num_merges=60)
    return CLIPStyleTokenizer(vocab, merges, context_length=16)


def tiny_hf_config(tokenizer, **overrides) -> HFTextConfig:
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=tokenizer.context_length,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    kwargs.update(overrides)
    return HFTextConfig(**kwargs)


def randomized_hf_model(config: HFTextConfig) -> CLIPTextModel:
    """A transformers CLIPTextModel with every parameter perturbed (LayerNorms and biases included)."""
    seed_everything(0)
    model = CLIPTextModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def ours_from(hf_model: CLIPTextModel, state_dict=None) -> CLIPTextEncoder:
    model = CLIPTextEncoder(clip_text_config_from_hf(hf_model.config))
    load_hf_clip_text_state_dict(model, hf_model.state_dict() if state_dict is None else state_dict)
    return model.eval()


def tiny_config(tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=16, hidden_size=32,
                          num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                          eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def hf_model(tokenizer):
    return randomized_hf_model(tiny_hf_config(tokenizer))


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("prefixed", [False, True], ids=["transformers5_keys", "text_model_prefix"])
def test_text_encoder_matches_transformers(tokenizer, hf_model, prefixed):
    state = hf_model.state_dict()
    if prefixed:  # the transformers 4.x layout, also what a whole CLIPModel's text half looks like
        state = {f"text_model.{k}": v for k, v in state.items()}
        state["text_model.embeddings.position_ids"] = torch.arange(16)[None]  # a buffer old files carry
    ours = ours_from(hf_model, state)
    ids = tokenizer(PROMPTS)
    with torch.no_grad():
        ref = hf_model(ids, output_hidden_states=True)
        out = ours(ids, output_hidden_states=True)
    assert isinstance(out, TextEncoderOutput)
    assert out.last_hidden_state.shape == (4, 16, 32) and out.pooled.shape == (4, 32)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.pooled, ref.pooler_output, atol=ATOL, rtol=RTOL)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3  # embeddings + one per block
    for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=RTOL)
    # pooled really is the state at the (first) end token
    eos_pos = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    torch.testing.assert_close(out.pooled, out.last_hidden_state[torch.arange(4), eos_pos])


def test_attention_mask_matches_transformers(tokenizer, hf_model):
    ours = ours_from(hf_model)
    ids, mask = tokenizer(PROMPTS, return_attention_mask=True)
    with torch.no_grad():
        ref = hf_model(ids, attention_mask=mask).last_hidden_state
        out = ours(ids, attention_mask=mask).last_hidden_state
        unmasked = ours(ids).last_hidden_state
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    real = mask.bool()  # the mask only changes padding positions: real tokens never see later padding
    torch.testing.assert_close(out[real], unmasked[real], atol=ATOL, rtol=RTOL)


def test_legacy_eos_id_2_means_argmax_pooling(tokenizer):
    # SD v1/v2 configs say eos_token_id=2; transformers then pools at the highest id (CLIP's rule).
    hf_model = randomized_hf_model(tiny_hf_config(tokenizer, eos_token_id=2, pad_token_id=1, bos_token_id=0))
    ours = ours_from(hf_model)
    assert ours.config.pooling == "argmax"
    ids = tokenizer(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).pooled, hf_model(ids).pooler_output, atol=ATOL, rtol=RTOL)


def test_penultimate_context_is_sd2s(tokenizer, hf_model):
    # SD 2 uses final_layer_norm(penultimate block output): the same as a model with the last block cut off.
    ours = ours_from(hf_model)
    cut = CLIPTextModel(tiny_hf_config(tokenizer, num_hidden_layers=1)).eval()
    state = {k: v for k, v in hf_model.state_dict().items() if not k.startswith("encoder.layers.1.")}
    cut.load_state_dict(state, strict=True)
    ids = tokenizer(PROMPTS)
    with torch.no_grad():
        penultimate = ours.text_context(ids, layer=-2)
        out = ours(ids, output_hidden_states=True)
        torch.testing.assert_close(penultimate, cut(ids).last_hidden_state, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(penultimate, ours.final_layer_norm(out.hidden_states[-2]))
        torch.testing.assert_close(ours.text_context(ids), out.last_hidden_state)  # layer -1: SD v1
    with pytest.raises(ValueError, match="layer"):
        ours.text_context(ids, layer=-4)


# ------------------------------------------------------------------------------------- causality
def test_causal_mask_really_is_causal(tokenizer, hf_model):
    ours = ours_from(hf_model)
    ids = tokenizer(["a red circle above a blue star"])
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 500
    with torch.no_grad():
        a = ours(ids, output_hidden_states=True)
        b = ours(changed, output_hidden_states=True)
    for ha, hb in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(ha[:, :5], hb[:, :5])  # earlier positions: bit-identical
        assert not torch.allclose(ha[:, 5], hb[:, 5])  # the changed position and later ones change
    assert (a.last_hidden_state[:, 6:] - b.last_hidden_state[:, 6:]).abs().amax(dim=-1).min() > 1e-4
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))


# ------------------------------------------------------------------------------------- loader errors
def test_loader_names_offending_keys(hf_model):
    state = dict(hf_model.state_dict())
    ours = CLIPTextEncoder(clip_text_config_from_hf(hf_model.config))
    missing = {k: v for k, v in state.items() if k != "encoder.layers.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"missing keys \(1\).*encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_hf_clip_text_state_dict(ours, missing)
    extra = {**state, "text_projection.weight": torch.zeros(8, 32)}
    with pytest.raises(ValueError, match=r"unexpected keys \(1\).*text_projection\.weight"):
        load_hf_clip_text_state_dict(ours, extra)
    wrong = {**state, "final_layer_norm.weight": torch.ones(31)}
    with pytest.raises(ValueError, match=r"final_layer_norm\.weight: checkpoint \(31,\) vs model \(32,\)"):
        load_hf_clip_text_state_dict(ours, wrong)
    both = {**state, "text_model.final_layer_norm.weight": state["final_layer_norm.weight"]}
    with pytest.raises(ValueError, match="both with and without"):
        load_hf_clip_text_state_dict(ours, both)


def test_bad_inputs_raise_clear_errors(tokenizer, hf_model):
    ours = ours_from(hf_model)
    ids = tokenizer(["a red circle"])
    with pytest.raises(TypeError, match="integer tensor"):
        ours(ids.float())
    with pytest.raises(TypeError, match=r"ids\[None\]"):
        ours(ids[0])
    with pytest.raises(ValueError, match="exceeds"):
        ours(torch.cat([ids, ids], dim=1))
    with pytest.raises(ValueError, match="must lie in"):
        ours(ids + len(tokenizer))
    with pytest.raises(ValueError, match="no end token"):
        ours(torch.zeros_like(ids))
    with pytest.raises(ValueError, match="divisible"):
        CLIPTextConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="relu")


# ------------------------------------------------------------------------------------- contrastive
def test_clip_loss_values():
    b = 8
    assert clip_loss(torch.zeros(b, b)).item() == pytest.approx(math.log(b))  # identical embeddings
    emb = torch.nn.functional.normalize(torch.randn(1, 16), dim=-1).expand(b, 16)
    assert clip_loss(14.3 * emb @ emb.T).item() == pytest.approx(math.log(b), abs=1e-5)
    assert clip_loss(100 * torch.eye(b)).item() < 1e-6  # perfectly matched pairs
    logits = torch.randn(b, b) * 3
    torch.testing.assert_close(clip_loss(logits), image_text_contrastive_loss(logits))
    asym = torch.randn(b, b)  # both directions count: differs from one-sided cross-entropy
    assert not torch.isclose(clip_loss(asym), nn.functional.cross_entropy(asym, torch.arange(b)))
    with pytest.raises(ValueError, match="square"):
        clip_loss(torch.zeros(3, 4))


def test_image_encoder_and_contrastive_model_shapes(tokenizer):
    text = CLIPTextEncoder(tiny_config(tokenizer))
    image = ImageEncoder(ImageEncoderConfig(widths=(8, 16, 32), out_dim=24))
    images = torch.randn(5, 3, 32, 32)
    assert image(images).shape == (5, 24)
    model = ContrastiveModel(text, image, embed_dim=12)
    assert model.scale().item() == pytest.approx(1 / 0.07)
    out = model(images, tokenizer(["a red circle"] * 3))
    assert out.logits_per_image.shape == (5, 3) and torch.equal(out.logits_per_text, out.logits_per_image.T)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.logits_per_image, model.scale() * out.image_embeds @ out.text_embeds.T)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.scale().item() == pytest.approx(100.0)  # clamped like CLIP
    with pytest.raises(ValueError, match="images must be"):
        image(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        ImageEncoderConfig(widths=(12,), groups=8)
    with pytest.raises(TypeError, match="image_dim"):
        ContrastiveModel(text, nn.Conv2d(3, 4, 3))


class _ColourText(nn.Module):
    """A hand-made text encoder: pooled = which colour word occurs in the prompt (one-hot)."""

    def __init__(self, colour_ids):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=len(colour_ids))
        self.colour_ids = colour_ids
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids, attention_mask=None):
        return torch.stack([(ids == i).any(dim=1) for i in self.colour_ids], dim=1).float() + self.dummy


class _MeanColour(nn.Module):
    """A hand-made image encoder: the mean RGB colour."""

    config = SimpleNamespace(out_dim=3)

    def forward(self, images):
        return images.mean(dim=(2, 3))


def test_zero_shot_classify_on_a_constructed_case(tokenizer):
    colour_ids = [tokenizer.encode(c, add_special_tokens=False) for c in COLOURS]
    assert all(len(i) == 1 for i in colour_ids)  # each colour word is one token
    model = ContrastiveModel(_ColourText([i[0] for i in colour_ids]), _MeanColour(), embed_dim=3)
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(3))
        model.visual_projection.weight.copy_(torch.eye(3))
    truth = torch.tensor([2, 0, 1, 1, 0, 2, 0])
    images = torch.eye(3)[truth][:, :, None, None].expand(-1, -1, 8, 8) + 0.05 * torch.rand(7, 3, 8, 8)
    prompts = ["a photo of a red image", "a photo of a green image", "a photo of a blue image"]
    model.train()
    preds, probs = zero_shot_classify(model, tokenizer, images, prompts, batch_size=3, return_probs=True)
    assert torch.equal(preds, truth)
    assert model.training  # the mode is restored
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(7))
    assert (probs.max(dim=1).values > 0.9).all()
    # prompt ensembles per class; order of classes decides the index
    ensembles = [["blue", "a blue thing"], ["red", "something red"], ["green"]]
    preds = zero_shot_classify(model, tokenizer, images, ensembles)
    assert torch.equal(preds, torch.tensor([1, 2, 0])[truth])


def test_short_contrastive_training_learns_colours(tokenizer):
    seed_everything(0)
    text = CLIPTextEncoder(tiny_config(tokenizer))
    image = ImageEncoder(ImageEncoderConfig(widths=(8, 16), out_dim=16))
    model = ContrastiveModel(text, image, embed_dim=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rgb = torch.eye(3)
    losses = []
    for _ in range(60):
        labels = torch.randperm(3)  # a batch of the 3 colours, shuffled
        images = rgb[labels][:, :, None, None].expand(-1, -1, 8, 8) + 0.1 * torch.randn(3, 3, 8, 8)
        ids = tokenizer([f"a {COLOURS[i]} image" for i in labels])
        loss = clip_loss(model(images, ids).logits_per_image)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[:5]) / 5 > 0.8 and sum(losses[-5:]) / 5 < 0.2  # log(3) = 1.10 at chance
    truth = torch.arange(3).repeat(4)
    images = rgb[truth][:, :, None, None].expand(-1, -1, 8, 8) + 0.1 * torch.randn(12, 3, 8, 8)
    assert torch.equal(zero_shot_classify(model, tokenizer, images, [f"a {c} image" for c in COLOURS]), truth)


def test_retrieval_recall_at_k():
    n = 6
    emb = torch.eye(n)
    r = retrieval_recall_at_k(emb, emb, ks=(1, 5))
    assert r == {"image_to_text@1": 1.0, "text_to_image@1": 1.0,
                 "image_to_text@5": 1.0, "text_to_image@5": 1.0}
    shifted = emb.roll(1, dims=0)  # text i is the embedding of image i-1: every top-1 is wrong
    r = retrieval_recall_at_k(emb, shifted, ks=(1, n))
    assert r["image_to_text@1"] == 0.0 and r["text_to_image@1"] == 0.0 and r[f"image_to_text@{n}"] == 1.0
    # two pairs share a caption (same text embedding): without groups one of them must miss
    texts = emb.clone()
    texts[1] = texts[0]
    images = emb.clone()
    images[1] = images[0]
    assert retrieval_recall_at_k(images, texts, ks=(1,))["image_to_text@1"] == pytest.approx(5 / 6)
    groups = ["a", "a", "b", "c", "d", "e"]
    assert retrieval_recall_at_k(images, texts, ks=(1,), groups=groups)["image_to_text@1"] == 1.0
    with pytest.raises(ValueError, match="pairs"):
        retrieval_recall_at_k(emb, emb[:3])
