"""Measuring the course's CLIP: zero-shot classification and retrieval on ShapeWorld.

Defined in notebook 04_clip_text_embeddings. ``evaluate_clip`` measures a contrastive model on fresh
ShapeWorld images of a split (seen or held-out colour-shape pairs): attributes, counting, relations,
colour binding and retrieval.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import torch

from course_lib.models.clip import ContrastiveModel, retrieval_recall_at_k
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.train.clip_model import EVAL_SEED, caption_key
from course_lib.worlds import shapeworld as sw

__all__ = ["encode_texts", "encode_images", "marginal_accuracy", "evaluate_clip", "format_report"]


@torch.no_grad()
def encode_texts(model: ContrastiveModel, tokenizer: CLIPStyleTokenizer, texts: Sequence[str],
                 batch_size: int = 512) -> torch.Tensor:
    """Unit text embeddings (N, E) of ``texts`` (padded to the longest, which is exact: causal mask).

    Defined in notebook 04_clip_text_embeddings.
    """
    device = next(model.parameters()).device
    out = [model.encode_text(tokenizer(list(texts[i:i + batch_size]), padding="longest").to(device))
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def encode_images(model: ContrastiveModel, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Unit image embeddings (N, E). Defined in notebook 04_clip_text_embeddings."""
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(images[i:i + batch_size].to(device))
                      for i in range(0, len(images), batch_size)])


def marginal_accuracy(probs: torch.Tensor, axis: int, truth: torch.Tensor) -> float:
    """Accuracy of one attribute read off probabilities over a grid of full captions.

    ``probs`` is (N, *grid) (each image's softmax over every caption of the grammar); the class
    probability of a value is the sum over the captions that say it (marginalising the other
    attributes). Supports notebook 04_clip_text_embeddings.
    """
    other = [d + 1 for d in range(probs.dim() - 1) if d != axis]
    return (probs.sum(dim=other).argmax(dim=1) == truth).float().mean().item()


@torch.no_grad()
def evaluate_clip(model: ContrastiveModel, tokenizer: CLIPStyleTokenizer, split: str = "train",
                  n: int = 500, seed: int = EVAL_SEED) -> dict[str, float]:
    """Zero-shot classification and retrieval on fresh ShapeWorld images of ``split``.

    - ``colour``, ``shape``, ``size``, ``location``: single-object images; each image gets a softmax
      over all 576 grammatical single-object captions, and a class's probability is the sum over
      the captions that say it (``marginal_accuracy``);
    - ``single_caption``: the best of all 576 single-object captions is exactly the true one;
    - ``count``: two vs three (count images; marginalised over the 64 count captions);
    - ``relation``: pair images, the true caption against the same objects with each of the 4 relations;
    - ``binding``: pair images with two different colours, the true caption against the one with
      the colours swapped ("a blue circle above a red square"); chance is 0.5;
    - ``image_to_text@k`` / ``text_to_image@k``: retrieval among ``n`` images of all kinds and their
      captions (captions with the same meaning, ``caption_key``, count as correct).

    With ``split="heldout"`` every image holds a colour-shape pair never seen in training.
    Defined in notebook 04_clip_text_embeddings.
    """
    world = sw.ShapeWorld()
    was_training = model.training
    model.eval()
    try:
        result: dict[str, float] = {}
        # single objects: one grid of caption embeddings, (colour, shape, size, location, E)
        sizes, locations = list(sw.SIZES), list(sw.LOCATIONS)
        captions = [sw.single_caption(c, s, z, loc)
                    for c, s, z, loc in product(sw.COLORS, sw.SHAPES, sizes, locations)]
        flat = encode_texts(model, tokenizer, captions)
        grid = flat.view(len(sw.COLORS), len(sw.SHAPES), len(sizes), len(locations), -1)
        singles = world.sample(n, seed=seed, split=split, kinds=("single",))
        img = encode_images(model, singles.tensors())
        logits = model.scale() * img @ flat.T  # (N, 576)
        probs = logits.softmax(dim=1).view(n, *grid.shape[:-1])  # (N, 8, 4, 2, 9)
        truths = {"colour": singles.colors[:, 0], "shape": singles.shapes[:, 0], "size": singles.sizes[:, 0],
                  "location": singles.locations}
        for axis, (name, truth) in enumerate(truths.items()):
            result[name] = marginal_accuracy(probs, axis, torch.as_tensor(truth))
        best = logits.argmax(dim=1)
        result["single_caption"] = sum(captions[i] == c for i, c in zip(best.tolist(), singles.captions,
                                                                          strict=True)) / n
        # counting: two vs three
        counts = world.sample(n, seed=seed + 1, split=split, kinds=("count",))
        count_grid = encode_texts(model, tokenizer, [sw.count_caption(k, c, s) for k, c, s in
                                                     product((2, 3), sw.COLORS, sw.SHAPES)])
        img = encode_images(model, counts.tensors())
        probs = (model.scale() * img @ count_grid.T).softmax(dim=1).view(n, 2, len(sw.COLORS), len(sw.SHAPES))
        result["count"] = marginal_accuracy(probs, 0, torch.as_tensor(counts.present.sum(axis=1) - 2))
        # pairs: relation, and colour binding
        pairs = world.sample(n, seed=seed + 2, split=split, kinds=("pair",))
        img = encode_images(model, pairs.tensors())
        specs = [sw.parse_caption(c) for c in pairs.captions]
        options = [sw.pair_caption(a[0], a[1], rel, b[0], b[1]) for (a, b) in (s.objects for s in specs)
                   for rel in sw.RELATIONS]
        text = encode_texts(model, tokenizer, options).view(n, len(sw.RELATIONS), -1)  # (N, 4, E)
        pred = torch.einsum("ne,nke->nk", img, text).argmax(dim=1)
        result["relation"] = (pred == torch.as_tensor(pairs.relations)).float().mean().item()
        keep = [i for i, s in enumerate(specs) if s.objects[0][0] != s.objects[1][0]]
        swapped = [sw.pair_caption(specs[i].objects[1][0], specs[i].objects[0][1], specs[i].relation,
                                   specs[i].objects[0][0], specs[i].objects[1][1]) for i in keep]
        true_text = encode_texts(model, tokenizer, [pairs.captions[i] for i in keep])
        swap_text = encode_texts(model, tokenizer, swapped)
        sims = (img[keep] * true_text).sum(-1), (img[keep] * swap_text).sum(-1)
        result["binding"] = (sims[0] > sims[1]).float().mean().item()
        # retrieval among n images of every kind and their captions
        mixed = world.sample(n, seed=seed + 3, split=split)
        recall = retrieval_recall_at_k(encode_images(model, mixed.tensors()),
                                       encode_texts(model, tokenizer, mixed.captions), ks=(1, 5),
                                       groups=[caption_key(c) for c in mixed.captions])
        result.update(recall)
    finally:
        model.train(was_training)
    return result


def format_report(reports: dict[str, dict[str, float]], digits: int = 3) -> str:
    """A table of ``evaluate_clip`` results, one column per report (e.g. seen and held-out).

    Defined in notebook 04_clip_text_embeddings.
    """
    names = list(reports)
    keys = list(next(iter(reports.values())))
    lines = [f"{'':18s}" + "".join(f"{n:>10s}" for n in names)]
    for k in keys:
        lines.append(f"{k:18s}" + "".join(f"{reports[n][k]:10.{digits}f}" for n in names))
    return "\n".join(lines)
