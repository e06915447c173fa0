"""CLIP's contrastive model, its loss, zero-shot classification and retrieval.

Defined in notebook 04_clip_text_embeddings.

``ContrastiveModel`` joins a text encoder and an image encoder through linear projections into one
space of unit vectors; ``clip_loss`` is CLIP's symmetric InfoNCE over a batch of pairs (with
``matching_targets`` for repeated captions); ``zero_shot_classify`` and ``retrieval_recall_at_k``
measure what a trained model learned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.models.clip_text import TextEncoderOutput

__all__ = ["ContrastiveOutput", "ContrastiveModel", "matching_targets", "clip_loss", "zero_shot_classify",
           "retrieval_recall_at_k"]


@dataclass
class ContrastiveOutput:
    """What ``ContrastiveModel`` returns. Supports notebook 04_clip_text_embeddings.

    ``logits_per_image`` (N_images, N_texts) = scale * cosine similarity; ``logits_per_text`` is
    its transpose; the embeddings are L2-normalised (N, embed_dim).
    """

    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor


def _feature_dim(module: nn.Module, explicit: int | None, names: tuple[str, ...], what: str) -> int:
    if explicit is not None:
        return explicit
    config = getattr(module, "config", None)
    for name in names:
        if config is not None and isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise TypeError(f"cannot tell the {what} encoder's output size from its config; pass {what}_dim=...")


class ContrastiveModel(nn.Module):
    """CLIP-style pair of encoders with linear projections into a shared space.

    Texts are embedded by the text encoder's pooled output, images by the image encoder; both are
    projected (no bias, as CLIP) to ``embed_dim`` and L2-normalised. Logits are cosine similarity
    times a learnable temperature ``exp(logit_scale)``, initialised at 1/0.07 and clamped at 100
    as in CLIP. Supports notebook 04_clip_text_embeddings.
    """

    def __init__(self, text_encoder: nn.Module, image_encoder: nn.Module, embed_dim: int = 64,
                 text_dim: int | None = None, image_dim: int | None = None,
                 logit_scale_init: float = math.log(1 / 0.07), max_logit_scale: float = 100.0):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        text_dim = _feature_dim(text_encoder, text_dim, ("hidden_size",), "text")
        image_dim = _feature_dim(image_encoder, image_dim, ("out_dim", "hidden_size"), "image")
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=False)
        self.visual_projection = nn.Linear(image_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.max_logit_scale = max_logit_scale

    def scale(self) -> torch.Tensor:
        """The temperature ``exp(logit_scale)``, clamped at ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def encode_text(self, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, embed_dim) unit vectors."""
        out = self.text_encoder(input_ids, attention_mask=attention_mask)
        pooled = out.pooled if isinstance(out, TextEncoderOutput) else out
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, embed_dim) unit vectors."""
        return F.normalize(self.visual_projection(self.image_encoder(images)), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> ContrastiveOutput:
        image_embeds = self.encode_image(images)
        text_embeds = self.encode_text(input_ids, attention_mask)
        logits_per_image = self.scale() * image_embeds @ text_embeds.T  # (N_img, E) @ (E, N_txt)
        return ContrastiveOutput(logits_per_image, logits_per_image.T, image_embeds, text_embeds)


def matching_targets(keys: Sequence, text_keys: Sequence | None = None) -> torch.Tensor:
    """(B, T) bool matrix, True where image i and text j have the same key (for example the caption).

    In a batch of image-caption pairs whose captions repeat, image i matches *every* text with its
    caption, not only text i: pass this matrix to ``clip_loss(..., targets=...)`` so that such
    duplicates are positives rather than false negatives. ``text_keys`` defaults to ``keys``
    (B = T); give it to add texts without an image of their own (hard negatives).
    Defined in notebook 04_clip_text_embeddings.
    """
    text_keys = keys if text_keys is None else text_keys
    codes = {k: i for i, k in enumerate(dict.fromkeys([*keys, *text_keys]))}
    rows = torch.tensor([codes[k] for k in keys])
    cols = torch.tensor([codes[k] for k in text_keys])
    return rows[:, None] == cols[None, :]  # (B,), (T,) -> (B, T)


def clip_loss(logits_per_image: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss for a batch of matching pairs (pair i = row i, column i).

    The mean of cross-entropy over rows (each image picks its text) and over columns (each text
    picks its image). With uninformative (all equal) logits it is ``log(B)``.

    ``targets`` (optional, bool (B, T), from ``matching_targets``) says which texts match which
    images; each row's (and column's) target is spread uniformly over its matches, so repeated
    captions are not false negatives. It may have extra columns, texts that match no image (hard
    negatives such as a caption with its colours swapped): they enter the image-to-text softmax
    only. ``None`` means the identity, CLIP's own case. Defined in notebook 04_clip_text_embeddings.
    """
    if targets is None:
        if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
            raise ValueError(f"logits_per_image must be square (B, B) for B matching pairs, got "
                             f"{tuple(logits_per_image.shape)}")
        targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2
    if targets.shape != logits_per_image.shape or logits_per_image.dim() != 2:
        raise ValueError(f"targets must have the logits' shape {tuple(logits_per_image.shape)}, got "
                         f"{tuple(targets.shape)}; build it with matching_targets(captions)")
    t = targets.to(device=logits_per_image.device, dtype=logits_per_image.dtype)
    if not bool((t.sum(dim=1) > 0).all()):
        raise ValueError("every image (row of targets) needs at least one matching text")
    per_image = t / t.sum(dim=1, keepdim=True)  # each row: a distribution over the matching texts
    matched = t.sum(dim=0) > 0  # texts with an image; the others are negatives only
    per_text = t.T[matched] / t.T[matched].sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits_per_image, per_image)
            + F.cross_entropy(logits_per_image.T[matched], per_text)) / 2


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def zero_shot_classify(model: ContrastiveModel, tokenizer, images: torch.Tensor,
                       class_prompts: Sequence[str] | Sequence[Sequence[str]], batch_size: int = 256,
                       return_probs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Classify images by the class prompt whose text embedding is most similar (CLIP's zero-shot).

    ``class_prompts`` holds one prompt per class (``["a red circle", "a blue square"]``) or a list
    of prompts per class, whose unit embeddings are averaged and renormalised (CLIP's prompt
    ensembling). Returns the predicted class index per image, (N,), and with
    ``return_probs=True`` also the softmax over classes, (N, K). Defined in notebook
    04_clip_text_embeddings.
    """
    if isinstance(class_prompts, str) or not class_prompts:
        raise TypeError("class_prompts must be a non-empty list: one prompt (or one list of prompts) "
                        "per class")
    groups = [[p] if isinstance(p, str) else list(p) for p in class_prompts]
    if any(not g for g in groups):
        raise ValueError("every class needs at least one prompt")
    was_training = model.training
    model.eval()
    try:
        device = _model_device(model)
        class_embeds = []
        for prompts in groups:
            ids = tokenizer(prompts).to(device)
            class_embeds.append(F.normalize(model.encode_text(ids).mean(dim=0), dim=-1))
        text = torch.stack(class_embeds)  # (K, E)
        logits = torch.cat([model.scale() * model.encode_image(images[i:i + batch_size].to(device)) @ text.T
                            for i in range(0, len(images), batch_size)])  # (N, K)
    finally:
        model.train(was_training)
    preds = logits.argmax(dim=-1)
    return (preds, logits.softmax(dim=-1)) if return_probs else preds


@torch.no_grad()
def retrieval_recall_at_k(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                          ks: Sequence[int] = (1, 5, 10), groups: Sequence | None = None) -> dict[str, float]:
    """Recall@k for image->text and text->image retrieval over N matching pairs (row i with row i).

    A query counts as found when a correct item is among the k most cosine-similar ones. With
    ``groups`` (one hashable key per pair, e.g. the caption), every item with the query's key is
    correct, so duplicate captions are not counted as misses. Returns
    ``{"image_to_text@1": ..., "text_to_image@1": ..., ...}``. Defined in notebook
    04_clip_text_embeddings.
    """
    if image_embeds.dim() != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image_embeds and text_embeds must both be (N, E) for N pairs, got "
                         f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    n = image_embeds.shape[0]
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} keys for {n} pairs; give one key per pair")
    sim = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T  # (N, N)
    if groups is None:
        correct = torch.eye(n, dtype=torch.bool, device=sim.device)
    else:
        codes = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        keys = torch.tensor([codes[g] for g in groups], device=sim.device)
        correct = keys[:, None] == keys[None, :]
    result: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(k, n)
        for name, s, c in (("image_to_text", sim, correct), ("text_to_image", sim.T, correct.T)):
            top = s.topk(kk, dim=-1).indices  # (N, k)
            result[f"{name}@{k}"] = c.gather(1, top).any(dim=-1).float().mean().item()
    return result
