"""The data worlds: toy mixtures, MNIST-5k and ShapeWorld (notebook 00)."""

import time

import numpy as np
import pytest
import torch

from course_lib.worlds import shapeworld as sw
from course_lib.worlds.mnist import MNIST5k
from course_lib.worlds.toy2d import grid_of_gaussians, make_mixture, ring_of_gaussians, score_modes


@pytest.mark.parametrize("mixture", [ring_of_gaussians(), grid_of_gaussians()])
def test_true_samples_cover_every_mode(mixture):
    x = mixture.sample(5000, torch.Generator().manual_seed(0))
    score = score_modes(x, mixture)
    assert score.modes_covered == mixture.num_modes
    assert score.high_quality > 0.98  # 3 sigma keeps ~98.9% of a 2-D Gaussian


def test_mode_collapse_is_detected():
    ring = ring_of_gaussians()
    collapsed = ring.means[[0, 1]].repeat(500, 1) + 0.01 * torch.randn(1000, 2)
    score = score_modes(collapsed, ring)
    assert score.modes_covered == 2 and score.high_quality == 1.0
    spread = torch.randn(1000, 2) * 3  # a blob that covers nothing well
    assert score_modes(spread, ring).high_quality < 0.05
    with pytest.raises(ValueError, match="known ones"):
        make_mixture("spiral")


def test_mnist5k_is_real_balanced_and_split():
    train, test = MNIST5k("train"), MNIST5k("test")
    assert len(train) == 4500 and len(test) == 500
    assert torch.bincount(test.labels).tolist() == [50] * 10
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert MNIST5k("all", scale="unit").images.min() == 0
    with pytest.raises(ValueError, match="choose one of"):
        MNIST5k("validation")


def test_shapeworld_is_deterministic_and_fast():
    world = sw.ShapeWorld()
    a = world.sample(500, seed=7)
    b = world.sample(500, seed=7)
    assert a.captions == b.captions and np.array_equal(a.images, b.images)
    assert world.sample(500, seed=8).captions != a.captions
    start = time.perf_counter()
    world.sample(20000, seed=0)
    rate = 20000 / (time.perf_counter() - start)
    assert rate > 5000, f"{rate:.0f} images/s"  # ~40k/s on 2 cores; generous for loaded CI machines


def test_shapeworld_holds_out_pairs_from_training():
    world = sw.ShapeWorld()
    train = world.sample(5000, seed=0, split="train")
    assert not any(sw.parse_caption(c).held_out for c in train.captions)
    held = world.sample(1000, seed=0, split="heldout")
    assert all(sw.parse_caption(c).held_out for c in held.captions)
    # and the pixels agree: no rendered object in training has a held-out colour-shape pair
    pairs = {(sw.COLOR_NAMES[c], sw.SHAPES[s]) for c, s, p in
             zip(train.colors.ravel(), train.shapes.ravel(), train.present.ravel(), strict=True) if p}
    assert not pairs & set(sw.HELD_OUT_PAIRS)


def test_shapeworld_masks_and_captions_agree():
    batch = sw.ShapeWorld().sample(2000, seed=1)
    shape_mask, color_mask = batch.semantic_masks()
    for i in range(200):
        scene = batch.scene(i)
        spec = sw.parse_caption(scene.caption)
        assert len(scene.objects) == len(spec.objects)
        for k, obj in enumerate(scene.objects):
            on = batch.masks[i] == k + 1
            assert on.sum() >= 20, "every object is visible"
            assert (shape_mask[i][on] == sw.SHAPES.index(obj.shape) + 1).all()
            assert (color_mask[i][on] == sw.COLOR_NAMES.index(obj.color) + 1).all()
            # the object's pixels carry its colour (within the jitter)
            rgb = batch.images[i][on].astype(int)
            assert np.abs(rgb - np.array(sw.COLORS[obj.color])).max() <= 12
        assert (batch.images[i][batch.masks[i] == 0] == 0).all(), "background is black"


def test_pair_relations_are_true_in_pixels():
    batch = sw.ShapeWorld().sample(1000, seed=2, kinds=("pair",))
    for i in range(len(batch)):
        (ax, ay), (bx, by) = batch.centers[i, 0], batch.centers[i, 1]
        dx, dy = bx - ax, by - ay
        rel = sw.RELATIONS[batch.relations[i]]
        ok = {"above": dy > abs(dx), "below": -dy > abs(dx), "to the left of": dx > abs(dy),
              "to the right of": -dx > abs(dy)}[rel]
        assert ok, batch.captions[i]


def test_render_caption_and_clear_errors():
    world = sw.ShapeWorld()
    batch = world.render_caption("a green circle above a blue triangle", n=8)  # both held out
    assert all(s.objects[0].color == "green" and s.objects[1].shape == "triangle"
               for s in map(batch.scene, range(8)))
    with pytest.raises(ValueError, match="known colours: red, orange"):
        sw.single_caption("pink", "circle", "small", "top")
    with pytest.raises(ValueError, match="known shapes: circle, square"):
        sw.count_caption(2, "red", "star")
    with pytest.raises(ValueError, match=r"does not know: \['pink', 'star'\]"):
        sw.parse_caption("a pink star")
    with pytest.raises(ValueError, match="unknown split"):
        world.sample(3, split="test")


def test_mnist5k_slices_are_fair_samples():
    """The file is sorted by label; the dataset's fixed shuffle makes any slice hold every digit."""
    train = MNIST5k("train")
    assert len(set(train.labels[:64].tolist())) == 10
    assert torch.equal(MNIST5k("train").labels, train.labels), "the order is fixed"
