"""Rendering ShapeWorld: every image of a batch at once, and the batch with all that is known about it.

Part of notebook 00_welcome's ShapeWorld.

``_shape_masks`` rasterises circles, squares, triangles and crosses for many images with NumPy;
``render_objects`` draws every object of every scene with its (jittered) colour; ``ShapeWorldBatch``
holds the rendered images (uint8), the instance masks, the captions and every object's attributes;
``images_to_tensor`` gives the images as float tensors in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from course_lib.worlds.shapeworld_scenes import (
    BACKGROUND,
    COLOR_NAMES,
    COLORS,
    KINDS,
    LOCATIONS,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
)

__all__ = ["ShapeWorldBatch", "images_to_tensor", "render_objects"]


def _shape_masks(shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks (N, H, W) of N shapes given per-image shape index, centre and radius."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    out = np.zeros((len(shape), size, size), dtype=bool)
    for k, name in enumerate(SHAPES):
        idx = np.flatnonzero(shape == k)
        if idx.size == 0:
            continue
        dx = np.abs(coords[None, None, :] - cx[idx, None, None])  # (n, 1, W)
        dy = coords[None, :, None] - cy[idx, None, None]  # (n, H, 1)
        rk = r[idx, None, None]
        if name == "circle":
            out[idx] = dx**2 + dy**2 <= rk**2
        elif name == "square":
            out[idx] = (dx <= 0.85 * rk) & (np.abs(dy) <= 0.85 * rk)
        elif name == "triangle":  # upright: apex at cy - r, base at cy + 0.8 r, half-width r at the base
            out[idx] = (dy <= 0.8 * rk) & (dx <= (dy + rk) * (1.0 / 1.8))
        else:  # cross: two bars of half-width r / 2.8
            arm = rk / 2.8
            out[idx] = ((dx <= rk) & (np.abs(dy) <= arm)) | ((dx <= arm) & (np.abs(dy) <= rk))
    return out


@dataclass
class ShapeWorldBatch:
    """A batch of ShapeWorld images with everything known about them. Supports notebook 00_welcome.

    ``images``: uint8 (N, H, W, 3). ``masks``: uint8 (N, H, W), 0 for background and k for the
    k-th object. The per-object arrays are (N, 3), with ``present`` saying which slots are used.
    """

    images: np.ndarray
    masks: np.ndarray
    captions: list[str]
    kinds: np.ndarray  # (N,) index into KINDS
    present: np.ndarray  # (N, 3) bool
    colors: np.ndarray  # (N, 3) index into COLORS
    shapes: np.ndarray  # (N, 3) index into SHAPES
    sizes: np.ndarray  # (N, 3) 0 small, 1 large
    centers: np.ndarray  # (N, 3, 2) (cx, cy) in pixels
    relations: np.ndarray  # (N,) index into RELATIONS, -1 where unused
    locations: np.ndarray  # (N,) index into LOCATIONS, -1 where unused
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def tensors(self) -> torch.Tensor:
        """Images as float (N, 3, H, W) in [-1, 1], the range diffusion models use."""
        return images_to_tensor(self.images)

    def semantic_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel shape and colour classes (N, H, W): 0 is background, k is SHAPES[k-1] / COLORS[k-1]."""
        shape_mask = np.zeros_like(self.masks)
        color_mask = np.zeros_like(self.masks)
        for k in range(MAX_OBJECTS):
            on = self.masks == k + 1
            shape_mask = np.where(on, (self.shapes[:, k] + 1)[:, None, None], shape_mask)
            color_mask = np.where(on, (self.colors[:, k] + 1)[:, None, None], color_mask)
        return shape_mask.astype(np.uint8), color_mask.astype(np.uint8)

    def scene(self, i: int) -> Scene:
        """The i-th image's scene as plain Python objects."""
        objs = tuple(
            ShapeObject(COLOR_NAMES[self.colors[i, k]], SHAPES[self.shapes[i, k]],
                        ("small", "large")[self.sizes[i, k]], float(self.centers[i, k, 0]),
                        float(self.centers[i, k, 1]))
            for k in range(MAX_OBJECTS) if self.present[i, k])
        rel = RELATIONS[self.relations[i]] if self.relations[i] >= 0 else None
        loc = list(LOCATIONS)[self.locations[i]] if self.locations[i] >= 0 else None
        return Scene(KINDS[self.kinds[i]], objs, self.captions[i], rel, loc)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]. Supports notebook 00_welcome."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # (N,H,W,3) -> (N,3,H,W)
    return x / 127.5 - 1


def render_objects(fields: dict, rng: np.random.Generator, image_size: int, scale: float,
                   color_jitter: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the objects of every scene at once: images (N, H, W, 3) uint8 and instance masks.

    ``fields``: the per-object arrays of ``ShapeWorldBatch`` (present, colors, shapes, sizes, centers);
    ``scale``: ``image_size / 32``; ``color_jitter``: the largest change of each colour channel, drawn
    from ``rng``.
    ``ShapeWorld.render`` calls it with the world's settings.
    """
    n = len(fields["present"])
    s = image_size
    images = np.empty((n, s, s, 3), np.uint8)
    images[:] = BACKGROUND
    masks = np.zeros((n, s, s), np.uint8)
    palette = np.array(list(COLORS.values()), dtype=np.int16)
    radii_of_size = np.array(list(SIZES.values()), dtype=np.float32) * scale
    for k in range(MAX_OBJECTS):
        idx = np.flatnonzero(fields["present"][:, k])
        if idx.size == 0:
            continue
        on = _shape_masks(fields["shapes"][idx, k], fields["centers"][idx, k, 0], fields["centers"][idx, k, 1],
                          radii_of_size[fields["sizes"][idx, k]], s)
        rgb = palette[fields["colors"][idx, k]]
        if color_jitter:
            rgb = rgb + rng.integers(-color_jitter, color_jitter + 1, size=rgb.shape)
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        sub = images[idx]
        sub[on] = np.repeat(rgb, on.reshape(idx.size, -1).sum(1), axis=0)
        images[idx] = sub
        masks[idx] = np.where(on, k + 1, masks[idx])
    return images, masks
