"""The worlds layer: the data the course learns from, generated or shipped, with everything known about it.

ShapeWorld's captioned scenes (``shapeworld``; its vocabulary and grammar in ``shapeworld_scenes``, its
rendering in ``shapeworld_render``), the 5,000 MNIST digits (``mnist``) and the 2-D Gaussian mixtures
of notebook 01 (``toy2d``). It imports only ``course_lib.core``: no network, no sampler, no trainer.
"""

from course_lib.worlds.mnist import MNIST5k
from course_lib.worlds.shapeworld import ShapeWorld, ShapeWorldBatch, caption_words, is_held_out, parse_caption
from course_lib.worlds.toy2d import grid_of_gaussians, make_mixture, ring_of_gaussians, score_modes

__all__ = ["MNIST5k", "ShapeWorld", "ShapeWorldBatch", "caption_words", "is_held_out", "parse_caption",
           "grid_of_gaussians", "make_mixture", "ring_of_gaussians", "score_modes"]
