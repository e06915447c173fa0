"""The course's judges: a digit classifier for MNIST-5k and an attribute network for ShapeWorld.

Defined in notebook 00_welcome. Both are trained by scripts in ``scripts/`` (with
``course_lib.train.judges``) and shipped in ``data/``; every later notebook uses them to measure
samples (Frechet distance on their features, prompt adherence from the attribute network's object list).

The ShapeWorld judge is a small fully convolutional network that labels every pixel with a shape
class and a colour class (0 = background). Connected regions of its foreground are the objects
it sees, which makes counting, positions and colour binding checkable (see ``adherence``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.checkpoints import load_checkpoint

DIGIT_CLASSIFIER = "digit_classifier"
ATTRIBUTE_NET = "shapeworld_attribute_net"


# ----------------------------------------------------------------------------------------------
# MNIST digits
# ----------------------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """A small CNN for 28x28 digits in [-1, 1]; ``features`` is its 128-d penultimate layer.

    Defined in notebook 00_welcome.
    """

    def __init__(self, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim}
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 7
            nn.Flatten(), nn.Linear(2 * w * 7 * 7, feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"DigitClassifier takes (B, 1, 28, 28) images in [-1, 1], got {tuple(x.shape)}")
        return self.body(x)  # (B, 1, 28, 28) -> (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (B, feature_dim) -> (B, 10)


# ----------------------------------------------------------------------------------------------
# ShapeWorld attributes
# ----------------------------------------------------------------------------------------------
@dataclass
class AttributeNetConfig:
    """Sizes of the ShapeWorld attribute network. Supports notebook 00_welcome."""

    width: int = 16
    num_shapes: int = 4
    num_colors: int = 8


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class AttributeNet(nn.Module):
    """Per-pixel shape and colour classifier for ShapeWorld images (B, 3, H, W) in [-1, 1].

    An encoder to 1/4 resolution and a decoder back with skip connections. ``forward`` returns
    shape logits (B, 1 + num_shapes, H, W) and colour logits (B, 1 + num_colors, H, W), class 0
    being background; ``features`` is the pooled bottleneck, used for Frechet distances.
    Supports notebook 00_welcome.
    """

    def __init__(self, width: int = 16, num_shapes: int = 4, num_colors: int = 8):
        super().__init__()
        self.config = asdict(AttributeNetConfig(width, num_shapes, num_colors))
        w = width
        self.enc1 = nn.Sequential(_conv(3, w), _conv(w, w))  # full resolution
        self.enc2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))  # 1/2
        self.enc3 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # 1/4
        self.dec2 = _conv(4 * w + 2 * w, 2 * w)
        self.dec1 = _conv(2 * w + w, w)
        self.shape_head = nn.Conv2d(w, 1 + num_shapes, 1)
        self.color_head = nn.Conv2d(w, 1 + num_colors, 1)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError("AttributeNet takes (B, 3, H, W) images in [-1, 1] with H and W divisible by 4, "
                             f"got {tuple(x.shape)}")
        h1 = self.enc1(x)
        h2 = self.enc2(h1)
        return h1, h2, self.enc3(h2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h3 = self._encode(x)[2]
        return torch.cat([h3.mean(dim=(2, 3)), h3.amax(dim=(2, 3))], dim=1)  # (B, 4w, h, w) -> (B, 8w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1, h2, h3 = self._encode(x)
        up = F.interpolate(h3, scale_factor=2, mode="nearest")
        d2 = self.dec2(torch.cat([up, h2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2, mode="nearest"), h1], dim=1))
        return self.shape_head(d1), self.color_head(d1)


# ----------------------------------------------------------------------------------------------
# Shipped judges and their features
# ----------------------------------------------------------------------------------------------
_CACHE: dict[str, nn.Module] = {}


def load_digit_classifier() -> DigitClassifier:
    """The shipped digit classifier (made by ``scripts/train_digit_classifier.py``).

    Defined in notebook 00_welcome.
    """
    if DIGIT_CLASSIFIER not in _CACHE:
        _CACHE[DIGIT_CLASSIFIER] = load_checkpoint(DIGIT_CLASSIFIER, DigitClassifier)
    return _CACHE[DIGIT_CLASSIFIER]


def load_attribute_net() -> AttributeNet:
    """The shipped ShapeWorld attribute network (made by ``scripts/train_attribute_net.py``).

    Defined in notebook 00_welcome.
    """
    if ATTRIBUTE_NET not in _CACHE:
        _CACHE[ATTRIBUTE_NET] = load_checkpoint(ATTRIBUTE_NET, AttributeNet)
    return _CACHE[ATTRIBUTE_NET]


@torch.no_grad()
def extract_features(net: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``net.features`` over ``images`` in batches, on the CPU, as float64 (N, D).

    Supports notebook 00_welcome.
    """
    net.eval()
    out = [net.features(images[i:i + batch_size].float().cpu()) for i in range(0, len(images), batch_size)]
    return torch.cat(out).double()


def digit_features(images: torch.Tensor) -> torch.Tensor:
    """Features of MNIST-like images (N, 1, 28, 28) in [-1, 1] from the shipped digit classifier."""
    return extract_features(load_digit_classifier(), images)


def shapeworld_features(images: torch.Tensor) -> torch.Tensor:
    """Features of ShapeWorld-like images (N, 3, H, W) in [-1, 1] from the shipped attribute net."""
    return extract_features(load_attribute_net(), images)
