"""The course's own text-to-image model, ready to sample. Defined in notebook 10_full_sampler.

``load_shipped_pipeline()`` builds the ShapeWorld model of notebooks 09-10 from
``configs/shapeworld-inference.yaml`` (``config.SHIPPED_CONFIG``) with the shipped weights, their
checksums verified. It lives apart from ``text_to_image`` (the pipeline class) and ``config`` (which
builds pipelines from configs, so it imports the class): the class does not import what builds it.
"""

from __future__ import annotations

import torch

from course_lib.pipeline.config import SHIPPED_CONFIG, build_from_config
from course_lib.pipeline.text_to_image import TextToImagePipeline

__all__ = ["load_shipped_pipeline"]


def load_shipped_pipeline(use_bf16: bool = False, device: str | torch.device = "cpu") -> TextToImagePipeline:
    """The course's ShapeWorld text-to-image model, built from ``configs/shapeworld-inference.yaml``
    with the shipped weights (checksums verified). Defined in notebook 10_full_sampler."""
    return build_from_config(SHIPPED_CONFIG, use_bf16=use_bf16, device=device)
