"""MNIST-5k: 5,000 real handwritten digits shipped in ``data/``. Defined in notebook 00_welcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.core.paths import data_dir

MNIST_FILE = "mnist_5k.npz"


def load_mnist_arrays(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw arrays: images (5000, 28, 28) uint8 and labels (5000,) int64.

    Supports notebook 00_welcome.
    """
    path = Path(path) if path is not None else data_dir() / MNIST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; it ships with the course in data/ "
                                f"(see data/MNIST_LICENSE.md for where it comes from)")
    with np.load(path, allow_pickle=False) as f:
        return f["images"], f["labels"].astype(np.int64)


class MNIST5k(Dataset):
    """The 5,000 digits as a torch Dataset of (image, label).

    Images are float tensors (1, 28, 28) scaled to [-1, 1] (the range diffusion models use), or to
    [0, 1] with ``scale="unit"``. ``split="train"`` gives the first 4,500 images (450 per class),
    ``"test"`` the other 500 (50 per class), ``"all"`` every image. Each split comes in a fixed
shuffled order (the file itself is sorted by label), so any slice is a fair sample of all digits.
Defined in notebook 00_welcome.
    """

    SPLITS = ("train", "test", "all")

    def __init__(self, split: str = "all", scale: str = "symmetric", path: str | Path | None = None):
        if split not in self.SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {self.SPLITS}")
        if scale not in ("symmetric", "unit"):
            raise ValueError(f"unknown scale {scale!r}; choose 'symmetric' ([-1, 1]) or 'unit' ([0, 1])")
        images, labels = load_mnist_arrays(path)
        # A fixed split that keeps classes balanced: 50 of every class go to test.
        test_mask = np.zeros(len(labels), dtype=bool)
        for digit in range(10):
            test_mask[np.flatnonzero(labels == digit)[-50:]] = True
        keep = np.flatnonzero({"train": ~test_mask, "test": test_mask, "all": np.ones_like(test_mask)}[split])
        # The file is sorted by label; a fixed shuffle makes any slice (images[:64]) a fair sample.
        keep = keep[np.random.default_rng(0).permutation(len(keep))]
        x = torch.from_numpy(images[keep]).float().div_(255.0).unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
        self.images = x * 2 - 1 if scale == "symmetric" else x
        self.labels = torch.from_numpy(labels[keep])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
