"""Training notebook 02's deep plain and residual networks, reading every layer's gradient at every step.

Defined in notebook 02_resnet_blocks. The networks and the gradient norms are in
``course_lib.models.depth``; ``train_classifier`` brings the batches and the cross-entropy to the
course's one training loop (``course_lib.train.loop.TrainLoop``), and reads the gradient norms
once the gradients are there, before the optimizer's step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from course_lib.models.depth import DeepMLP, layer_gradient_norms
from course_lib.train.loop import TrainLoop

__all__ = ["TrainHistory", "train_classifier"]


@dataclass
class TrainHistory:
    """What :func:`train_classifier` records: the loss and every layer's gradient norm at each step.

    Supports notebook 02_resnet_blocks.
    """

    losses: list[float] = field(default_factory=list)
    grad_norms: torch.Tensor = field(default_factory=lambda: torch.empty(0))   # (steps, depth)
    config: dict = field(default_factory=dict)


def train_classifier(model: DeepMLP, images: torch.Tensor, labels: torch.Tensor, steps: int = 400,
                     batch_size: int = 64, lr: float = 0.05, momentum: float = 0.9, seed: int = 0,
                     desc: str | None = None) -> TrainHistory:
    """Train ``model`` with SGD + momentum on random batches; record loss and per-layer gradient norms.

    The batches depend only on ``seed``, so two models trained with the same seed see the same
    examples in the same order. Defined in notebook 02_resnet_blocks.
    """
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    g = torch.Generator().manual_seed(seed)
    norms = []
    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum), total_steps=steps,
                     desc=desc, after_backward=lambda: norms.append(layer_gradient_norms(model)))

    def step(i: int) -> torch.Tensor:
        idx = torch.randint(len(images), (batch_size,), generator=g)
        return F.cross_entropy(model(images[idx]), labels[idx])

    losses = loop.run(step).history["loss"]
    cfg = {"steps": steps, "batch_size": batch_size, "lr": lr, "momentum": momentum, "seed": seed,
           **asdict(model.config)}
    return TrainHistory(losses, torch.stack(norms), cfg)
