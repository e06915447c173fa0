"""The U-Net on its original job, segmentation, and its twin without skips. Defined in notebook 03_unet.

Ronneberger et al. (2015) built the U-Net to label every pixel of a microscope image. This module
holds a small U-Net of that design for ShapeWorld (each pixel: background or one of 4 shapes), the
same encoder-decoder with the skip connections removed, and intersection-over-union. The data
(``shapeworld_segmentation_data``, ``CLASS_NAMES``) and the training (``train_segmenter``) are in
``course_lib.train.segmentation``.

    net = SegmentationUNet(SegmentationUNetConfig(skip=True))
    images, masks = shapeworld_segmentation_data(2000, seed=0)
    history = train_segmenter(net, images, masks, steps=200)
    mean_iou(predict(net, images), masks)

Shape of the network for ``levels=4``, ``base_channels=8`` on a 32x32 image::

    enc 0: 2 convs,  8 ch, 32x32 ------------------ skip ----------------> dec 0: 2 convs, 8 ch -> 1x1 head
    enc 1: pool, 2 convs, 16 ch, 16x16 ------------ skip ---------> dec 1: 2 convs, 16 ch
    enc 2: pool, 2 convs, 32 ch,  8x8 ------------- skip --> dec 2: 2 convs, 32 ch
    enc 3: pool, 2 convs, 64 ch,  4x4  (bottleneck) -> up-convolution -^

With ``skip=False`` each decoder level sees only the up-convolved map from below: everything it
knows about the image passed through the 4x4 bottleneck. It has no fully connected layer either:
both networks are *fully convolutional* and run on any image whose sides divide by 2**(levels-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NUM_CLASSES", "SegmentationUNetConfig", "DoubleConv", "SegmentationUNet", "iou_per_class", "mean_iou",
           "boundary_pixels", "predict"]

#: Background and ShapeWorld's four shapes (their names: ``course_lib.train.segmentation.CLASS_NAMES``).
NUM_CLASSES = 5


@dataclass
class SegmentationUNetConfig:
    """Sizes of a :class:`SegmentationUNet`. Defined in notebook 03_unet.

    Level ``i`` has ``base_channels * 2**i`` channels at ``1 / 2**i`` of the input resolution;
    ``skip=False`` builds the same encoder-decoder without skip connections.
    """

    in_channels: int = 3
    num_classes: int = NUM_CLASSES
    base_channels: int = 8
    levels: int = 4
    skip: bool = True

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * 2**i for i in range(self.levels))

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the input is halved ``levels - 1`` times)."""
        return 2 ** (self.levels - 1)

    def validate(self) -> None:
        """Raise a ``ValueError`` that says what to change if these sizes cannot build a network."""
        for name in ("in_channels", "num_classes", "base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {self.num_classes}")
        if not isinstance(self.levels, int) or self.levels < 1:
            raise ValueError(f"levels must be a positive int (1 = no downsampling), got {self.levels!r}")


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU: the U-Net's unit of work.

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)``. Ronneberger et al. used unpadded
    convolutions and no normalisation; padding keeps sizes simple and BatchNorm makes a few
    hundred steps enough. Defined in notebook 03_unet.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class SegmentationUNet(nn.Module):
    """A U-Net that labels every pixel: ``(B, in_channels, H, W) -> logits (B, num_classes, H, W)``.

    Encoder: a :class:`DoubleConv` per level, 2x2 max-pooling between levels. Decoder: a 2x2
    up-convolution (transposed convolution, stride 2) that halves the channels, concatenated with
    the encoder's map of the same resolution (the skip connection; left out with ``skip=False``),
    then a :class:`DoubleConv`. A 1x1 convolution gives the class logits. Defined in notebook 03_unet.
    """

    def __init__(self, config: SegmentationUNetConfig | None = None, **overrides):
        super().__init__()
        config = config or SegmentationUNetConfig(**overrides)
        config.validate()
        self.config = config
        ch = config.channels
        self.down = nn.ModuleList([DoubleConv(config.in_channels if i == 0 else ch[i - 1], ch[i])
                                   for i in range(config.levels)])
        # Decoder levels, from the deepest upwards: up-convolve from level i to level i - 1.
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i], ch[i - 1], kernel_size=2, stride=2)
                                 for i in range(config.levels - 1, 0, -1)])
        self.dec = nn.ModuleList([DoubleConv(ch[i - 1] * (2 if config.skip else 1), ch[i - 1])
                                  for i in range(config.levels - 1, 0, -1)])
        self.head = nn.Conv2d(ch[0], config.num_classes, kernel_size=1)

    def _check_input(self, x: torch.Tensor) -> None:
        c, m = self.config, self.config.size_multiple
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"SegmentationUNet expects images of shape (B, {c.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        bad = [f"{name} {s}" for name, s in (("height", x.shape[2]), ("width", x.shape[3])) if s % m]
        if bad:
            raise ValueError(f"image {' and '.join(bad)} not divisible by {m}: a U-Net with {c.levels} levels "
                             f"halves the image {c.levels - 1} times, so both sides must be multiples of {m}. "
                             f"Pad or crop the image to e.g. {max(m, x.shape[2] // m * m)}x"
                             f"{max(m, x.shape[3] // m * m)}, or build the network with fewer levels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2)                        # (B, C, H, W) -> (B, C, H/2, W/2)
            x = block(x)
            skips.append(x)
        skips.pop()                                           # the bottleneck is not a skip
        for up, block in zip(self.up, self.dec, strict=True):
            x = up(x)                                         # (B, 2C, H/2, W/2) -> (B, C, H, W)
            skip = skips.pop()
            x = block(torch.cat([x, skip], dim=1) if self.config.skip else x)  # (B, 2C or C, H, W) -> (B, C, H, W)
        return self.head(x)                                   # (B, C0, H, W) -> (B, num_classes, H, W)


def _check_masks(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"predicted and true masks differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}; "
                         "pass class indices (e.g. logits.argmax(1)), not logits")


def iou_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Intersection over union of every class over the whole set: ``(num_classes,)``.

    For class c: |pred == c and target == c| / |pred == c or target == c|, counting pixels of all
    images together; NaN for a class that appears in neither. Defined in notebook 03_unet.
    """
    _check_masks(pred, target)
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    inter = torch.bincount(target[pred == target], minlength=num_classes)[:num_classes].double()
    area_pred = torch.bincount(pred, minlength=num_classes)[:num_classes].double()
    area_true = torch.bincount(target, minlength=num_classes)[:num_classes].double()
    union = area_pred + area_true - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> float:
    """Mean of :func:`iou_per_class` over the classes present. Defined in notebook 03_unet."""
    return iou_per_class(pred, target, num_classes).nanmean().item()


def boundary_pixels(target: torch.Tensor) -> torch.Tensor:
    """Pixels of a mask ``(N, H, W)`` that have a differently labelled pixel among their 8 neighbours.

    Returns a bool tensor ``(N, H, W)``: the edges of the shapes, where segmentations differ most.
    Defined in notebook 03_unet.
    """
    t = target.float()[:, None]                                              # (N, H, W) -> (N, 1, H, W)
    hi = F.max_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    lo = -F.max_pool2d(F.pad(-t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (hi != lo)[:, 0]


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """The most likely class of every pixel: ``(N, C, H, W) -> (N, H, W)`` int64. Defined in notebook 03_unet."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
