"""The shipped CLIP (data/tokenizer/ + data/clip_shapeworld.*) and the contrastive training pieces.

- the shipped tokenizer files give the same ids in transformers' CLIPTokenizer;
- the shipped text encoder, loaded into transformers' CLIPTextModel, gives the same outputs (atol 1e-5);
- the shipped model still measures what its checkpoint says, and reads colours zero-shot;
- duplicate-aware and hard-negative losses, and the claim that padding to the longest prompt
  trains exactly like padding to 77.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig as HFTextConfig
from transformers import CLIPTextModel, CLIPTokenizer

from course_lib.core.paths import data_dir
from course_lib.models.clip import clip_loss, matching_targets
from course_lib.models.tokenizer import PromptTruncatedWarning
from course_lib.train.clip import (
    ClipTrainingConfig,
    build_clip_model,
    caption_key,
    clip_model_config,
    encode_images,
    encode_texts,
    evaluate_clip,
    hard_negative_captions,
    init_clip_weights,
    load_shipped_clip,
    shipped_metrics,
    train_contrastive,
)
from course_lib.worlds import shapeworld as sw

PROMPTS = [
    "a small red circle in the top left",
    "a blue triangle to the right of a white cross",
    "three purple crosses",
    "A  RED circle,above a  blue square!!",
    "Собака, которая ест сосиску на пляже в закатное время",
    "a red circle above a blue square " * 12,
    "",
]


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_clip()


def test_shipped_tokenizer_equals_transformers(shipped):
    tok, _ = shipped
    hf = CLIPTokenizer.from_pretrained(str(data_dir() / "tokenizer"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ours = tok(PROMPTS)
    ref = hf(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    assert ours.shape == (len(PROMPTS), 77)
    assert torch.equal(ours, ref)
    for word in ["circle", "triangle", "crosses", "purple", "above"]:  # grammar words are single tokens
        assert len(tok.encode(word, add_special_tokens=False)) == 1


def test_shipped_text_encoder_equals_transformers(shipped):
    tok, model = shipped
    enc = model.text_encoder
    c = enc.config
    hf_config = HFTextConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                             intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
                             num_attention_heads=c.num_attention_heads,
                             max_position_embeddings=c.max_position_embeddings, hidden_act=c.hidden_act,
                             layer_norm_eps=c.layer_norm_eps, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    hf = CLIPTextModel(hf_config).eval()
    hf.load_state_dict(enc.state_dict(), strict=True)  # identical parameter names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ids = tok(PROMPTS)
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        out = enc(ids, output_hidden_states=True)
    assert out.last_hidden_state.shape == (len(PROMPTS), 77, c.hidden_size)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, ref.pooler_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.text_context(ids, layer=-2), enc.final_layer_norm(ref.hidden_states[-2]),
                               atol=1e-5, rtol=1e-5)


def test_shipped_model_reproduces_its_stored_metrics(shipped):
    tok, model = shipped
    stored = shipped_metrics()
    now = evaluate_clip(model, tok, "train")
    assert set(now) == set(stored["seen"])
    for key, value in now.items():  # 500 images per measure: 0.01 is 5 images (thread counts may differ)
        assert value == pytest.approx(stored["seen"][key], abs=0.01), key
    assert stored["loss"][-1] < 0.5 * math.log(stored["train_config"]["batch_size"])


def test_shipped_model_reads_colours_zero_shot(shipped):
    tok, model = shipped
    batch = sw.ShapeWorld().sample(300, seed=777, split="train", kinds=("single",))  # fresh seed
    prompts = [f"a {size} {colour} {shape} {sw.LOCATION_PHRASES[loc]}" for colour in sw.COLORS
               for shape in sw.SHAPES for size in sw.SIZES for loc in sw.LOCATIONS]
    probs = (model.scale() * encode_images(model, batch.tensors()) @ encode_texts(model, tok, prompts).T).softmax(1)
    colour = probs.view(300, len(sw.COLORS), -1).sum(-1).argmax(1)
    assert (colour.numpy() == batch.colors[:, 0]).mean() >= 0.97


# ------------------------------------------------------------------------------------- the losses
def test_matching_targets_and_duplicate_aware_loss():
    caps = ["two red squares", "a red circle", "two red squares"]
    t = matching_targets(caps)
    assert t.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    logits = torch.randn(3, 3) * 4
    torch.testing.assert_close(clip_loss(logits, torch.eye(3, dtype=torch.bool)), clip_loss(logits))
    # rows 0 and 2 aim at texts 0 and 2 with probability 1/2 each
    row = -(0.5 * logits.log_softmax(1)[[0, 2]][:, [0, 2]]).sum(1)
    col = -(0.5 * logits.T.log_softmax(1)[[0, 2]][:, [0, 2]]).sum(1)
    expected = (torch.cat([row[:1], -logits.log_softmax(1)[1, 1:2], row[1:]]).mean()
                + torch.cat([col[:1], -logits.T.log_softmax(1)[1, 1:2], col[1:]]).mean()) / 2
    torch.testing.assert_close(clip_loss(logits, t), expected)
    # two identical captions with identical embeddings: each duplicate gets probability 1/2, which is
    # what its target asks, so the loss is the targets' own entropy (2/3 log 2), its minimum
    emb = F.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 0]]), dim=-1)
    assert clip_loss(100 * emb @ emb.T, t).item() == pytest.approx(2 / 3 * math.log(2), abs=1e-4)
    # Identical captions have identical embeddings: then the plain loss and the duplicate-aware one
    # agree in value and in every gradient (of the images and of the shared caption embeddings).
    shared = torch.randn(2, 8, requires_grad=True)
    images = torch.randn(3, 8, requires_grad=True)
    def grads(targets):
        texts = F.normalize(shared, dim=-1)[[0, 1, 0]]
        loss = clip_loss(10 * F.normalize(images, dim=-1) @ texts.T, targets)
        return (loss, *torch.autograd.grad(loss, [images, shared]))
    for plain, aware in zip(grads(None), grads(t), strict=True):
        torch.testing.assert_close(plain, aware)
    with pytest.raises(ValueError, match="shape"):
        clip_loss(logits, t[:, :2])


def test_caption_key_matches_equivalent_captions():
    assert caption_key("a blue square below a red circle") == "a red circle above a blue square"
    assert caption_key("a red circle to the right of a blue square") == "a blue square to the left of a red circle"
    assert caption_key("a red circle above a blue square") == "a red circle above a blue square"
    assert caption_key("A small  red circle in the top left") == "a small red circle in the top left"
    assert caption_key("not a caption") == "not a caption"
    keys = [caption_key(c) for c in ["a blue square below a red circle", "a red circle above a blue square",
                                     "a red circle below a blue square"]]
    assert matching_targets(keys).int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_hard_negatives_enter_only_the_image_to_text_direction():
    caps = ["a red circle above a blue square", "three white crosses"]
    negs = hard_negative_captions(caps)
    assert negs == ["a blue circle above a red square", "a red circle below a blue square"]
    texts = caps + negs
    t = matching_targets(caps, texts)
    assert t.shape == (2, 4) and t.tolist() == [[True, False, False, False], [False, True, False, False]]
    logits = torch.randn(2, 4)
    expected = (F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits[:, :2].T, torch.arange(2))) / 2
    torch.testing.assert_close(clip_loss(logits, t), expected)


def test_padding_to_longest_trains_exactly_like_padding_to_77(shipped):
    tok, _ = shipped
    torch.manual_seed(0)
    config = clip_model_config(tok, width=16, layers=2, heads=2, image_widths=(8, 8), embed_dim=8)
    batch = sw.ShapeWorld().sample(16, seed=3)
    grads = []
    for padding in ("max_length", "longest"):
        torch.manual_seed(0)
        model = init_clip_weights(build_clip_model(**config))
        texts = batch.captions + hard_negative_captions(batch.captions)
        logits = model(batch.tensors(), tok(texts, padding=padding)).logits_per_image
        loss = clip_loss(logits, matching_targets(batch.captions, texts))
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-5)
    for name, g in grads[0][1].items():  # equal up to float summation order (gradients up to ~10)
        torch.testing.assert_close(g, grads[1][1][name], atol=1e-5, rtol=1e-4)
    assert grads[0][1]["text_encoder.embeddings.position_embedding.weight"][20:].abs().max() == 0


def test_short_training_lowers_the_loss(shipped):
    tok, _ = shipped
    torch.manual_seed(0)
    model = init_clip_weights(build_clip_model(**clip_model_config(tok, width=16, layers=1, heads=2,
                                                                   image_widths=(8, 16), embed_dim=16)))
    history = train_contrastive(model, tok, ClipTrainingConfig(steps=40, batch_size=32, lr=3e-3, warmup=5))
    assert len(history.loss) == 40 and not model.training
    assert sum(history.loss[-5:]) / 5 < sum(history.loss[:5]) / 5 - 0.3
    with pytest.raises(ValueError, match="batch_size"):
        ClipTrainingConfig(batch_size=1)
