"""The training data of a LoRA that teaches ShapeWorld's text-to-image model one colour-shape pair.

Defined in notebook 13_beyond_text_to_image.

``concept_data`` encodes ``concept_scenes`` (ShapeWorld scenes whose captions name the pair, from
``course_lib.worlds.shapeworld``) with the frozen autoencoder, in the form
``LatentCaptionData.batches`` turns into training batches (notebook 09). The adapters are
``course_lib.models.lora``; measuring what one learned is ``course_lib.evaluate.concept_eval``
(``concept_adherence``, re-exported here with ``concept_scenes`` for ``scripts/train_lora.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from course_lib.evaluate.concept_eval import ConceptAdherence, concept_adherence
from course_lib.worlds.shapeworld import concept_scenes

if TYPE_CHECKING:
    from course_lib.models.vae import AutoencoderKL
    from course_lib.train.text_to_image import LatentCaptionData

__all__ = ["concept_scenes", "concept_data", "ConceptAdherence", "concept_adherence"]


def concept_data(vae: AutoencoderKL, color: str, shape: str, n: int, seed: int) -> LatentCaptionData:
    """``concept_scenes`` encoded by the frozen autoencoder: the training data of a LoRA, in the
    form ``LatentCaptionData.batches`` turns into training batches (notebook 09).
    Supports notebook 13_beyond_text_to_image.
    """
    from course_lib.train.autoencoder import encode_latents
    from course_lib.train.text_to_image import LatentCaptionData

    images, captions = concept_scenes(color, shape, n, seed)
    with torch.no_grad():
        latents = encode_latents(vae, images)                      # (n, 3, 32, 32) -> (n, 4, 8, 8)
    return LatentCaptionData(latents, captions)
