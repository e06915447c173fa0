"""The course's judges: a digit classifier for MNIST-5k and an attribute network for ShapeWorld.

Defined in notebook 00_welcome. Both are trained by scripts in ``scripts/`` and shipped in
``data/``; every later notebook uses them to measure samples (Frechet distance on their features,
prompt adherence from the attribute network's object list).

The ShapeWorld judge is a small fully convolutional network that labels every pixel with a shape
class and a colour class (0 = background). Connected regions of its foreground are the objects
it sees, which makes counting, positions and colour binding checkable (see ``adherence``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.checkpoints import load_checkpoint
from course_lib.train.distributed import DistributedContext, autocast, resolve_precision
from course_lib.train.state import Checkpointing, describe_model
from course_lib.core.utils import progress

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


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels, filling with the background value (-1)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def _global_loss_step(ctx: DistributedContext, n_global: int) -> tuple[int, slice | None]:
    """(processes, this process's slice of a global batch of ``n_global``; None in one process)."""
    world = ctx.world_size if ctx.is_distributed else 1
    return world, (ctx.local_slice(n_global) if world > 1 else None)


def _reduced_loss(ctx: DistributedContext, loss: torch.Tensor, n_local: int, n_global: int) -> float:
    """The global batch's mean loss from this process's slice mean (all processes take part)."""
    total = ctx.all_reduce_sum(torch.tensor([loss.item() * n_local], dtype=torch.float64))
    return float(total[0]) / n_global


def _resumed_bar(first: int, total: int) -> dict:
    """``progress`` arguments for a bar of ``total`` that starts at ``first`` (nothing for a fresh run)."""
    return {"initial": first, "total": total} if first else {}


def _train_in_epochs(model: nn.Module, ctx: DistributedContext, *, n: int, epochs: int, batch_size: int, lr: float,
                     g: torch.Generator, precision: str, checkpoint: Checkpointing | None, run_config: dict,
                     desc: str, inputs: Callable[[torch.Tensor], torch.Tensor],
                     loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]) -> list[float]:
    """The loop both judges train with: AdamW with a one-cycle schedule over shuffled epochs of ``n``
    examples; ``inputs(idx)`` draws a batch's (augmented) inputs, ``loss_of(net, x, rows)`` its loss.
    Under torchrun every process draws the global batch and trains on its slice (the loss scaled so
    DDP's average is the global mean). Returns the loss per step (the global batch's, on every process)."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    net = ctx.wrap(model) if ctx.is_distributed else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = (n + batch_size - 1) // batch_size
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    ckpt = checkpoint or Checkpointing()
    state = ckpt.begin(ctx, run_config, total=steps, modules={"model": model}, optimizers={"optimizer": opt},
                       schedulers={"lr_schedule": sched}, generators={"batches": g})
    losses = [float(v) for v in state.meta["loop"]["losses"]] if state is not None else []
    perm = state.tensors.get("data.order") if state is not None else None
    step = ckpt.start_step

    def loop_state() -> tuple[dict, dict]:
        return ({"data.order": perm} if perm is not None else {}), {"losses": losses}

    model.train()
    first_epoch = step // per_epoch
    for _ in progress(range(first_epoch, epochs), desc=desc, disable=None if ctx.is_main else True,
                      **_resumed_bar(first_epoch, epochs)):
        if step >= ckpt.end_step:
            break
        if step % per_epoch == 0:  # a new epoch (a run resumed within an epoch keeps its saved order)
            perm = torch.randperm(n, generator=g)
        for i in range((step % per_epoch) * batch_size, n, batch_size):
            idx = perm[i:i + batch_size]
            x = inputs(idx)
            world, part = _global_loss_step(ctx, len(idx))
            # with several processes, a last batch too small to share is skipped (its augmentation still drawn)
            if world == 1 or len(idx) >= world:
                if world == 1:
                    with autocast(device, precision):
                        loss = loss_of(net, x.to(device), idx)
                else:   # this process's rows of the global batch; scaled so DDP's average is the global mean
                    with autocast(device, precision):
                        local = loss_of(net, x[part].to(device), idx[part])
                    loss = local * ((part.stop - part.start) * world / len(idx))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item() if world == 1 else
                              _reduced_loss(ctx, local, part.stop - part.start, len(idx)))
            step += 1
            ckpt.step_done(step, loop_state)
            if step >= ckpt.end_step:
                break
    ckpt.finish(step, loop_state, average_buffers=[model])  # BatchNorm statistics (each process saw its own slices)
    return losses


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 15, batch_size: int = 64,
                           lr: float = 2e-3, seed: int = 0, model: DigitClassifier | None = None, *,
                           model_config: dict | None = None, device: str | torch.device | None = None,
                           distributed: DistributedContext | None = None, precision: str = "fp32",
                           checkpoint: Checkpointing | None = None) -> tuple[DigitClassifier, list[float]]:
    """Train a :class:`DigitClassifier` with random shifts; returns it and the loss per step.

    Defined in notebook 00_welcome. Beyond one CPU (README, "Training bigger"): the model trains
    on its own device; with ``distributed`` (a torchrun process's context) every process draws the
    global batch of ``batch_size`` (and its shifts) as one process would and trains on its slice,
    so the union of the slices is the single-process batch; ``precision``: autocast (``"bf16"``...).
    Without ``model``, one is built from ``model_config`` (``DigitClassifier`` arguments) on ``device``
    (default: the context's device). ``checkpoint``: a ``training_state.Checkpointing`` (save, resume
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


# ----------------------------------------------------------------------------------------------
# ShapeWorld attributes
# ----------------------------------------------------------------------------------------------
@dataclass
class AttributeNetConfig:
    """Sizes of the ShapeWorld attribute network. Defined in notebook 00_welcome."""

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
    Defined in notebook 00_welcome.
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


def augment_for_robustness(x: torch.Tensor, generator: torch.Generator | None = None,
                           max_tint: float = 0.25, max_noise: float = 0.15) -> torch.Tensor:
    """Tint, noise and slight blur, so the judge also reads imperfect generated images.

    A judge trained only on clean renders is fooled by early samples with tinted, noisy
    backgrounds (see ENVIRONMENT_NOTES); this is the remedy. Defined in notebook 00_welcome.
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


def train_attribute_net(world_size: int = 20000, epochs: int = 4, batch_size: int = 64, lr: float = 3e-3,
                        seed: int = 0, model: AttributeNet | None = None, *,
                        model_config: dict | None = None, device: str | torch.device | None = None,
                        distributed: DistributedContext | None = None, precision: str = "fp32",
                        checkpoint: Checkpointing | None = None) -> tuple[AttributeNet, list[float]]:
    """Train an :class:`AttributeNet` on ``world_size`` ShapeWorld images of every combination
    (held-out ones included: the judge must read them). Returns it and the loss per step.

    Defined in notebook 00_welcome. Beyond one CPU (README, "Training bigger"): as
    ``train_digit_classifier``: every process renders the same images and draws the global batch
    (and its augmentation), then trains on its slice; BatchNorm statistics are per process.
    Without ``model``, one is built from ``model_config`` (``AttributeNet`` arguments) on ``device``.
    ``checkpoint``: a ``training_state.Checkpointing`` (save, resume and stop the run; a step is one batch).
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

    Defined in notebook 00_welcome.
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
