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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 190, 60),
    "cyan": (30, 200, 220),
    "blue": (40, 80, 235),
    "purple": (160, 60, 215),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES: dict[str, float] = {"small": 4.0, "large": 6.5}  # radius in pixels at 32x32
LOCATIONS: dict[str, tuple[int, int]] = {  # name -> (row, col) in a 3x3 grid
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
LOCATION_PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
COUNT_WORDS = {2: "two", 3: "three"}
KINDS: tuple[str, ...] = ("single", "pair", "count")
SPLITS: tuple[str, ...] = ("train", "heldout", "all")

COLOR_NAMES = tuple(COLORS)
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("green", "circle"), ("blue", "triangle"), ("yellow", "square"), ("purple", "cross"),
)
BACKGROUND = (0, 0, 0)
MAX_OBJECTS = 3


def caption_words() -> frozenset[str]:
    """Every word a ShapeWorld caption can use (what models trained on ShapeWorld know)."""
    words = set(COLORS) | set(SHAPES) | set(PLURALS.values()) | set(SIZES) | set(COUNT_WORDS.values()) | {"a"}
    return frozenset(words | {w for phrase in (*LOCATION_PHRASES.values(), *RELATIONS) for w in phrase.split()})


def _check_color(color: str) -> int:
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; known colours: {', '.join(COLORS)}")
    return COLOR_NAMES.index(color)


def _check_shape(shape: str) -> int:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    return SHAPES.index(shape)


def is_held_out(color: str, shape: str) -> bool:
    """Whether a colour-shape combination is held out of training. Defined in notebook 00_welcome."""
    _check_color(color)
    _check_shape(shape)
    return (color, shape) in HELD_OUT_PAIRS


_HELD = np.zeros((len(COLORS), len(SHAPES)), dtype=bool)
for _c, _s in HELD_OUT_PAIRS:
    _HELD[COLOR_NAMES.index(_c), SHAPES.index(_s)] = True


# ----------------------------------------------------------------------------------------------
# Scenes: what is in an image, and its caption
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: its colour, shape and size name, and its centre in pixels."""

    color: str
    shape: str
    size: str
    cx: float
    cy: float


@dataclass(frozen=True)
class Scene:
    """A scene's objects and its caption. ``relation`` and ``location`` are set where the caption
    uses them (pair and single scenes). Defined in notebook 00_welcome."""

    kind: str
    objects: tuple[ShapeObject, ...]
    caption: str
    relation: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption claims, parsed from the grammar. Defined in notebook 00_welcome.

    ``objects`` lists (colour, shape) pairs: one for a single scene, two for a pair (first is the
    subject of the relation), ``count`` copies of one for a count scene.
    """

    kind: str
    objects: tuple[tuple[str, str], ...]
    size: str | None = None
    location: str | None = None
    relation: str | None = None
    count: int | None = None

    @property
    def held_out(self) -> bool:
        return any((c, s) in HELD_OUT_PAIRS for c, s in self.objects)


def single_caption(color: str, shape: str, size: str, location: str) -> str:
    """Caption of a single-object scene. Defined in notebook 00_welcome."""
    _check_color(color)
    _check_shape(shape)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    if location not in LOCATIONS:
        raise ValueError(f"unknown location {location!r}; known locations: {', '.join(LOCATIONS)}")
    return f"a {size} {color} {shape} {LOCATION_PHRASES[location]}"


def pair_caption(color_a: str, shape_a: str, relation: str, color_b: str, shape_b: str) -> str:
    """Caption of a two-object scene, e.g. "a red circle above a blue square". Defined in notebook 00_welcome."""
    for c in (color_a, color_b):
        _check_color(c)
    for s in (shape_a, shape_b):
        _check_shape(s)
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known relations: {', '.join(RELATIONS)}")
    if shape_a == shape_b:
        raise ValueError("the two objects of a pair scene have different shapes in ShapeWorld; "
                         f"got {shape_a!r} twice")
    return f"a {color_a} {shape_a} {relation} a {color_b} {shape_b}"


def count_caption(count: int, color: str, shape: str) -> str:
    """Caption of a counting scene, e.g. "three green triangles". Defined in notebook 00_welcome."""
    _check_color(color)
    _check_shape(shape)
    if count not in COUNT_WORDS:
        raise ValueError(f"count must be one of {sorted(COUNT_WORDS)}, got {count!r}")
    return f"{COUNT_WORDS[count]} {color} {PLURALS[shape]}"


_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_SINGLE_RE = re.compile(rf"^a ({'|'.join(SIZES)}) ({_COLOR_RE}) ({_SHAPE_RE}) "
                        rf"({'|'.join(LOCATION_PHRASES.values())})$")
_PAIR_RE = re.compile(rf"^a ({_COLOR_RE}) ({_SHAPE_RE}) ({'|'.join(RELATIONS)}) a ({_COLOR_RE}) ({_SHAPE_RE})$")
_COUNT_RE = re.compile(rf"^({'|'.join(COUNT_WORDS.values())}) ({_COLOR_RE}) ({'|'.join(PLURALS.values())})$")
_PHRASE_TO_LOCATION = {v: k for k, v in LOCATION_PHRASES.items()}
_WORD_TO_COUNT = {v: k for k, v in COUNT_WORDS.items()}
_PLURAL_TO_SHAPE = {v: k for k, v in PLURALS.items()}


def parse_caption(caption: str) -> CaptionSpec:
    """Parse a ShapeWorld caption into what it claims.

    A caption outside the grammar is an error that names the word it does not know, or shows the
    three caption forms. Defined in notebook 00_welcome.
    """
    text = " ".join(caption.lower().strip().split())
    if m := _SINGLE_RE.match(text):
        size, color, shape, phrase = m.groups()
        return CaptionSpec("single", ((color, shape),), size=size, location=_PHRASE_TO_LOCATION[phrase])
    if m := _PAIR_RE.match(text):
        ca, sa, rel, cb, sb = m.groups()
        return CaptionSpec("pair", ((ca, sa), (cb, sb)), relation=rel)
    if m := _COUNT_RE.match(text):
        word, color, plural = m.groups()
        n = _WORD_TO_COUNT[word]
        return CaptionSpec("count", ((color, _PLURAL_TO_SHAPE[plural]),) * n, count=n)
    known = set(COLORS) | set(SHAPES) | set(PLURALS.values()) | set(SIZES) | set(COUNT_WORDS.values())
    known |= {w for phrase in (*LOCATION_PHRASES.values(), *RELATIONS) for w in phrase.split()} | {"a"}
    unknown = [w for w in text.split() if w not in known]
    hint = f" It uses words ShapeWorld does not know: {unknown}." if unknown else ""
    raise ValueError(
        f"{caption!r} is not a ShapeWorld caption.{hint} Captions look like "
        "'a small red circle in the top left', 'a red circle above a blue square' or "
        f"'three green triangles'; colours: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}.")


# ----------------------------------------------------------------------------------------------
# Rendering: all images of a batch at once
# ----------------------------------------------------------------------------------------------
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
    """A batch of ShapeWorld images with everything known about them. Defined in notebook 00_welcome.

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
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]. Defined in notebook 00_welcome."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # (N,H,W,3) -> (N,3,H,W)
    return x / 127.5 - 1


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3). Defined in notebook 00_welcome."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


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
        n = len(fields["present"])
        s = self.image_size
        images = np.empty((n, s, s, 3), np.uint8)
        images[:] = BACKGROUND
        masks = np.zeros((n, s, s), np.uint8)
        palette = np.array(list(COLORS.values()), dtype=np.int16)
        radii_of_size = np.array(list(SIZES.values()), dtype=np.float32) * self.scale
        for k in range(MAX_OBJECTS):
            idx = np.flatnonzero(fields["present"][:, k])
            if idx.size == 0:
                continue
            on = _shape_masks(fields["shapes"][idx, k], fields["centers"][idx, k, 0], fields["centers"][idx, k, 1],
                              radii_of_size[fields["sizes"][idx, k]], s)
            rgb = palette[fields["colors"][idx, k]]
            if self.color_jitter:
                rgb = rgb + rng.integers(-self.color_jitter, self.color_jitter + 1, size=rgb.shape)
            rgb = np.clip(rgb, 0, 255).astype(np.uint8)
            sub = images[idx]
            sub[on] = np.repeat(rgb, on.reshape(idx.size, -1).sum(1), axis=0)
            images[idx] = sub
            masks[idx] = np.where(on, k + 1, masks[idx])
        return images, masks

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


class ShapeWorldDataset(Dataset):
    """``n`` pre-rendered ShapeWorld images as a torch Dataset of (image, caption).

    Images are float (3, H, W) in [-1, 1]. Defined in notebook 00_welcome.
    """

    def __init__(self, n: int, seed: int = 0, split: str = "train", image_size: int = 32,
                 kinds: tuple[str, ...] | None = None):
        self.batch = ShapeWorld(image_size).sample(n, seed=seed, split=split, kinds=kinds)
        self.images = self.batch.tensors()
        self.captions = self.batch.captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.images[i], self.captions[i]
