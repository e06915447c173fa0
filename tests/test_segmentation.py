"""Notebook 03's segmentation U-Net, its no-skip twin, IoU (course_lib.models.segmentation) and its training
(course_lib.train.segmentation)."""

import pytest
import torch

from course_lib.core.utils import seed_everything
from course_lib.models.segmentation import (
    SegmentationUNet,
    SegmentationUNetConfig,
    boundary_pixels,
    iou_per_class,
    mean_iou,
    predict,
)
from course_lib.train.segmentation import CLASS_NAMES, shapeworld_segmentation_data, train_segmenter


def test_iou_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0]]])
    pred = torch.tensor([[[0, 0, 1, 0], [0, 0, 1, 1], [2, 0, 0, 0]]])
    # class 0: intersection 6, union 8; class 1: 3 / 4; class 2: 1 / 2; classes 3, 4 absent.
    iou = iou_per_class(pred, target, num_classes=5)
    torch.testing.assert_close(iou[:3], torch.tensor([6 / 8, 3 / 4, 1 / 2], dtype=torch.float64))
    assert iou[3:].isnan().all()
    assert mean_iou(pred, target, 5) == pytest.approx((6 / 8 + 3 / 4 + 1 / 2) / 3)
    assert mean_iou(target, target, 5) == 1.0
    with pytest.raises(ValueError, match="not logits"):
        mean_iou(torch.zeros(1, 5, 3, 4), target)


def test_boundary_pixels_are_the_edges():
    mask = torch.zeros(1, 6, 6, dtype=torch.long)
    mask[0, 2:4, 2:4] = 1
    edge = boundary_pixels(mask)[0]
    assert edge[2:4, 2:4].all() and edge[1, 1] and edge[4, 4]   # the square and its 8-neighbourhood ring
    assert not edge[0].any() and not edge[:, 0].any()
    assert edge.sum() == 16


@pytest.mark.parametrize("skip", [True, False])
def test_shapes_and_fully_convolutional(skip):
    seed_everything(0)
    net = SegmentationUNet(SegmentationUNetConfig(base_channels=4, levels=3, skip=skip)).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, len(CLASS_NAMES), 32, 32)
        assert net(torch.randn(1, 3, 24, 40)).shape == (1, len(CLASS_NAMES), 24, 40)  # any multiple of 4
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules()), "no fully connected layer"


def test_the_twins_differ_only_in_the_skips():
    with_skip = SegmentationUNet(SegmentationUNetConfig(skip=True))
    without = SegmentationUNet(SegmentationUNetConfig(skip=False))
    assert with_skip.state_dict().keys() == without.state_dict().keys()
    diff = {k for k, v in with_skip.state_dict().items() if v.shape != without.state_dict()[k].shape}
    # Only the first convolution of each decoder level sees fewer input channels.
    assert diff == {f"dec.{i}.0.weight" for i in range(3)}
    # The last decoder level sees [up-convolved, encoder level 0] with skips, only the first without.
    seen = {}
    for name, net in (("skip", with_skip), ("no skip", without)):
        handle = net.dec[-1].register_forward_pre_hook(lambda m, i, name=name: seen.update({name: i[0].shape[1]}))
        with torch.no_grad():
            net.eval()(torch.randn(1, 3, 32, 32))
        handle.remove()
    assert seen == {"skip": 16, "no skip": 8}


def test_training_learns_shapeworld_quickly():
    seed_everything(0)
    images, masks = shapeworld_segmentation_data(300, seed=0)
    assert images.shape == (300, 3, 32, 32) and masks.shape == (300, 32, 32) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= set(range(len(CLASS_NAMES)))
    net = SegmentationUNet(SegmentationUNetConfig(base_channels=4, levels=3))
    before = mean_iou(predict(net, images[:50]), masks[:50])
    hist = train_segmenter(net, images, masks, steps=40, batch_size=16, lr=1e-2, eval_every=20,
                           eval_data=(images[:50], masks[:50]))
    assert len(hist.losses) == 40 and hist.eval_steps == [20, 40]
    assert hist.losses[-1] < 0.6 * hist.losses[0]
    assert hist.eval_miou[-1] > before
    assert not net.training


def test_bad_input_is_a_clear_error():
    net = SegmentationUNet(SegmentationUNetConfig(levels=4))
    with pytest.raises(ValueError, match="height 30 and width 30 not divisible by 8"):
        net(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="levels must be a positive int"):
        SegmentationUNet(SegmentationUNetConfig(levels=0))
    with pytest.raises(ValueError, match="do not match"):
        train_segmenter(net, torch.randn(4, 3, 32, 32), torch.zeros(4, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="both eval_every and eval_data"):
        train_segmenter(net, torch.randn(4, 3, 32, 32), torch.zeros(4, 32, 32, dtype=torch.long), eval_every=5)
