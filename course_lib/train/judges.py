"""Training the course's judges (notebook 00's digit classifier and ShapeWorld attribute network).

Not built in a notebook: ``scripts/train_digit_classifier.py`` and ``scripts/train_attribute_net.py``
train them with this module and ship them in ``data/``; the networks, and everything that measures
with them, are in ``course_lib.evaluate.classifiers``. Both train in shuffled epochs (``EpochOrder``)
with AdamW and a one-cycle learning rate on the course's one training loop
(``course_lib.train.loop.TrainLoop``), each bringing its (augmented) inputs and its loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.evaluate.classifiers import AttributeNet, DigitClassifier
from course_lib.train.distributed import DistributedContext
from course_lib.train.loop import TrainLoop
from course_lib.train.state import Checkpointing, describe_model

__all__ = ["EpochOrder", "random_shift", "augment_for_robustness", "train_digit_classifier", "train_attribute_net"]


class EpochOrder:
    """The ``n`` examples in a shuffled order per epoch, ``batch_size`` at a time, one batch a step (the last of
    an epoch may be smaller); the epoch's order is saved with the training state."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.per_epoch = (n + batch_size - 1) // batch_size
        self.perm: torch.Tensor | None = None

    def batch(self, step: int) -> torch.Tensor:
        """The indices of step ``step``'s batch (a new epoch draws a new order from the generator)."""
        i = step % self.per_epoch
        if i == 0:
            self.perm = torch.randperm(self.n, generator=self.generator)
        return self.perm[i * self.batch_size:(i + 1) * self.batch_size]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return ({"order": self.perm} if self.perm is not None else {}), {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.perm = tensors.get("order")


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels, filling with the background value (-1)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def augment_for_robustness(x: torch.Tensor, generator: torch.Generator | None = None,
                           max_tint: float = 0.25, max_noise: float = 0.15) -> torch.Tensor:
    """Tint, noise and slight blur, so the judge also reads imperfect generated images.

    A judge trained only on clean renders is fooled by early samples with tinted, noisy
    backgrounds (see ENVIRONMENT_NOTES); this is the remedy.
    """
    b = x.shape[0]
    tint = (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * max_tint
    noise_std = torch.rand(b, 1, 1, 1, generator=generator) * max_noise
    x = x + tint + noise_std * torch.randn(x.shape, generator=generator)
    blur = torch.rand(b, generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        kernel = kernel.expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    return x.clamp(-1.2, 1.2)


def _train_in_epochs(model: nn.Module, ctx: DistributedContext, *, n: int, epochs: int, batch_size: int, lr: float,
                     g: torch.Generator, precision: str, checkpoint: Checkpointing | None, run_config: dict,
                     desc: str, inputs: Callable[[torch.Tensor], torch.Tensor],
                     loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]) -> list[float]:
    """What both judges train with: AdamW with a one-cycle schedule over shuffled epochs of ``n`` examples;
    ``inputs(idx)`` draws a batch's (augmented) inputs, ``loss_of(net, x, rows)`` its loss. Under torchrun
    every process draws the global batch and trains on its slice (the loss scaled so DDP's average is the
    global mean). Returns the loss per step (the global batch's, on every process)."""
    device = next(model.parameters()).device
    world = ctx.world_size if ctx.is_distributed else 1
    net = ctx.wrap(model) if ctx.is_distributed else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    order = EpochOrder(n, batch_size, g)
    steps = epochs * order.per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loop = TrainLoop(model, opt, total_steps=steps, lr_schedule=sched, precision=precision, distributed=ctx,
                     checkpoint=checkpoint, run_config=run_config, generators={"batches": g}, state={"data": order},
                     desc=desc)

    def step(i: int) -> torch.Tensor | dict[str, float] | None:
        idx = order.batch(i)
        x = inputs(idx)
        if world == 1:
            with loop.autocast():
                return loss_of(net, x.to(device), idx)
        if len(idx) < world:  # a last batch too small to share is skipped (its augmentation still drawn)
            return None
        part = ctx.local_slice(len(idx))  # this process's rows; the loss scaled so DDP's average is the global mean
        n_local = part.stop - part.start
        with loop.autocast():
            local = loss_of(net, x[part].to(device), idx[part])
        loop.optimize(local * (n_local * world / len(idx)))
        total = ctx.all_reduce_sum(torch.tensor([local.item() * n_local], dtype=torch.float64))
        return {"loss": float(total[0]) / len(idx)}  # the global batch's mean loss

    return loop.run(step).history.get("loss", [])


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 15, batch_size: int = 64,
                           lr: float = 2e-3, seed: int = 0, model: DigitClassifier | None = None, *,
                           model_config: dict | None = None, device: str | torch.device | None = None,
                           distributed: DistributedContext | None = None, precision: str = "fp32",
                           checkpoint: Checkpointing | None = None) -> tuple[DigitClassifier, list[float]]:
    """Train a :class:`DigitClassifier` with random shifts; returns it and the loss per step.

    Beyond one CPU (README, "Training bigger"): the model trains on its own device; with
    ``distributed`` (a torchrun process's context) every process draws the global batch of
    ``batch_size`` (and its shifts) as one process would and trains on its slice,
    so the union of the slices is the single-process batch; ``precision``: autocast (``"bf16"``...).
    Without ``model``, one is built from ``model_config`` (``DigitClassifier`` arguments) on ``device``
    (default: the context's device). ``checkpoint``: a ``train.state.Checkpointing`` (save, resume
    and stop the run; a step is one batch, ``epochs * ceil(len(images) / batch_size)`` in all).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ctx = distributed or DistributedContext()
    model = model or DigitClassifier(**(model_config or {})).to(device if device is not None else ctx.device)
    run_config = {"trainer": "train_digit_classifier", "model": describe_model(model),
                  "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                               "weight_decay": 1e-4, "max_shift": 2},
                  "data": {"images": list(images.shape), "labels": list(labels.shape)}}
    losses = _train_in_epochs(
        model, ctx, n=len(images), epochs=epochs, batch_size=batch_size, lr=lr, g=g, precision=precision,
        checkpoint=checkpoint, run_config=run_config, desc="digit classifier",
        inputs=lambda idx: random_shift(images[idx], 2, g),
        loss_of=lambda net, x, rows: F.cross_entropy(net(x), labels[rows].to(x.device)))
    return model.eval(), losses



def train_attribute_net(world_size: int = 20000, epochs: int = 4, batch_size: int = 64, lr: float = 3e-3,
                        seed: int = 0, model: AttributeNet | None = None, *,
                        model_config: dict | None = None, device: str | torch.device | None = None,
                        distributed: DistributedContext | None = None, precision: str = "fp32",
                        checkpoint: Checkpointing | None = None) -> tuple[AttributeNet, list[float]]:
    """Train an :class:`AttributeNet` on ``world_size`` ShapeWorld images of every combination
    (held-out ones included: the judge must read them). Returns it and the loss per step.

    Beyond one CPU (README, "Training bigger"): as
    ``train_digit_classifier``: every process renders the same images and draws the global batch
    (and its augmentation), then trains on its slice; BatchNorm statistics are per process.
    Without ``model``, one is built from ``model_config`` (``AttributeNet`` arguments) on ``device``.
    ``checkpoint``: a ``train.state.Checkpointing`` (save, resume and stop the run; a step is one batch).
    """
    from course_lib.worlds.shapeworld import ShapeWorld

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    batch = ShapeWorld().sample(world_size, seed=seed, split="all")
    images = batch.tensors()
    shape_mask, color_mask = (torch.from_numpy(m).long() for m in batch.semantic_masks())
    ctx = distributed or DistributedContext()
    model = model or AttributeNet(**(model_config or {})).to(device if device is not None else ctx.device)
    run_config = {"trainer": "train_attribute_net", "model": describe_model(model),
                  "settings": {"images": world_size, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                               "seed": seed, "weight_decay": 1e-4}}

    def loss_of(net: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        shape_logits, color_logits = net(x)
        return (F.cross_entropy(shape_logits, shape_mask[rows].to(x.device))
                + F.cross_entropy(color_logits, color_mask[rows].to(x.device)))

    losses = _train_in_epochs(
        model, ctx, n=world_size, epochs=epochs, batch_size=batch_size, lr=lr, g=g, precision=precision,
        checkpoint=checkpoint, run_config=run_config, desc="attribute net",
        inputs=lambda idx: augment_for_robustness(images[idx], g), loss_of=loss_of)
    return model.eval(), losses
