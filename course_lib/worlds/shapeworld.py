"""ShapeWorld: a procedural world of captioned images. Defined in notebook 00_welcome.

Coloured shapes on a black background, 32x32 RGB by default, each image with a caption from a
small grammar and a segmentation mask. Because the world is generated, the truth of every
caption is known, so later notebooks can measure exactly whether a generated image obeys its
prompt. Three kinds of scene:

- ``single``: "a small red circle in the top left"
- ``pair``:   "a red circle above a blue square" (two different shapes, a spatial relation)
- ``count``:  "three green triangles" (2 or 3 copies of one coloured shape)

A fixed set of colour-shape combinations (:data:`HELD_OUT_PAIRS`) never appears in
``split="train"``; ``split="heldout"`` makes every scene contain at least one of them, so the
course can test whether its models compose what they never saw. Rendering is vectorised with
NumPy: tens of thousands of images per second on two cores.

This module draws scenes (``ShapeWorld``); the vocabulary and caption grammar are in
``shapeworld_scenes``, the rendering and ``ShapeWorldBatch`` in ``shapeworld_render``. Their public
names are importable from here too.
"""

from __future__ import annotations

import numpy as np
import torch

from course_lib.worlds.shapeworld_render import ShapeWorldBatch, images_to_tensor, render_objects
from course_lib.worlds.shapeworld_scenes import (
    BACKGROUND,
    COLOR_NAMES,
    COLORS,
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    KINDS,
    LOCATION_PHRASES,
    LOCATIONS,
    MAX_OBJECTS,
    PLURALS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    CaptionSpec,
    Scene,
    ShapeObject,
    caption_words,
    count_caption,
    is_held_out,
    pair_caption,
    parse_caption,
    single_caption,
)

__all__ = ["COLORS", "SHAPES", "PLURALS", "SIZES", "LOCATIONS", "LOCATION_PHRASES", "RELATIONS", "COUNT_WORDS",
           "KINDS", "SPLITS", "COLOR_NAMES", "HELD_OUT_PAIRS", "BACKGROUND", "MAX_OBJECTS", "caption_words",
           "is_held_out", "ShapeObject", "Scene", "CaptionSpec", "single_caption", "pair_caption", "count_caption",
           "parse_caption", "ShapeWorldBatch", "images_to_tensor", "ShapeWorld", "concept_scenes"]

_HELD = np.zeros((len(COLORS), len(SHAPES)), dtype=bool)
for _c, _s in HELD_OUT_PAIRS:
    _HELD[COLOR_NAMES.index(_c), SHAPES.index(_s)] = True


class ShapeWorld:
    """The generator of ShapeWorld scenes. Defined in notebook 00_welcome.

    ``ShapeWorld().sample(1000, seed=0)`` gives 1,000 training images with captions and masks; the
    same seed always gives the same batch. ``split="heldout"`` gives scenes that each contain a
    held-out colour-shape pair; ``split="all"`` draws from every combination (used to train the
    evaluators, which must judge held-out combinations too).
    """

    def __init__(self, image_size: int = 32, kind_weights: dict[str, float] | None = None,
                 color_jitter: int = 12):
        if image_size < 24:
            raise ValueError(f"image_size must be at least 24 pixels for the shapes to fit, got {image_size}")
        self.image_size = image_size
        self.scale = image_size / 32
        weights = kind_weights or {"single": 0.4, "pair": 0.4, "count": 0.2}
        for k in weights:
            if k not in KINDS:
                raise ValueError(f"unknown scene kind {k!r}; known kinds: {', '.join(KINDS)}")
        total = sum(weights.values())
        self.kind_probs = np.array([weights.get(k, 0.0) / total for k in KINDS])
        self.color_jitter = color_jitter

    # -- drawing the attributes -------------------------------------------------------------
    @staticmethod
    def _draw_pairs(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(colour, shape) indices for n objects, respecting the split."""
        if split == "heldout":
            pick = rng.integers(len(HELD_OUT_PAIRS), size=n)
            cs = np.array([(COLOR_NAMES.index(c), SHAPES.index(s)) for c, s in HELD_OUT_PAIRS])[pick]
            return cs[:, 0], cs[:, 1]
        color = rng.integers(len(COLORS), size=n)
        shape = rng.integers(len(SHAPES), size=n)
        if split == "train":
            bad = _HELD[color, shape]
            while bad.any():
                color[bad] = rng.integers(len(COLORS), size=bad.sum())
                shape[bad] = rng.integers(len(SHAPES), size=bad.sum())
                bad = _HELD[color, shape]
        return color, shape

    def _place_apart(self, rng: np.random.Generator, radii: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """Centres (N, K, 2) for K objects per image that neither overlap nor leave the image."""
        n, k = radii.shape
        centers = np.zeros((n, k, 2), dtype=np.float32)
        todo = np.ones(n, dtype=bool)
        for _ in range(200):
            idx = np.flatnonzero(todo)
            if idx.size == 0:
                break
            c = rng.uniform(lo, hi, size=(idx.size, k, 2)).astype(np.float32)
            c = np.clip(c, radii[idx, :, None] + 0.5, self.image_size - radii[idx, :, None] - 0.5)
            ok = np.ones(idx.size, dtype=bool)
            for a in range(k):
                for b in range(a + 1, k):
                    d = np.linalg.norm(c[:, a] - c[:, b], axis=1)
                    ok &= d >= radii[idx, a] + radii[idx, b] + 2.0 * self.scale
            centers[idx[ok]] = c[ok]
            todo[idx[ok]] = False
        if todo.any():  # never seen in practice; shrink what could not be placed and retry
            radii[todo] = SIZES["small"] * self.scale
            centers[todo] = self._place_apart(rng, radii[todo], lo, hi)
        return centers

    # -- the three kinds of scene --------------------------------------------------------------
    def _singles(self, rng, n, split, out):
        color, shape = self._draw_pairs(rng, n, split)
        size = rng.integers(2, size=n)
        loc = rng.integers(len(LOCATIONS), size=n)
        rows, cols = np.array(list(LOCATIONS.values()))[loc].T
        step = self.image_size / 4
        jitter = rng.uniform(-1.5, 1.5, size=(n, 2)) * self.scale
        out["colors"][:, 0], out["shapes"][:, 0], out["sizes"][:, 0] = color, shape, size
        out["centers"][:, 0, 0] = (cols + 1) * step + jitter[:, 0]
        out["centers"][:, 0, 1] = (rows + 1) * step + jitter[:, 1]
        out["present"][:, 0] = True
        out["locations"][:] = loc
        out["captions"] = [single_caption(COLOR_NAMES[c], SHAPES[s], ("small", "large")[z], list(LOCATIONS)[i])
                           for c, s, z, i in zip(color, shape, size, loc, strict=True)]

    def _pairs(self, rng, n, split, out):
        # Object a is the subject ("a X above a Y"); in the held-out split one of the two,
        # chosen at random, is a held-out combination and the other is not.
        ca, sa = self._draw_pairs(rng, n, "train" if split == "train" else "all")
        cb, sb = self._draw_pairs(rng, n, "train" if split == "train" else "all")
        if split == "heldout":
            hc, hs = self._draw_pairs(rng, n, "heldout")
            oc, os_ = self._draw_pairs(rng, n, "train")
            first = rng.random(n) < 0.5
            ca, sa = np.where(first, hc, oc), np.where(first, hs, os_)
            cb, sb = np.where(first, oc, hc), np.where(first, os_, hs)
        same = sa == sb
        while same.any():  # the two shapes differ
            if split == "heldout":  # re-draw the non-held-out object
                first_same = first & same
                oc2, os2 = self._draw_pairs(rng, n, "train")
                cb, sb = np.where(first_same, oc2, cb), np.where(first_same, os2, sb)
                ca, sa = np.where(same & ~first, oc2, ca), np.where(same & ~first, os2, sa)
            else:
                c2, s2 = self._draw_pairs(rng, n, split)
                cb, sb = np.where(same, c2, cb), np.where(same, s2, sb)
            same = sa == sb
        size = rng.integers(2, size=(n, 2))
        radii = np.array(list(SIZES.values()), dtype=np.float32)[size] * self.scale
        rel = rng.integers(len(RELATIONS), size=n)
        centers = self._relation_centers(rng, radii, rel)
        for k, (c, s) in enumerate(((ca, sa), (cb, sb))):
            out["colors"][:, k], out["shapes"][:, k], out["sizes"][:, k] = c, s, size[:, k]
        out["centers"][:, :2] = centers
        out["present"][:, :2] = True
        out["relations"][:] = rel
        out["captions"] = [pair_caption(COLOR_NAMES[a], SHAPES[b], RELATIONS[r], COLOR_NAMES[c], SHAPES[d])
                           for a, b, r, c, d in zip(ca, sa, rel, cb, sb, strict=True)]

    def _relation_centers(self, rng, radii, rel):
        """Centres for a pair so that the relation is clear: the gap along the relation's axis
        is at least the sum of the radii plus two pixels, and larger than the offset across it."""
        n = len(rel)
        s = self.image_size
        along_a = np.empty(n, np.float32)
        along_b = np.empty(n, np.float32)
        gap = radii[:, 0] + radii[:, 1] + 2 * self.scale
        lo_a = radii[:, 0] + 0.5
        hi_a = s - 0.5 - radii[:, 1] - gap  # leave room for b after a
        along_a = rng.uniform(0, 1, n) * np.maximum(hi_a - lo_a, 0) + lo_a
        room_b = s - 0.5 - radii[:, 1] - (along_a + gap)
        along_b = along_a + gap + rng.uniform(0, 1, n) * np.maximum(room_b, 0)
        # across the axis: both near a shared line, offset less than the gap along the axis
        line = rng.uniform(0.3 * s, 0.7 * s, n)
        max_off = np.minimum(0.35 * (along_b - along_a), 3 * self.scale)
        off = rng.uniform(-1, 1, (n, 2)) * max_off[:, None]
        across = np.clip(line[:, None] + off, radii + 0.5, s - radii - 0.5)
        # 'a above b': a has the smaller y; 'a below b' swaps; left/right use x.
        first_is_a = (rel == 0) | (rel == 2)  # above, to the left of
        pos_a = np.where(first_is_a, along_a, along_b)
        pos_b = np.where(first_is_a, along_b, along_a)
        vertical = rel < 2
        centers = np.zeros((n, 2, 2), np.float32)
        centers[:, 0, 0] = np.where(vertical, across[:, 0], pos_a)
        centers[:, 0, 1] = np.where(vertical, pos_a, across[:, 0])
        centers[:, 1, 0] = np.where(vertical, across[:, 1], pos_b)
        centers[:, 1, 1] = np.where(vertical, pos_b, across[:, 1])
        return centers

    def _counts(self, rng, n, split, out):
        color, shape = self._draw_pairs(rng, n, split)
        count = rng.integers(2, 4, size=n)
        size = rng.integers(2, size=(n, MAX_OBJECTS))
        size[count == 3] = 0  # three large shapes crowd a 32x32 image; counting uses small ones
        radii = np.array(list(SIZES.values()), dtype=np.float32)[size] * self.scale
        centers = self._place_apart(rng, radii, 0, self.image_size)
        present = np.arange(MAX_OBJECTS)[None, :] < count[:, None]
        out["colors"][:] = color[:, None]
        out["shapes"][:] = shape[:, None]
        out["sizes"][:] = size
        out["centers"][:] = centers
        out["present"][:] = present
        out["captions"] = [count_caption(int(k), COLOR_NAMES[c], SHAPES[s])
                           for k, c, s in zip(count, color, shape, strict=True)]

    # -- public API ------------------------------------------------------------------------------
    def sample(self, n: int, seed: int = 0, split: str = "train", kinds: tuple[str, ...] | None = None
               ) -> ShapeWorldBatch:
        """``n`` scenes, rendered, deterministic for a given (n, seed, split, kinds).

        ``kinds`` restricts the scene kinds (default: all three, in the world's proportions).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        probs = self.kind_probs.copy()
        if kinds is not None:
            for k in kinds:
                if k not in KINDS:
                    raise ValueError(f"unknown scene kind {k!r}; known kinds: {', '.join(KINDS)}")
            probs = np.array([p if k in kinds else 0.0 for k, p in zip(KINDS, probs, strict=True)])
            if probs.sum() == 0:
                probs = np.array([1.0 if k in kinds else 0.0 for k in KINDS])
            probs /= probs.sum()
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        kind = rng.choice(len(KINDS), size=n, p=probs)
        fields = {
            "present": np.zeros((n, MAX_OBJECTS), bool), "colors": np.zeros((n, MAX_OBJECTS), np.int64),
            "shapes": np.zeros((n, MAX_OBJECTS), np.int64), "sizes": np.zeros((n, MAX_OBJECTS), np.int64),
            "centers": np.zeros((n, MAX_OBJECTS, 2), np.float32),
            "relations": np.full(n, -1, np.int64), "locations": np.full(n, -1, np.int64),
        }
        captions: list[str] = [""] * n
        for k, make in enumerate((self._singles, self._pairs, self._counts)):
            idx = np.flatnonzero(kind == k)
            if idx.size == 0:
                continue
            part = {key: val[idx] for key, val in fields.items()}
            make(rng, idx.size, split, part)
            for key in fields:
                fields[key][idx] = part[key]
            for i, cap in zip(idx, part["captions"], strict=True):
                captions[i] = cap
        images, masks = self.render(fields, rng)
        return ShapeWorldBatch(images, masks, captions, kind, **fields)

    def render(self, fields: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw the objects of every scene at once: images (N, H, W, 3) uint8 and instance masks."""
        return render_objects(fields, rng, self.image_size, self.scale, self.color_jitter)

    def render_caption(self, caption: str, n: int = 1, seed: int = 0) -> ShapeWorldBatch:
        """``n`` images that each make ``caption`` true (the caption may be any grammatical one,
        held out or not). Defined in notebook 00_welcome."""
        spec = parse_caption(caption)
        rng = np.random.default_rng([seed, 99])
        fields = {
            "present": np.zeros((n, MAX_OBJECTS), bool), "colors": np.zeros((n, MAX_OBJECTS), np.int64),
            "shapes": np.zeros((n, MAX_OBJECTS), np.int64), "sizes": np.zeros((n, MAX_OBJECTS), np.int64),
            "centers": np.zeros((n, MAX_OBJECTS, 2), np.float32),
            "relations": np.full(n, -1, np.int64), "locations": np.full(n, -1, np.int64),
        }
        kind = KINDS.index(spec.kind)
        # Generate scenes of the right kind, then overwrite their attributes with the caption's.
        batch = self.sample(n, seed=seed, split="all", kinds=(spec.kind,))
        for key in fields:
            fields[key] = getattr(batch, key).copy()
        for k, (c, s) in enumerate(spec.objects):
            fields["colors"][:, k] = COLOR_NAMES.index(c)
            fields["shapes"][:, k] = SHAPES.index(s)
        if spec.kind == "single":
            fields["sizes"][:, 0] = list(SIZES).index(spec.size)
            row, col = LOCATIONS[spec.location]
            step = self.image_size / 4
            jitter = rng.uniform(-1.5, 1.5, size=(n, 2)) * self.scale
            fields["centers"][:, 0] = np.stack([(col + 1) * step + jitter[:, 0], (row + 1) * step + jitter[:, 1]], 1)
            fields["locations"][:] = list(LOCATIONS).index(spec.location)
        elif spec.kind == "pair":
            rel = np.full(n, RELATIONS.index(spec.relation))
            radii = np.array(list(SIZES.values()), dtype=np.float32)[fields["sizes"][:, :2]] * self.scale
            fields["centers"][:, :2] = self._relation_centers(rng, radii, rel)
            fields["relations"][:] = rel
        else:
            fields["present"][:] = np.arange(MAX_OBJECTS)[None, :] < spec.count
            fields["sizes"][:] = 0
            radii = np.full((n, MAX_OBJECTS), SIZES["small"] * self.scale, np.float32)
            fields["centers"][:] = self._place_apart(rng, radii, 0, self.image_size)
        images, masks = self.render(fields, rng)
        return ShapeWorldBatch(images, masks, [caption] * n, np.full(n, kind), **fields)


def _split_for(color: str, shape: str) -> str:
    return "heldout" if is_held_out(color, shape) else "all"


def concept_scenes(color: str, shape: str, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` ShapeWorld scenes whose caption names the ``color`` ``shape`` (single, pair and count
    scenes): images ``(n, 3, 32, 32)`` in [-1, 1] and captions. Held-out pairs are drawn from the
    held-out split, where every scene holds one. Supports notebook 13_beyond_text_to_image.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    world, split = ShapeWorld(), _split_for(color, shape)
    images, captions, chunk = [], [], 0
    while len(captions) < n:
        batch = world.sample(max(4 * n, 256), seed=seed + chunk, split=split)
        keep = [i for i, c in enumerate(batch.captions) if (color, shape) in parse_caption(c).objects]
        images.append(batch.tensors()[keep])
        captions.extend(batch.captions[i] for i in keep)
        chunk += 1
    return torch.cat(images)[:n], captions[:n]
