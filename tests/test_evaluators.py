"""The judges: classifier quality, Frechet distance / KID / precision-recall, prompt adherence.

These tests are where the evaluators' own quality is shown in numbers (also printed in notebook 00).
"""

import numpy as np
import pytest
import torch

from course_lib.evaluate.adherence import SeenObject, check_caption, score_adherence
from course_lib.evaluate.classifiers import (
    digit_features,
    load_attribute_net,
    load_digit_classifier,
    shapeworld_features,
)
from course_lib.evaluate.metrics import compare_sets, frechet_distance, kernel_distance, precision_recall
from course_lib.worlds import shapeworld as sw
from course_lib.worlds.mnist import MNIST5k


def test_frechet_distance_of_known_gaussians():
    g = np.random.default_rng(0)
    a = g.normal(0, 1, (20000, 4))
    b = g.normal(0, 2, (20000, 4)) + np.array([1.0, 0, 0, 0])
    # exact: |mu|^2 + tr(I + 4I - 2*2I) = 1 + 4 * 1 = 5
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_and_precision_recall_tell_overlap_from_mismatch():
    g = np.random.default_rng(0)
    real, same, shifted = g.normal(0, 1, (1000, 8)), g.normal(0, 1, (1000, 8)), g.normal(3, 1, (1000, 8))
    assert abs(kernel_distance(real, same)[0]) < 0.02 < kernel_distance(real, shifted)[0]
    p_same, r_same = precision_recall(real, same)
    p_far, r_far = precision_recall(real, shifted)
    assert p_same > 0.8 and r_same > 0.8 and p_far < 0.1 and r_far < 0.1
    collapsed = real[:1].repeat(1000, 0) + 0.01 * g.normal(size=(1000, 8))  # one mode: precise, no recall
    p_col, r_col = precision_recall(real, collapsed)
    assert p_col > 0.9 and r_col < 0.05


def test_digit_classifier_is_accurate_on_held_back_digits():
    test = MNIST5k("test")
    with torch.no_grad():
        acc = (load_digit_classifier()(test.images).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.95, acc


def test_digit_features_separate_real_from_noise():
    train, test = MNIST5k("train"), MNIST5k("test")
    real_a = digit_features(train.images[:2000])
    real_b = digit_features(test.images)
    noise = digit_features(torch.rand(500, 1, 28, 28) * 2 - 1)
    floor = compare_sets(real_a, real_b, digit_features(train.images[2000:2500]))
    noisy = compare_sets(real_a, noise, real_b)
    assert noisy.frechet > 10 * max(floor.frechet, 1e-3)
    assert floor.precision > 0.7 and noisy.precision < 0.05


def test_attribute_net_reads_every_combination_including_held_out():
    batch = sw.ShapeWorld().sample(1000, seed=4321, split="all")
    shape_mask, color_mask = (torch.from_numpy(m).long() for m in batch.semantic_masks())
    with torch.no_grad():
        s, c = load_attribute_net()(batch.tensors())
    fg = shape_mask > 0
    assert (s.argmax(1)[fg] == shape_mask[fg]).float().mean() > 0.97
    assert (c.argmax(1)[fg] == color_mask[fg]).float().mean() > 0.97


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_adherence_is_near_one_for_true_captions_and_near_zero_for_shuffled(split):
    batch = sw.ShapeWorld().sample(1000, seed=99, split=split)
    true = score_adherence(batch.tensors(), batch.captions)
    assert true.overall > 0.97 and true.exact > 0.95, true.as_row()
    shuffled = list(np.random.default_rng(0).permutation(batch.captions))
    wrong = score_adherence(batch.tensors(), shuffled)
    assert wrong.overall < 0.15, wrong.as_row()


def test_adherence_is_robust_to_tint_and_noise():
    batch = sw.ShapeWorld().sample(500, seed=5)
    g = torch.Generator().manual_seed(0)
    x = batch.tensors() + 0.15 * torch.rand(500, 3, 1, 1, generator=g) + 0.08 * torch.randn(500, 3, 32, 32, generator=g)
    assert score_adherence(x.clamp(-1, 1), batch.captions).overall > 0.9


def test_caption_checks_follow_the_categories():
    red_circle = SeenObject("circle", "red", "small", 8, 8, 50)
    blue_square = SeenObject("square", "blue", "small", 8, 24, 50)
    spec = sw.parse_caption("a red circle above a blue square")
    assert check_caption(spec, [red_circle, blue_square]) == {
        "two_objects": True, "position": True, "color_binding": True, "exact": True}
    swapped = check_caption(sw.parse_caption("a blue circle above a red square"), [red_circle, blue_square])
    assert swapped["two_objects"] and swapped["position"] and not swapped["color_binding"]
    below = check_caption(sw.parse_caption("a red circle below a blue square"), [red_circle, blue_square])
    assert not below["position"]
    single = check_caption(sw.parse_caption("a small red circle in the top left"), [red_circle])
    assert single == {"single_object": True, "colors": True, "exact": True}
    assert check_caption(sw.parse_caption("two red circles"), [red_circle])["counting"] is False


def test_shapeworld_features_give_a_small_floor_and_see_held_out_shift():
    world = sw.ShapeWorld()
    a = shapeworld_features(world.sample(2000, seed=1).tensors())
    b = shapeworld_features(world.sample(500, seed=2).tensors())
    b2 = shapeworld_features(world.sample(500, seed=3).tensors())
    counts_only = shapeworld_features(world.sample(500, seed=4, kinds=("count",)).tensors())
    floor = frechet_distance(a, b)
    assert frechet_distance(a, b2) < 2 * floor + 1e-6 or frechet_distance(a, b2) < 1.0
    assert frechet_distance(a, counts_only) > 3 * floor
    with pytest.raises(ValueError, match="one caption per image"):
        score_adherence(world.sample(2, seed=0).tensors(), ["two red circles"])
