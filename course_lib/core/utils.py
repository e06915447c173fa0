"""Device choice, seeding and progress bars. Defined in notebook 00_welcome."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")

DEVICE_ENV_VAR = "COURSE_DEVICE"


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to run on: CUDA, then Apple MPS, then CPU.

    Override it with ``prefer`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) or with the
    ``COURSE_DEVICE`` environment variable. Asking for a device that is not available is an
    error rather than a silent fallback. Defined in notebook 00_welcome.
    """
    choice = prefer if prefer is not None else os.environ.get(DEVICE_ENV_VAR)
    if choice is not None:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} was asked for, but CUDA is not available here; "
                               "use 'cpu' or leave the device unset to pick the best available one")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' was asked for, but Apple MPS is not available here; "
                               "use 'cpu' or leave the device unset")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's ``random``, NumPy and torch (all devices) in one call.

    Returns a CPU ``torch.Generator`` seeded the same way, for code that wants its own stream.
    Defined in notebook 00_welcome.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    return torch.Generator().manual_seed(seed)


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None,
             disable: bool | None = None, **kwargs) -> Iterable[T]:
    """A ``tqdm.auto`` progress bar: a widget in Jupyter, text in a terminal.

    Set the environment variable ``COURSE_NO_PROGRESS=1`` to silence every bar (CI does).
    Supports notebook 00_welcome.
    """
    if disable is None:
        disable = os.environ.get("COURSE_NO_PROGRESS", "") not in ("", "0")
    return tqdm(iterable, desc=desc, total=total, disable=disable, **kwargs)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters of ``model``. Supports notebook 00_welcome."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
