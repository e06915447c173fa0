"""ShapeWorld's vocabulary, scenes and caption grammar. Defined in notebook 00_welcome.

The colours, shapes, sizes, locations and relations a scene can have; which colour-shape pairs are
held out of training (``HELD_OUT_PAIRS``, ``is_held_out``); what a scene holds (``Scene``,
``ShapeObject``); the three caption forms (``single_caption``, ``pair_caption``, ``count_caption``)
and ``parse_caption``, which turns a caption back into what it claims (``CaptionSpec``).
Drawing scenes is ``shapeworld``'s job, rendering them ``shapeworld_render``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["COLORS", "SHAPES", "PLURALS", "SIZES", "LOCATIONS", "LOCATION_PHRASES", "RELATIONS", "COUNT_WORDS",
           "KINDS", "SPLITS", "COLOR_NAMES", "HELD_OUT_PAIRS", "BACKGROUND", "MAX_OBJECTS", "caption_words",
           "is_held_out", "ShapeObject", "Scene", "CaptionSpec", "single_caption", "pair_caption", "count_caption",
           "parse_caption"]

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
    """Whether a colour-shape combination is held out of training. Supports notebook 00_welcome."""
    _check_color(color)
    _check_shape(shape)
    return (color, shape) in HELD_OUT_PAIRS


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
    uses them (pair and single scenes). Supports notebook 00_welcome."""

    kind: str
    objects: tuple[ShapeObject, ...]
    caption: str
    relation: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption claims, parsed from the grammar. Supports notebook 00_welcome.

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
    """Caption of a single-object scene. Supports notebook 00_welcome."""
    _check_color(color)
    _check_shape(shape)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    if location not in LOCATIONS:
        raise ValueError(f"unknown location {location!r}; known locations: {', '.join(LOCATIONS)}")
    return f"a {size} {color} {shape} {LOCATION_PHRASES[location]}"


def pair_caption(color_a: str, shape_a: str, relation: str, color_b: str, shape_b: str) -> str:
    """Caption of a two-object scene, e.g. "a red circle above a blue square". Supports notebook 00_welcome."""
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
    """Caption of a counting scene, e.g. "three green triangles". Supports notebook 00_welcome."""
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
