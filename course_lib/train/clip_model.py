"""The course's CLIP for ShapeWorld: its tokenizer, its sizes, its weights. Defined in notebook 04_clip_text_embeddings.

The networks live in ``course_lib.models.clip`` and know no data set. Here they meet ShapeWorld: the
tokenizer trained on ShapeWorld captions, the model's config and initialisation, which captions mean
the same (``caption_key``) and which are hard negatives, and the shipped tokenizer and weights made
by ``scripts/train_clip.py``. Training is ``course_lib.train.clip``, measuring ``course_lib.train.clip_eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib.core.checkpoints import load_checkpoint, load_weights
from course_lib.core.paths import data_dir
from course_lib.models.clip import CLIPTextConfig, CLIPTextEncoder, ContrastiveModel, ImageEncoder, ImageEncoderConfig
from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe
from course_lib.worlds import shapeworld as sw

__all__ = ["SHIPPED_CLIP", "TOKENIZER_FOLDER", "TRAIN_SEED_BASE", "EVAL_SEED", "train_shapeworld_tokenizer",
           "clip_model_config", "build_clip_model", "init_clip_weights", "caption_key", "hard_negative_captions",
           "load_shipped_tokenizer", "load_shipped_clip", "shipped_metrics"]

SHIPPED_CLIP = "clip_shapeworld"
TOKENIZER_FOLDER = "tokenizer"
# Training batches use seeds from TRAIN_SEED_BASE upward, evaluation batches seeds below it, so
# that no evaluation image was ever a training image.
TRAIN_SEED_BASE = 1_000_000
EVAL_SEED = 4242


# ----------------------------------------------------------------------------- tokenizer
def train_shapeworld_tokenizer(n_captions: int = 20000, seed: int = 0, vocab_size: int = 1024,
                               context_length: int = 77) -> CLIPStyleTokenizer:
    """A CLIP-style BPE tokenizer trained on ``n_captions`` ShapeWorld training captions.

    Merging stops early once every word of the grammar is a single token (no pair occurs twice
    any more), so the vocabulary is smaller than ``vocab_size``; any other text still tokenizes,
    byte by byte. Supports notebook 04_clip_text_embeddings.
    """
    captions = sw.ShapeWorld().sample(n_captions, seed=seed, split="train").captions
    vocab, merges = train_bpe(captions, vocab_size=vocab_size)
    return CLIPStyleTokenizer(vocab, merges, context_length=context_length)


# ----------------------------------------------------------------------------- the model
def clip_model_config(tokenizer: CLIPStyleTokenizer, width: int = 64, layers: int = 3, heads: int = 4,
                      image_widths: Sequence[int] = (16, 32, 64), embed_dim: int = 64) -> dict[str, Any]:
    """The JSON config of a small contrastive model for ``tokenizer``'s vocabulary.

    ``build_clip_model(**config)`` builds it, which is how ``load_checkpoint`` rebuilds the shipped
    one. Defined in notebook 04_clip_text_embeddings.
    """
    text = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=tokenizer.context_length,
                          hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=4 * width, eos_token_id=tokenizer.eos_token_id)
    image = ImageEncoderConfig(widths=tuple(image_widths), out_dim=image_widths[-1])
    return {"text": asdict(text), "image": {**asdict(image), "widths": list(image.widths)},
            "embed_dim": embed_dim}


def build_clip_model(text: dict[str, Any], image: dict[str, Any], embed_dim: int) -> ContrastiveModel:
    """A ``ContrastiveModel`` (CLIPTextEncoder + ImageEncoder + projections) from a JSON config.

    Defined in notebook 04_clip_text_embeddings.
    """
    return ContrastiveModel(CLIPTextEncoder(CLIPTextConfig(**text)),
                            ImageEncoder(ImageEncoderConfig(**{**image, "widths": tuple(image["widths"])})),
                            embed_dim=embed_dim)


def init_clip_weights(model: ContrastiveModel, std: float = 0.02) -> ContrastiveModel:
    """CLIP-like initialisation of the text tower and projections; returns ``model``.

    Token embeddings N(0, 0.02), position embeddings N(0, 0.01), linear layers of the text tower
    N(0, 0.02) with zero biases, projections N(0, 1/sqrt(in_features)) (as CLIP). PyTorch's default
    for embeddings, N(0, 1), would make the embeddings dwarf what the blocks add.
    Defined in notebook 04_clip_text_embeddings.
    """
    text = model.text_encoder
    with torch.no_grad():
        nn.init.normal_(text.embeddings.token_embedding.weight, std=std)
        nn.init.normal_(text.embeddings.position_embedding.weight, std=std / 2)
        for module in text.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
        for proj in (model.text_projection, model.visual_projection):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
    return model


# ----------------------------------------------------------------------------- captions
_OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of",
             "to the right of": "to the left of"}


def caption_key(caption: str) -> str:
    """The caption's meaning, as one canonical caption: equivalent captions get the same key.

    "a blue square below a red circle" says exactly what "a red circle above a blue square" says;
    both get the key of the form with "above" or "to the left of". Text outside ShapeWorld's
    grammar is its own key. Used to decide which texts of a batch match which images.
    Defined in notebook 04_clip_text_embeddings.
    """
    try:
        spec = sw.parse_caption(caption)
    except ValueError:
        return caption
    if spec.kind == "pair" and spec.relation in ("below", "to the right of"):
        (ca, sa), (cb, sb) = spec.objects
        return sw.pair_caption(cb, sb, _OPPOSITE[spec.relation], ca, sa)
    return " ".join(caption.lower().split())


def hard_negative_captions(captions: Sequence[str]) -> list[str]:
    """Wrong captions that differ from true ones only in binding or relation (unique, sorted).

    For each two-object caption "a red circle above a blue square": the colours swapped ("a blue
    circle above a red square", when the colours differ) and the relation reversed ("a red circle
    below a blue square"). In-batch negatives rarely differ from the truth this little, so
    without them a contrastive model can pass by counting words (a "bag of words"; Yuksekgonul
    et al. 2023 add such negatives to CLIP's batches in NegCLIP). Defined in notebook
    04_clip_text_embeddings.
    """
    negatives = set()
    for caption in captions:
        spec = sw.parse_caption(caption)
        if spec.kind != "pair":
            continue
        (ca, sa), (cb, sb) = spec.objects
        if ca != cb:
            negatives.add(sw.pair_caption(cb, sa, spec.relation, ca, sb))
        negatives.add(sw.pair_caption(ca, sa, _OPPOSITE[spec.relation], cb, sb))
    return sorted(negatives)


# ----------------------------------------------------------------------------- shipped weights
def load_shipped_tokenizer(folder: str | Path | None = None) -> CLIPStyleTokenizer:
    """The tokenizer shipped in ``data/tokenizer/`` (made by ``scripts/train_clip.py``).

    Defined in notebook 04_clip_text_embeddings.
    """
    folder = Path(folder) if folder is not None else data_dir() / TOKENIZER_FOLDER
    return CLIPStyleTokenizer.from_folder(folder)


def load_shipped_clip(name: str = SHIPPED_CLIP) -> tuple[CLIPStyleTokenizer, ContrastiveModel]:
    """The shipped tokenizer and contrastive model (eval mode, CPU), checksum-verified.

    ``model.text_encoder`` is the CLIP text encoder later notebooks condition on.
    Defined in notebook 04_clip_text_embeddings.
    """
    tokenizer = load_shipped_tokenizer()
    model = load_checkpoint(name, build_clip_model)
    if model.text_encoder.config.vocab_size != len(tokenizer):
        raise ValueError(f"the shipped model expects {model.text_encoder.config.vocab_size} tokens but "
                         f"data/{TOKENIZER_FOLDER}/ holds {len(tokenizer)}: they come from different runs of "
                         "scripts/train_clip.py; run it again to make both")
    return tokenizer, model


def shipped_metrics(name: str = SHIPPED_CLIP) -> dict[str, Any]:
    """The metrics (and loss curve) stored with the shipped checkpoint. Defined in notebook 04_clip_text_embeddings."""
    return load_weights(name)[1]["metrics"]
