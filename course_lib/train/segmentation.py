"""Training the U-Net of notebook 03 to segment ShapeWorld. Defined in notebook 03_unet.

The networks and intersection-over-union are in ``course_lib.models.segmentation``. Here is where they
meet ShapeWorld: its images and shape masks (``shapeworld_segmentation_data``, classes ``CLASS_NAMES``),
and ``train_segmenter``, which brings the batches and the per-pixel cross-entropy to the course's one
training loop (``course_lib.train.loop.TrainLoop``) and measures the IoU on held-back images as it goes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.models.segmentation import SegmentationUNet, mean_iou, predict
from course_lib.train.distributed import DistributedContext, check_batch_divisible
from course_lib.train.loop import TrainLoop
from course_lib.train.state import Checkpointing, describe_model
from course_lib.worlds.shapeworld import SHAPES, ShapeWorld

__all__ = ["CLASS_NAMES", "shapeworld_segmentation_data", "SegmentationHistory", "train_segmenter"]

#: What each pixel's class means: 0 background, 1 + k for ``SHAPES[k]`` (``models.segmentation.NUM_CLASSES``).
CLASS_NAMES: tuple[str, ...] = ("background", *SHAPES)


def shapeworld_segmentation_data(n: int, seed: int = 0, split: str = "all", image_size: int = 32
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` ShapeWorld images ``(n, 3, S, S)`` in [-1, 1] and their shape masks ``(n, S, S)`` int64.

    Mask values index :data:`CLASS_NAMES`: 0 background, 1 + k for ``SHAPES[k]``. Every colour-shape
    pair is drawn (``split="all"``): segmentation is about shapes, not about held-out captions.
    Defined in notebook 03_unet.
    """
    batch = ShapeWorld(image_size=image_size).sample(n, seed=seed, split=split)
    return batch.tensors(), torch.from_numpy(batch.semantic_masks()[0].astype(np.int64))


@dataclass
class SegmentationHistory:
    """Loss per step and, if asked for, mean IoU on held-back images every ``eval_every`` steps.

    Supports notebook 03_unet.
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
    ``train.state.Checkpointing`` (save, resume and stop the run, history included).
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
    net = ctx.wrap(model) if world > 1 else model
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    config = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, **asdict(model.config)}
    run_config = {"trainer": "train_segmenter", "model": describe_model(model),
                  "settings": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "weight_decay": 1e-4,
                               "eval_every": eval_every},
                  "data": {"images": list(images.shape), "masks": list(masks.shape)}}
    loop = TrainLoop(model, opt, total_steps=steps, lr_schedule=sched, precision=precision, distributed=ctx,
                     checkpoint=checkpoint, run_config=run_config, generators={"batches": g}, desc=desc)
    loop.history.setdefault("eval_steps", [])
    loop.history.setdefault("eval_miou", [])

    def step(i: int) -> torch.Tensor:
        idx = torch.randint(len(images), (batch_size,), generator=g)
        if world > 1:
            idx = idx[ctx.local_slice(batch_size)]  # this process's rows of the global batch
        with loop.autocast():
            return F.cross_entropy(net(images[idx].to(device)), masks[idx].to(device))

    def evaluate(i: int, values: dict[str, float]) -> None:
        done = i + 1
        if eval_every and (done % eval_every == 0 or done == steps) and ctx.is_main:
            loop.history["eval_steps"].append(done)
            loop.history["eval_miou"].append(mean_iou(predict(model, eval_data[0].to(device)).cpu(), eval_data[1]))
            model.train()

    run = loop.run(step, on_step=evaluate)
    return SegmentationHistory(losses=run.history.get("loss", []), eval_steps=run.history["eval_steps"],
                               eval_miou=run.history["eval_miou"], config=config)
