"""Measuring one colour-shape concept: how often a pipeline draws it when its captions name it.

Defined in notebook 13_beyond_text_to_image.

``concept_adherence(pipe, "green", "circle")`` draws one image for each of ``n`` captions naming the
pair (``worlds.shapeworld.concept_scenes``) and judges them as notebook 00 does: the share of images
in which the attribute network sees an object of that colour and shape, and the adherence report.
``pipe`` is any callable that takes a list of captions, ``seed=``, ``show_progress=`` and generation
settings and returns an object with ``.images`` (N, 3, H, W) in [0, 1], such as the course's
``TextToImagePipeline`` (notebook 13 measures its LoRA with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from course_lib.evaluate.adherence import AdherenceReport, detect_objects, score_adherence
from course_lib.evaluate.prompt_eval import EVAL_SEED
from course_lib.worlds.shapeworld import concept_scenes

__all__ = ["ConceptAdherence", "concept_adherence"]


@dataclass
class ConceptAdherence:
    """How well images of captions naming one colour-shape pair obey them.

    ``drawn``: share of images in which the judge sees an object of that colour and shape;
    ``report``: the adherence report of notebook 00 (per category, overall, exact).
    Supports notebook 13_beyond_text_to_image.
    """

    color: str
    shape: str
    n: int
    drawn: float
    report: AdherenceReport
    images: torch.Tensor            # (n, 3, H, W) in [0, 1]
    captions: list[str]

    def as_row(self) -> dict[str, Any]:
        """One table row: the concept, the caption count, ``drawn`` and the adherence report's numbers."""
        return {"concept": f"{self.color} {self.shape}", "n": self.n, "drawn": round(self.drawn, 3),
                **self.report.as_row()}


def concept_adherence(pipe: Any, color: str, shape: str, n: int = 192, seed: int | None = None,
                      batch_size: int = 64, **settings: Any) -> ConceptAdherence:
    """Generate one image for each of ``n`` captions naming ``color`` ``shape`` and judge them.

    ``seed``: of the captions (default: prompt_eval.EVAL_SEED, far from the training scenes);
    image ``i`` starts from the noise of ``settings["seed"] + i``; ``settings``: the pipeline's
    (``guidance_scale=4``, ``steps=20``...). Defined in notebook 13_beyond_text_to_image.
    """
    seed = EVAL_SEED if seed is None else seed
    _, captions = concept_scenes(color, shape, n, seed)
    first = int(settings.pop("seed", 0))
    chunks = [pipe(captions[s:s + batch_size], seed=first + s, show_progress=False, **settings).images
              for s in range(0, n, batch_size)]
    images = torch.cat(chunks)                                          # (n, 3, H, W) in [0, 1]
    seen = detect_objects(images * 2 - 1)
    drawn = sum(any(o.color == color and o.shape == shape for o in objs) for objs in seen) / n
    return ConceptAdherence(color, shape, n, drawn, score_adherence(images * 2 - 1, captions), images, captions)
