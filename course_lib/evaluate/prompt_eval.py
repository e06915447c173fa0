"""Measuring a text-to-image model on ShapeWorld. Defined in notebook 09_text_conditioning.

For ``n`` captions drawn from a split (``"train"``: combinations seen in training; ``"heldout"``:
each caption names a colour-shape pair the model never saw), the pipeline draws one image per
caption, and the judges of notebook 00 measure:

- prompt adherence in GenEval's categories (does each image obey its caption?);
- the Frechet distance, KID, precision and recall of the images against real ShapeWorld images of
  the same captions, on the attribute network's features, each beside the real-versus-real floor.
  Precision asks "do generated images look real?", recall "do they cover the real variety?".

The pipeline is duck-typed (``TextToImageModel``): anything with the course pipeline's
``settings(settings, **overrides)`` and ``__call__(prompts, settings, show_progress=...)``, such as
``course_lib.pipeline.text_to_image.TextToImagePipeline``; this module imports no pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from course_lib.evaluate.adherence import score_adherence
from course_lib.evaluate.classifiers import shapeworld_features
from course_lib.evaluate.metrics import compare_sets
from course_lib.worlds.shapeworld import ShapeWorld

__all__ = ["EVAL_SEED", "PromptEvaluation", "TextToImageModel", "evaluate_prompts"]

EVAL_SEED = 4242  # far from the training seeds (course_lib.train.text_to_image.TRAIN_SEED)


class TextToImageModel(Protocol):
    """What ``evaluate_prompts`` needs of a pipeline (the course's ``TextToImagePipeline`` has it).

    ``settings(settings, **overrides)`` returns the complete generation settings, a dataclass with at
    least ``seed`` and ``guidance_scale`` (the pipeline's defaults where ``settings`` is None);
    calling it with a list of prompts and such settings returns an object whose ``images`` are
    ``(N, 3, H, W)`` in [0, 1], image ``i`` from the noise of ``settings.seed + i``.
    """

    def settings(self, settings: Any = None, **overrides: Any) -> Any: ...

    def __call__(self, prompt: Any, settings: Any = None, *, show_progress: bool | None = None) -> Any: ...


@dataclass
class PromptEvaluation:
    """Adherence and distribution distances of generated images. Supports notebook 09_text_conditioning."""

    split: str
    guidance_scale: float
    adherence: dict[str, float]     # per GenEval category, plus "overall" and "exact"
    distances: dict[str, float]     # Frechet, KID, precision, recall and floors
    n: int
    images: torch.Tensor            # (n, 3, H, W) in [0, 1]
    captions: list[str]

    def as_row(self) -> dict[str, Any]:
        return {"split": self.split, "guidance": self.guidance_scale, "n": self.n, **self.adherence,
                **self.distances}


def evaluate_prompts(pipe: TextToImageModel, n: int = 200, split: str = "train",
                     settings: Any = None, seed: int = EVAL_SEED, batch_size: int = 64,
                     **overrides) -> PromptEvaluation:
    """Generate one image for each of ``n`` ShapeWorld captions of ``split`` and measure them.

    ``settings`` (the pipeline's ``GenerationSettings``) / ``overrides`` as for the pipeline (image ``i``
    uses seed ``settings.seed + i``); ``pipe``: see ``TextToImageModel``.
    Defined in notebook 09_text_conditioning.
    """
    if n < 8:
        raise ValueError(f"n must be at least 8 to measure distances between sets, got {n}")
    world = ShapeWorld()
    real = world.sample(n, seed=seed, split=split)
    floor = world.sample(n, seed=seed + 1, split=split)
    settings = pipe.settings(settings, **overrides)      # the pipeline's defaults, the overrides, checked
    chunks = []
    for start in range(0, n, batch_size):
        captions = real.captions[start:start + batch_size]
        out = pipe(captions, replace(settings, seed=settings.seed + start), show_progress=False)
        chunks.append(out.images)
    images = torch.cat(chunks)                                          # (n, 3, H, W) in [0, 1]
    report = score_adherence(images * 2 - 1, list(real.captions))
    feats = shapeworld_features(images * 2 - 1)
    dist = compare_sets(shapeworld_features(real.tensors()), feats, shapeworld_features(floor.tensors()),
                        subset_size=min(500, n))
    return PromptEvaluation(split, settings.guidance_scale, report.as_row(), dist.as_row(), n, images,
                            list(real.captions))
