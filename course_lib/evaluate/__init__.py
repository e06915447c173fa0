"""The evaluate layer: judging images and models on the course's worlds.

Prompt adherence in GenEval's categories (``adherence``), distances between sets of features
(``metrics``: Frechet distance, KID, precision and recall), the judges' networks (``classifiers``),
and the measurements of a text-to-image model (``prompt_eval``) or of one taught concept
(``concept_eval``), which take any duck-typed pipeline. It imports only ``course_lib.worlds`` and
``course_lib.core``, never a network, sampler or pipeline of the course. Only the light modules are
re-exported here; import ``evaluate_prompts`` from ``course_lib.evaluate.prompt_eval``.
"""

from course_lib.evaluate.adherence import AdherenceReport, detect_objects, score_adherence
from course_lib.evaluate.metrics import compare_sets, frechet_distance, kernel_distance, precision_recall

__all__ = ["AdherenceReport", "detect_objects", "score_adherence", "compare_sets", "frechet_distance",
           "kernel_distance", "precision_recall"]
