"""Pictures: image grids, curves and 2-D point clouds. Defined in notebook 00_welcome."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid


def image_grid(images: torch.Tensor | np.ndarray, nrow: int = 8, value_range: tuple[float, float] = (-1, 1),
               padding: int = 2, pad_value: float = 0.5) -> np.ndarray:
    """A grid of images as an (H, W, C) float array in [0, 1], made with torchvision's ``make_grid``.

    Accepts float (N, C, H, W) tensors in ``value_range`` (default [-1, 1]) or uint8 (N, H, W, C)
    arrays. Supports notebook 00_welcome.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError("numpy images must be uint8 (N, H, W, C); pass float images as a torch tensor")
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N,H,W,C) -> (N,C,H,W)
    else:
        if images.ndim == 3:
            images = images.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        lo, hi = value_range
        x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=pad_value)
    return grid.permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)


def show_images(images: torch.Tensor | np.ndarray, nrow: int = 8, title: str | None = None,
                ax: plt.Axes | None = None, value_range: tuple[float, float] = (-1, 1),
                scale: float = 0.9) -> plt.Axes:
    """Show a grid of images with matplotlib. Defined in notebook 00_welcome."""
    grid = image_grid(images, nrow=nrow, value_range=value_range)
    if ax is None:
        h, w = grid.shape[:2]
        _, ax = plt.subplots(figsize=(scale * w / 40, scale * h / 40))
    cmap = "gray" if grid.shape[2] == 1 else None
    ax.imshow(grid.squeeze(-1) if cmap else grid, cmap=cmap, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_captioned(images: torch.Tensor | np.ndarray, captions: Sequence[str], ncols: int = 4,
                   value_range: tuple[float, float] = (-1, 1), width: float = 2.4) -> plt.Figure:
    """Images each with its caption underneath. Defined in notebook 00_welcome."""
    n = len(captions)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, width * nrows * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            show_images(images[i:i + 1], nrow=1, ax=ax, value_range=value_range)
            ax.set_title(_wrap(captions[i], 26), fontsize=8)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


def plot_curves(curves: dict[str, Sequence[float]], xlabel: str = "step", ylabel: str = "loss",
                title: str | None = None, ax: plt.Axes | None = None, logy: bool = False,
                smooth: int = 1) -> plt.Axes:
    """Line plot of named curves, e.g. training losses; ``smooth`` is a moving-average window.

    Supports notebook 00_welcome.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        y = np.asarray(values, dtype=float)
        if smooth > 1 and len(y) >= smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(len(y)) + (smooth - 1 if smooth > 1 else 0), y, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_points_2d(points: torch.Tensor | np.ndarray, means: torch.Tensor | None = None, ax: plt.Axes | None = None,
                   title: str | None = None, lim: float | None = None, s: float = 2.0) -> plt.Axes:
    """Scatter plot of 2-D samples, with the mixture's modes marked. Defined in notebook 00_welcome."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.5, 3.5))
    p = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points)
    ax.scatter(p[:, 0], p[:, 1], s=s, alpha=0.5, linewidths=0)
    if means is not None:
        m = np.asarray(means)
        ax.scatter(m[:, 0], m[:, 1], marker="x", color="red", s=20)
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax
