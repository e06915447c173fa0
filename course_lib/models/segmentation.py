"""The U-Net on its original job, segmentation, and its twin without skips. Defined in notebook 03_unet.

Ronneberger et al. (2015) built the U-Net to label every pixel of a microscope image. This module
holds a small U-Net of that design for ShapeWorld (each pixel: background or one of 4 shapes), the
same encoder-decoder with the skip connections removed, intersection-over-union, and a train loop.

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

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.train.distributed import DistributedContext, autocast, check_batch_divisible, resolve_precision
from course_lib.worlds.shapeworld import SHAPES, ShapeWorld
from course_lib.train.state import Checkpointing, describe_model
from course_lib.core.utils import progress

__all__ = ["CLASS_NAMES", "SegmentationUNetConfig", "DoubleConv", "SegmentationUNet",
           "shapeworld_segmentation_data", "iou_per_class", "mean_iou", "boundary_pixels", "predict",
           "SegmentationHistory", "train_segmenter"]

CLASS_NAMES: tuple[str, ...] = ("background", *SHAPES)


@dataclass
class SegmentationUNetConfig:
    """Sizes of a :class:`SegmentationUNet`. Defined in notebook 03_unet.

    Level ``i`` has ``base_channels * 2**i`` channels at ``1 / 2**i`` of the input resolution;
    ``skip=False`` builds the same encoder-decoder without skip connections.
    """

    in_channels: int = 3
    num_classes: int = len(CLASS_NAMES)
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


def shapeworld_segmentation_data(n: int, seed: int = 0, split: str = "all", image_size: int = 32
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` ShapeWorld images ``(n, 3, S, S)`` in [-1, 1] and their shape masks ``(n, S, S)`` int64.

    Mask values index :data:`CLASS_NAMES`: 0 background, 1 + k for ``SHAPES[k]``. Every colour-shape
    pair is drawn (``split="all"``): segmentation is about shapes, not about held-out captions.
    Defined in notebook 03_unet.
    """
    batch = ShapeWorld(image_size=image_size).sample(n, seed=seed, split=split)
    return batch.tensors(), torch.from_numpy(batch.semantic_masks()[0].astype(np.int64))


def _check_masks(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"predicted and true masks differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}; "
                         "pass class indices (e.g. logits.argmax(1)), not logits")


def iou_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int = len(CLASS_NAMES)) -> torch.Tensor:
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


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int = len(CLASS_NAMES)) -> float:
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


@dataclass
class SegmentationHistory:
    """Loss per step and, if asked for, mean IoU on held-back images every ``eval_every`` steps.

    Defined in notebook 03_unet.
    """

    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_miou: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def train_segmenter(model: SegmentationUNet, images: torch.Tensor, masks: torch.Tensor, steps: int = 200,
                    batch_size: int = 32, lr: float = 3e-3, seed: int = 0, eval_every: int | None = None,
                    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None, desc: str | None = None, *,
                    distributed: DistributedContext | None = None, precision: str = "fp32",
                    checkpoint: Checkpointing | None = None) -> SegmentationHistory:
    """Train with per-pixel cross-entropy, AdamW and a one-cycle learning rate.

    Batches depend only on ``seed``, so two networks trained with the same seed see the same images
    in the same order. With ``eval_every`` and ``eval_data`` it records the mean IoU on
    ``eval_data`` during training. Leaves the model in eval mode. Defined in notebook 03_unet.

    Beyond one CPU (README, "Training bigger"): the model trains on its own device; with
    ``distributed`` (a torchrun process's context) every process draws the global batch of
    ``batch_size`` and trains on its slice (BatchNorm statistics are per process), and only rank 0
    measures the IoU; ``precision``: autocast (``"bf16"``...). ``checkpoint``: a
    ``training_state.Checkpointing`` (save, resume and stop the run, history included).
    """
    if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[1:]:
        raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} do not match: "
                         "expected (N, C, H, W) and (N, H, W)")
    if (eval_every is None) != (eval_data is None):
        raise ValueError("give both eval_every and eval_data, or neither")
    ctx = distributed or DistributedContext()
    world = ctx.world_size if ctx.is_distributed else 1
    if world > 1:
        check_batch_divisible(batch_size, world)
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    net = ctx.wrap(model) if world > 1 else model
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    hist = SegmentationHistory(config={"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                                       **asdict(model.config)})
    ckpt = checkpoint or Checkpointing()
    run_config = {"trainer": "train_segmenter", "model": describe_model(model),
                  "settings": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "weight_decay": 1e-4,
                               "eval_every": eval_every},
                  "data": {"images": list(images.shape), "masks": list(masks.shape)}}
    state = ckpt.begin(ctx, run_config, total=steps, modules={"model": model}, optimizers={"optimizer": opt},
                       schedulers={"lr_schedule": sched}, generators={"batches": g})
    if state is not None:
        loop = state.meta["loop"]
        hist.losses, hist.eval_steps = [float(v) for v in loop["losses"]], [int(v) for v in loop["eval_steps"]]
        hist.eval_miou = [float(v) for v in loop["eval_miou"]]

    def loop_state() -> tuple[dict, dict]:
        return {}, {"losses": hist.losses, "eval_steps": hist.eval_steps, "eval_miou": hist.eval_miou}

    start, end = ckpt.start_step, ckpt.end_step
    model.train()
    for step in progress(range(start + 1, end + 1), desc=desc, disable=None if ctx.is_main else True,
                         **({"initial": start, "total": steps} if start or end != steps else {})):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        if world > 1:
            idx = idx[ctx.local_slice(batch_size)]  # this process's rows of the global batch
        with autocast(device, precision):
            loss = F.cross_entropy(net(images[idx].to(device)), masks[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hist.losses.append(loss.item() if world == 1 else float(ctx.all_reduce_mean(loss.detach().double().cpu())))
        if eval_every and (step % eval_every == 0 or step == steps) and ctx.is_main:
            hist.eval_steps.append(step)
            hist.eval_miou.append(mean_iou(predict(model, eval_data[0].to(device)).cpu(), eval_data[1]))
            model.train()
        ckpt.step_done(step, loop_state)
    ckpt.finish(max(start, end), loop_state, average_buffers=[model])  # BatchNorm statistics (per process)
    model.eval()
    return hist
