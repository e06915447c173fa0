"""CLIP: its text encoder, a small image encoder and contrastive training pieces.

Defined in notebook 04_clip_text_embeddings.

The parts live in three modules, and every public name is importable from here:

- ``clip_text``: the causal text transformer Stable Diffusion conditions on (``CLIPTextConfig``,
  ``CLIPTextEncoder``, ``TextEncoderOutput``, ``causal_mask``, ...), with transformers' parameter names;
- ``clip_image``: the small convolutional image tower (``ImageEncoderConfig``, ``ImageEncoder``);
- ``clip_contrastive``: the pair of towers in one space (``ContrastiveModel``), CLIP's loss
  (``clip_loss``, ``matching_targets``), ``zero_shot_classify`` and ``retrieval_recall_at_k``.

Loading transformers' weights (``load_hf_clip_text_state_dict``) and configs
(``clip_text_config_from_hf``) maps public names, so it lives with the other conversions in
``course_lib.pipeline.convert.clip``.
"""

from __future__ import annotations

from course_lib.models.clip_contrastive import (
    ContrastiveModel,
    ContrastiveOutput,
    clip_loss,
    matching_targets,
    retrieval_recall_at_k,
    zero_shot_classify,
)
from course_lib.models.clip_image import ImageEncoder, ImageEncoderConfig
from course_lib.models.clip_text import (
    MLP,
    CLIPTextConfig,
    CLIPTextEncoder,
    EncoderLayer,
    SelfAttention,
    TextEmbeddings,
    TextEncoderOutput,
    TransformerStack,
    causal_mask,
    quick_gelu,
)

__all__ = ["CLIPTextConfig", "TextEncoderOutput", "quick_gelu", "TextEmbeddings", "SelfAttention", "MLP",
           "EncoderLayer", "TransformerStack", "causal_mask", "CLIPTextEncoder", "ImageEncoderConfig",
           "ImageEncoder", "ContrastiveOutput", "ContrastiveModel", "matching_targets", "clip_loss",
           "zero_shot_classify", "retrieval_recall_at_k"]
