"""Prompt adherence for ShapeWorld, in the categories of GenEval. Defined in notebook 00_welcome.

GenEval (Ghosh et al. 2023) judges text-to-image models by detecting the objects in each image and
checking them against the prompt. ShapeWorld makes the same thing exact: the attribute network
labels every pixel with a shape and a colour, connected regions are the objects it sees, and each
caption's claims are checked against that object list.

Which caption is scored in which category:

| category        | captions | correct when                                                        |
|-----------------|----------|---------------------------------------------------------------------|
| single_object   | single   | exactly one object is seen, of the named shape                      |
| colors          | single   | ...and it has the named colour                                      |
| two_objects     | pair     | exactly two objects are seen, of the two named shapes               |
| position        | pair     | ...and they stand in the named relation                              |
| color_binding   | pair     | ...and each shape has its own named colour                           |
| counting        | count    | exactly N objects are seen, all of the named shape                  |

``exact`` is stricter: every claim of the caption is right (for single captions also the size
and location, for count captions also the colour). ``overall`` is the mean of the six
categories, as GenEval reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from course_lib.worlds.shapeworld import COLOR_NAMES, LOCATIONS, SHAPES, SIZES, CaptionSpec, parse_caption

CATEGORIES = ("single_object", "two_objects", "counting", "colors", "position", "color_binding")
# Area of a shape of radius r is AREA_FACTOR[shape] * r^2 (see shapeworld_render._shape_masks).
AREA_FACTOR = {"circle": np.pi, "square": 1.7**2, "triangle": 1.8, "cross": 4 / 1.4 - 1 / 1.96}


@dataclass(frozen=True)
class SeenObject:
    """An object the attribute network sees: its shape, colour, size, centre (x, y) and area."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    area: int


@torch.no_grad()
def detect_objects(images: torch.Tensor, net: torch.nn.Module | None = None, min_area: int = 8,
                   batch_size: int = 500) -> list[list[SeenObject]]:
    """The objects in each image (N, 3, H, W) in [-1, 1], as the attribute network sees them.

    Supports notebook 00_welcome.
    """
    if net is None:
        from course_lib.evaluate.classifiers import load_attribute_net
        net = load_attribute_net()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    scale = images.shape[-1] / 32
    net.eval()
    results: list[list[SeenObject]] = []
    for i in range(0, len(images), batch_size):
        shape_logits, color_logits = net(images[i:i + batch_size].float().cpu())
        shape_p = shape_logits.softmax(1).numpy()  # (B, 1 + shapes, H, W)
        color_p = color_logits.softmax(1).numpy()
        foreground = shape_p.argmax(1) > 0  # (B, H, W)
        for b in range(len(foreground)):
            labels, count = ndimage.label(foreground[b], structure=np.ones((3, 3)))
            objects = []
            for k in range(1, count + 1):
                ys, xs = np.nonzero(labels == k)
                if len(ys) < min_area * scale**2:
                    continue
                shape = SHAPES[int(shape_p[b, 1:, ys, xs].sum(0).argmax())]
                color = COLOR_NAMES[int(color_p[b, 1:, ys, xs].sum(0).argmax())]
                radius = np.sqrt(len(ys) / AREA_FACTOR[shape]) / scale
                size = "large" if radius > (SIZES["small"] + SIZES["large"]) / 2 else "small"
                objects.append(SeenObject(shape, color, size, float(xs.mean() + 0.5), float(ys.mean() + 0.5),
                                          len(ys)))
            results.append(objects)
    return results


def relation_holds(a: SeenObject, b: SeenObject, relation: str) -> bool:
    """Whether object ``a`` is ``relation`` object ``b``: the offset along the relation's axis has the
    right sign and is larger than the offset across it. Supports notebook 00_welcome."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {"above": dy > abs(dx), "below": -dy > abs(dx),
            "to the left of": dx > abs(dy), "to the right of": -dx > abs(dy)}[relation]


def location_of(obj: SeenObject, image_size: int) -> str:
    """The name of the 3x3 grid cell whose centre is nearest to the object."""
    step = image_size / 4
    col = int(np.clip(np.rint(obj.cx / step) - 1, 0, 2))
    row = int(np.clip(np.rint(obj.cy / step) - 1, 0, 2))
    return next(name for name, rc in LOCATIONS.items() if rc == (row, col))


def check_caption(spec: CaptionSpec, objects: list[SeenObject], image_size: int = 32) -> dict[str, bool]:
    """The categories that apply to a caption, each True when the image obeys it, plus ``exact``.

    Supports notebook 00_welcome.
    """
    if spec.kind == "single":
        (color, shape), = spec.objects
        one = len(objects) == 1 and objects[0].shape == shape
        colors = one and objects[0].color == color
        exact = colors and objects[0].size == spec.size and location_of(objects[0], image_size) == spec.location
        return {"single_object": one, "colors": colors, "exact": exact}
    if spec.kind == "pair":
        (ca, sa), (cb, sb) = spec.objects
        shapes = sorted(o.shape for o in objects)
        two = len(objects) == 2 and shapes == sorted([sa, sb])
        if not two:
            return {"two_objects": False, "position": False, "color_binding": False, "exact": False}
        a = next(o for o in objects if o.shape == sa)
        b = next(o for o in objects if o.shape == sb)
        position = relation_holds(a, b, spec.relation)
        binding = a.color == ca and b.color == cb
        return {"two_objects": True, "position": position, "color_binding": binding, "exact": position and binding}
    (color, shape) = spec.objects[0]
    counting = len(objects) == spec.count and all(o.shape == shape for o in objects)
    return {"counting": counting, "exact": counting and all(o.color == color for o in objects)}


@dataclass
class AdherenceReport:
    """Share of images that obey their captions, per category, overall and exact.

    Supports notebook 00_welcome.
    """

    per_category: dict[str, float]
    counts: dict[str, int]
    overall: float
    exact: float
    per_image: list[dict[str, bool]] = field(repr=False)

    def as_row(self, digits: int = 3) -> dict[str, float]:
        row = {k: round(v, digits) for k, v in self.per_category.items()}
        row["overall"] = round(self.overall, digits)
        row["exact"] = round(self.exact, digits)
        return row


def summarize(results: list[dict[str, bool]]) -> AdherenceReport:
    """Aggregate per-image checks into an :class:`AdherenceReport`. Supports notebook 00_welcome."""
    per_category, counts = {}, {}
    for cat in CATEGORIES:
        vals = [r[cat] for r in results if cat in r]
        if vals:
            per_category[cat] = float(np.mean(vals))
            counts[cat] = len(vals)
    overall = float(np.mean(list(per_category.values()))) if per_category else float("nan")
    exact = float(np.mean([r["exact"] for r in results])) if results else float("nan")
    return AdherenceReport(per_category, counts, overall, exact, results)


def score_adherence(images: torch.Tensor, captions: list[str], net: torch.nn.Module | None = None
                    ) -> AdherenceReport:
    """How well images obey their captions, in GenEval's categories.

    ``images``: (N, 3, H, W) in [-1, 1]; ``captions``: N ShapeWorld captions. Defined in notebook 00_welcome.
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions; give one caption per image")
    specs = [parse_caption(c) for c in captions]
    seen = detect_objects(images, net)
    return summarize([check_caption(s, o, images.shape[-1]) for s, o in zip(specs, seen, strict=True)])
