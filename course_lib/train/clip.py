"""Training and measuring the course's CLIP on ShapeWorld. Defined in notebook 04_clip_text_embeddings.

The networks live in ``course_lib.models.clip`` and know no data set; this module is where they meet
ShapeWorld: it trains the tokenizer on ShapeWorld captions, trains the contrastive model on fresh
image-caption batches, measures zero-shot classification and retrieval on seen and held-out
colour-shape pairs, and loads the shipped tokenizer and weights made by ``scripts/train_clip.py``.

    tokenizer, model = load_shipped_clip()          # data/tokenizer/ + data/clip_shapeworld.*
    context = model.text_encoder(tokenizer(["a red circle above a blue square"])).last_hidden_state

Two choices worth knowing:
- Captions repeat in ShapeWorld (a batch of 256 holds several "two red squares"), and different
  captions can say the same thing ("a red circle above a blue square" and "a blue square below a
  red circle"). Texts with the same meaning (``caption_key``) are positives of each other
  (``matching_targets``). For *identical* captions this changes nothing: their embeddings are
  identical, and CLIP's loss then gives the same value and gradients either way (notebook 04
  shows why); for equivalent captions worded differently it removes false negatives.
- Training tokenizes with ``padding="longest"`` instead of the full 77-token context. Because the
  text encoder is causal and the loss only reads the end token, the padding after it cannot change
  the loss or any gradient, so this is the same training, several times cheaper. The model keeps its
  77 positions (the U-Net of later notebooks reads all 77 states).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib.worlds import shapeworld as sw
from course_lib.core.checkpoints import load_checkpoint, load_weights
from course_lib.models.clip import (
    CLIPTextConfig,
    CLIPTextEncoder,
    ContrastiveModel,
    ImageEncoder,
    ImageEncoderConfig,
    clip_loss,
    matching_targets,
    retrieval_recall_at_k,
)
from course_lib.train.distributed import DistributedContext, all_gather_rows, autocast, resolve_precision, split_sizes
from course_lib.core.paths import data_dir
from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe
from course_lib.train.state import Checkpointing, describe_model
from course_lib.core.utils import progress

SHIPPED_CLIP = "clip_shapeworld"
TOKENIZER_FOLDER = "tokenizer"
# Training batches use seeds from TRAIN_SEED_BASE upward, evaluation batches seeds below it, so
# that no evaluation image was ever a training image.
TRAIN_SEED_BASE = 1_000_000
EVAL_SEED = 4242


# ----------------------------------------------------------------------------- tokenizer
def train_shapeworld_tokenizer(n_captions: int = 20000, seed: int = 0, vocab_size: int = 1024,
                               context_length: int = 77) -> CLIPStyleTokenizer:
    """A CLIP-style BPE tokenizer trained on ``n_captions`` ShapeWorld training captions.

    Merging stops early once every word of the grammar is a single token (no pair occurs twice
    any more), so the vocabulary is smaller than ``vocab_size``; any other text still tokenizes,
    byte by byte. Defined in notebook 04_clip_text_embeddings.
    """
    captions = sw.ShapeWorld().sample(n_captions, seed=seed, split="train").captions
    vocab, merges = train_bpe(captions, vocab_size=vocab_size)
    return CLIPStyleTokenizer(vocab, merges, context_length=context_length)


# ----------------------------------------------------------------------------- the model
def clip_model_config(tokenizer: CLIPStyleTokenizer, width: int = 64, layers: int = 3, heads: int = 4,
                      image_widths: Sequence[int] = (16, 32, 64), embed_dim: int = 64) -> dict[str, Any]:
    """The JSON config of a small contrastive model for ``tokenizer``'s vocabulary.

    ``build_clip_model(**config)`` builds it, which is how ``load_checkpoint`` rebuilds the shipped
    one. Defined in notebook 04_clip_text_embeddings.
    """
    text = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=tokenizer.context_length,
                          hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=4 * width, eos_token_id=tokenizer.eos_token_id)
    image = ImageEncoderConfig(widths=tuple(image_widths), out_dim=image_widths[-1])
    return {"text": asdict(text), "image": {**asdict(image), "widths": list(image.widths)},
            "embed_dim": embed_dim}


def build_clip_model(text: dict[str, Any], image: dict[str, Any], embed_dim: int) -> ContrastiveModel:
    """A ``ContrastiveModel`` (CLIPTextEncoder + ImageEncoder + projections) from a JSON config.

    Defined in notebook 04_clip_text_embeddings.
    """
    return ContrastiveModel(CLIPTextEncoder(CLIPTextConfig(**text)),
                            ImageEncoder(ImageEncoderConfig(**{**image, "widths": tuple(image["widths"])})),
                            embed_dim=embed_dim)


def init_clip_weights(model: ContrastiveModel, std: float = 0.02) -> ContrastiveModel:
    """CLIP-like initialisation of the text tower and projections; returns ``model``.

    Token embeddings N(0, 0.02), position embeddings N(0, 0.01), linear layers of the text tower
    N(0, 0.02) with zero biases, projections N(0, 1/sqrt(in_features)) (as CLIP). PyTorch's default
    for embeddings, N(0, 1), would make the embeddings dwarf what the blocks add.
    Defined in notebook 04_clip_text_embeddings.
    """
    text = model.text_encoder
    with torch.no_grad():
        nn.init.normal_(text.embeddings.token_embedding.weight, std=std)
        nn.init.normal_(text.embeddings.position_embedding.weight, std=std / 2)
        for module in text.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
        for proj in (model.text_projection, model.visual_projection):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
    return model


# ----------------------------------------------------------------------------- training
@dataclass
class ClipTrainingConfig:
    """How ``train_contrastive`` trains. Defined in notebook 04_clip_text_embeddings.

    Every step draws a fresh batch of ``batch_size`` ShapeWorld images of ``split`` (so the model
    never sees an image twice); AdamW with linear warm-up then cosine decay; weight decay only on
    matrices; gradients clipped at ``grad_clip``. ``hard_negatives`` adds, for every two-object
    image, its caption with the colours swapped and with the relation reversed as extra wrong
    texts (``hard_negative_captions``), which a model must tell apart from the truth.
    """

    steps: int = 700
    batch_size: int = 256
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    split: str = "train"
    kinds: tuple[str, ...] | None = None
    hard_negatives: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"need steps >= 1 and batch_size >= 2 (contrastive learning compares pairs "
                             f"within a batch), got steps={self.steps}, batch_size={self.batch_size}")
        if self.split not in sw.SPLITS:
            raise ValueError(f"split must be one of {sw.SPLITS}, got {self.split!r}")


@dataclass
class TrainingHistory:
    """Per-step loss and temperature of a training run, and its duration in seconds.

    Defined in notebook 04_clip_text_embeddings.
    """

    loss: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    seconds: float = 0.0


_OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of",
             "to the right of": "to the left of"}


def caption_key(caption: str) -> str:
    """The caption's meaning, as one canonical caption: equivalent captions get the same key.

    "a blue square below a red circle" says exactly what "a red circle above a blue square" says;
    both get the key of the form with "above" or "to the left of". Text outside ShapeWorld's
    grammar is its own key. Used to decide which texts of a batch match which images.
    Defined in notebook 04_clip_text_embeddings.
    """
    try:
        spec = sw.parse_caption(caption)
    except ValueError:
        return caption
    if spec.kind == "pair" and spec.relation in ("below", "to the right of"):
        (ca, sa), (cb, sb) = spec.objects
        return sw.pair_caption(cb, sb, _OPPOSITE[spec.relation], ca, sa)
    return " ".join(caption.lower().split())


def hard_negative_captions(captions: Sequence[str]) -> list[str]:
    """Wrong captions that differ from true ones only in binding or relation (unique, sorted).

    For each two-object caption "a red circle above a blue square": the colours swapped ("a blue
    circle above a red square", when the colours differ) and the relation reversed ("a red circle
    below a blue square"). In-batch negatives rarely differ from the truth this little, so
    without them a contrastive model can pass by counting words (a "bag of words"; Yuksekgonul
    et al. 2023 add such negatives to CLIP's batches in NegCLIP). Defined in notebook
    04_clip_text_embeddings.
    """
    negatives = set()
    for caption in captions:
        spec = sw.parse_caption(caption)
        if spec.kind != "pair":
            continue
        (ca, sa), (cb, sb) = spec.objects
        if ca != cb:
            negatives.add(sw.pair_caption(cb, sa, spec.relation, ca, sb))
        negatives.add(sw.pair_caption(ca, sa, _OPPOSITE[spec.relation], cb, sb))
    return sorted(negatives)


def _lr_factor(step: int, config: ClipTrainingConfig) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress_ = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


class _Embedder(nn.Module):
    """What each process computes for its slice: image and text embeddings, and the temperature.

    Wrapped in DistributedDataParallel, so that the gradients of every parameter are averaged."""

    def __init__(self, model: ContrastiveModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images), self.model.encode_text(ids), self.model.scale()


def train_contrastive(model: ContrastiveModel, tokenizer: CLIPStyleTokenizer,
                      config: ClipTrainingConfig | None = None, world: sw.ShapeWorld | None = None,
                      callback: Callable[[int, ContrastiveModel], None] | None = None,
                      desc: str = "contrastive training", *, distributed: DistributedContext | None = None,
                      precision: str = "fp32", checkpoint: Checkpointing | None = None) -> TrainingHistory:
    """Train ``model`` on fresh ShapeWorld image-caption batches with CLIP's symmetric loss.

    Captions with the same meaning (``caption_key``) count as matches (``matching_targets``); hard
    negatives are added if the config asks (the default). Texts are padded
    to the longest caption of the batch, which gives the same loss and gradients as padding to 77
    (see the module docstring). ``callback(step, model)`` runs after each step.
    Returns the per-step history. Defined in notebook 04_clip_text_embeddings.

    Beyond one CPU (README, "Training bigger"): the model trains on its own device; ``precision``:
    autocast (``"bf16"``...). With ``distributed`` (a torchrun process's context) every process
    renders the same global batch, embeds its slice of the images and of the texts, and gathers all
    embeddings (as CLIP did across GPUs), so the loss compares every image with every text of the
    global batch: the same training as one process, to float tolerance. ``checkpoint``: a
    ``training_state.Checkpointing`` (save, resume and stop the run; a step's batch depends only on
    the step, so nothing about the data needs saving).
    """
    if not isinstance(model, ContrastiveModel):
        raise TypeError(f"model must be a course_lib.models.clip.ContrastiveModel, got {type(model).__name__}")
    config = config or ClipTrainingConfig()
    world = world or sw.ShapeWorld()
    device = next(model.parameters()).device
    ctx = distributed or DistributedContext()
    processes = ctx.world_size if ctx.is_distributed else 1
    if processes > 1 and config.batch_size < processes:
        raise ValueError(f"batch_size={config.batch_size} is smaller than the {processes} processes; every process "
                         "needs at least one image of the global batch")
    precision = resolve_precision(precision, device)
    embedder = ctx.wrap(_Embedder(model)) if processes > 1 else None
    decay = [p for p in model.parameters() if p.ndim >= 2 and p.requires_grad]
    no_decay = [p for p in model.parameters() if p.ndim < 2 and p.requires_grad]
    embeddings = {id(p) for p in model.text_encoder.embeddings.parameters()}
    decay, no_decay = ([p for p in decay if id(p) not in embeddings],
                       no_decay + [p for p in decay if id(p) in embeddings])
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, config))
    history = TrainingHistory()
    ckpt = checkpoint or Checkpointing()
    run_config = {"trainer": "train_contrastive", "model": describe_model(model), "settings": asdict(config),
                  "tokenizer": {"tokens": len(tokenizer)}}
    state = ckpt.begin(ctx, run_config, total=config.steps, modules={"model": model}, optimizers={"optimizer": opt},
                       schedulers={"lr_schedule": sched})
    seconds_before = 0.0
    if state is not None:
        loop = state.meta["loop"]
        history.loss, history.scale = [float(v) for v in loop["loss"]], [float(v) for v in loop["scale"]]
        seconds_before = float(loop["seconds"])
    first, end = ckpt.start_step, ckpt.end_step
    start = time.perf_counter()

    def loop_state() -> tuple[dict, dict]:
        return {}, {"loss": history.loss, "scale": history.scale,
                    "seconds": seconds_before + time.perf_counter() - start}

    model.train()
    bar = progress(range(first, end), desc=desc, disable=None if ctx.is_main else True,
                   **({"initial": first, "total": config.steps} if first or end != config.steps else {}))
    for step in bar:
        batch = world.sample(config.batch_size, seed=TRAIN_SEED_BASE * (config.seed + 1) + step,
                             split=config.split, kinds=config.kinds)
        texts = batch.captions + (hard_negative_captions(batch.captions) if config.hard_negatives else [])
        targets = matching_targets([caption_key(c) for c in batch.captions], [caption_key(t) for t in texts])
        if processes == 1:
            images = batch.tensors().to(device)
            ids = tokenizer(texts, padding="longest").to(device)  # (T, L<=77); see the module docstring
            with autocast(device, precision):
                logits = model(images, ids).logits_per_image  # (B, T), T = B + hard negatives
                loss = clip_loss(logits, targets.to(device))
        else:  # this process's images and texts; every process then sees all embeddings and the same loss
            image_part, text_part = ctx.local_slice(len(batch.captions)), ctx.local_slice(len(texts))
            images = batch.tensors()[image_part].to(device)
            ids = tokenizer(texts[text_part], padding="longest").to(device)
            with autocast(device, precision):
                image_embeds, text_embeds, scale = embedder(images, ids)
                image_embeds = all_gather_rows(image_embeds.float(), split_sizes(len(batch.captions), processes))
                text_embeds = all_gather_rows(text_embeds.float(), split_sizes(len(texts), processes))
                loss = clip_loss(scale * image_embeds @ text_embeds.T, targets.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        history.loss.append(loss.item())
        history.scale.append(model.scale().item())
        if hasattr(bar, "set_postfix") and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{history.scale[-1]:.1f}")
        if callback is not None:
            callback(step, model)
        ckpt.step_done(step + 1, loop_state)
    ckpt.finish(max(first, end), loop_state)
    model.eval()
    history.seconds = seconds_before + time.perf_counter() - start
    return history


# ----------------------------------------------------------------------------- measuring
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
    attributes). Defined in notebook 04_clip_text_embeddings.
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


# ----------------------------------------------------------------------------- shipped weights
def load_shipped_tokenizer(folder: str | Path | None = None) -> CLIPStyleTokenizer:
    """The tokenizer shipped in ``data/tokenizer/`` (made by ``scripts/train_clip.py``).

    Defined in notebook 04_clip_text_embeddings.
    """
    folder = Path(folder) if folder is not None else data_dir() / TOKENIZER_FOLDER
    return CLIPStyleTokenizer.from_folder(folder)


def load_shipped_clip(name: str = SHIPPED_CLIP) -> tuple[CLIPStyleTokenizer, ContrastiveModel]:
    """The shipped tokenizer and contrastive model (eval mode, CPU), checksum-verified.

    ``model.text_encoder`` is the CLIP text encoder later notebooks condition on.
    Defined in notebook 04_clip_text_embeddings.
    """
    tokenizer = load_shipped_tokenizer()
    model = load_checkpoint(name, build_clip_model)
    if model.text_encoder.config.vocab_size != len(tokenizer):
        raise ValueError(f"the shipped model expects {model.text_encoder.config.vocab_size} tokens but "
                         f"data/{TOKENIZER_FOLDER}/ holds {len(tokenizer)}: they come from different runs of "
                         "scripts/train_clip.py; run it again to make both")
    return tokenizer, model


def shipped_metrics(name: str = SHIPPED_CLIP) -> dict[str, Any]:
    """The metrics (and loss curve) stored with the shipped checkpoint. Defined in notebook 04_clip_text_embeddings."""
    return load_weights(name)[1]["metrics"]
