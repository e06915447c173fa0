"""Deep plain and residual networks, and the gradient each layer receives. Defined in notebook 02_resnet_blocks.

The experiment of notebook 02: the *same* stack of layers, once plain (``h = f(h)``) and once
residual (``h = h + f(h)``), trained on MNIST-5k. Each layer ``f`` is Stable Diffusion's
pre-activation recipe in miniature: normalisation, SiLU, then a linear map. The only difference
between the two networks is the ``+ h``; they have exactly the same parameters.

    model = DeepMLP(DeepMLPConfig(depth=30, residual=False))
    history = train_classifier(model, images, labels, steps=400)   # course_lib.train.depth
    history.grad_norms          # (steps, depth): gradient norm of every layer at every step
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DeepMLPConfig", "DeepMLP", "layer_gradient_norms", "gradient_norms_at_init", "accuracy", "mean_loss"]


@dataclass
class DeepMLPConfig:
    """Sizes of a :class:`DeepMLP`. Defined in notebook 02_resnet_blocks.

    ``depth`` layers of ``width`` features; ``residual`` adds the skip connection around every
    layer; ``norm_groups`` is the GroupNorm group count (``None``: no normalisation at all).
    """

    depth: int = 30
    width: int = 64
    residual: bool = True
    norm_groups: int | None = 8
    in_features: int = 28 * 28
    num_classes: int = 10

    def validate(self) -> None:
        """Raise a ``ValueError`` that says what to change if these sizes cannot build a network."""
        for name in ("depth", "width", "in_features", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.norm_groups is not None and (self.norm_groups < 1 or self.width % self.norm_groups):
            raise ValueError(f"width={self.width} is not divisible by norm_groups={self.norm_groups}: GroupNorm "
                             "splits the features into equal groups. Choose a group count that divides the "
                             "width, or norm_groups=None for no normalisation")


class DeepMLPLayer(nn.Module):
    """One layer ``f(h) = linear(silu(norm(h)))``: ``(B, width) -> (B, width)``.

    Supports notebook 02_resnet_blocks.
    """

    def __init__(self, width: int, norm_groups: int | None):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, width) if norm_groups is not None else nn.Identity()
        self.linear = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(F.silu(self.norm(h)))


class DeepMLP(nn.Module):
    """A deep classifier of flattened images, plain or residual. Defined in notebook 02_resnet_blocks.

    ``x (B, ...)`` with ``in_features`` values per example -> logits ``(B, num_classes)``.
    A linear stem, ``depth`` :class:`DeepMLPLayer` s (each wrapped in a skip connection when
    ``residual``), a final norm and SiLU, and a linear head.
    """

    def __init__(self, config: DeepMLPConfig | None = None):
        super().__init__()
        config = config or DeepMLPConfig()
        config.validate()
        self.config = config
        c = config
        self.stem = nn.Linear(c.in_features, c.width)
        self.layers = nn.ModuleList([DeepMLPLayer(c.width, c.norm_groups) for _ in range(c.depth)])
        self.norm_out = nn.GroupNorm(c.norm_groups, c.width) if c.norm_groups is not None else nn.Identity()
        self.head = nn.Linear(c.width, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)                                       # (B, 1, 28, 28) -> (B, 784)
        if h.shape[1] != self.config.in_features:
            raise ValueError(f"DeepMLP expects {self.config.in_features} values per example, got "
                             f"{h.shape[1]} (input shape {tuple(x.shape)}); build it with "
                             f"DeepMLPConfig(in_features={h.shape[1]})")
        h = self.stem(h)                                       # (B, 784) -> (B, width)
        for layer in self.layers:
            h = h + layer(h) if self.config.residual else layer(h)
        return self.head(F.silu(self.norm_out(h)))             # (B, width) -> (B, num_classes)

    def layer_weights(self) -> list[torch.Tensor]:
        """The weight matrix of every layer, first to last."""
        return [layer.linear.weight for layer in self.layers]


def layer_gradient_norms(model: DeepMLP) -> torch.Tensor:
    """The Frobenius norm of each layer's weight gradient, ``(depth,)``, after a ``backward()``.

    Supports notebook 02_resnet_blocks.
    """
    grads = [w.grad for w in model.layer_weights()]
    if any(g is None for g in grads):
        raise ValueError("the model has no gradients yet: call loss.backward() first")
    return torch.stack([g.detach().norm() for g in grads])


def gradient_norms_at_init(model: DeepMLP, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-layer gradient norms ``(depth,)`` of the cross-entropy on one batch, without changing the model.

    Supports notebook 02_resnet_blocks.
    """
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    norms = layer_gradient_norms(model)
    model.zero_grad()
    return norms


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of ``images`` whose arg-max logit is the label. Defined in notebook 02_resnet_blocks."""
    model.eval()
    hits = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
               for i in range(0, len(images), batch_size))
    return hits / len(images)


@torch.no_grad()
def mean_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean cross-entropy of ``model`` on a whole set. Defined in notebook 02_resnet_blocks."""
    model.eval()
    total = sum(F.cross_entropy(model(images[i:i + batch_size]), labels[i:i + batch_size], reduction="sum").item()
                for i in range(0, len(images), batch_size))
    return total / len(images)
