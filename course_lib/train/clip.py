"""Training and measuring the course's CLIP on ShapeWorld. Defined in notebook 04_clip_text_embeddings.

The networks live in ``course_lib.models.clip`` and know no data set; this module is where they meet
ShapeWorld: it trains the contrastive model on fresh image-caption batches (on the course's one training
loop, ``course_lib.train.loop.TrainLoop``). The tokenizer trained on ShapeWorld captions, the model's
sizes and the shipped tokenizer and weights made by ``scripts/train_clip.py`` are in
``course_lib.train.clip_model``, zero-shot classification and retrieval on seen and held-out
colour-shape pairs in ``course_lib.train.clip_eval``; every one of their names is found here too.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from course_lib.models.clip import ContrastiveModel, clip_loss, matching_targets
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.train.clip_eval import encode_images, encode_texts, evaluate_clip, format_report, marginal_accuracy
from course_lib.train.clip_model import (
    EVAL_SEED,
    SHIPPED_CLIP,
    TOKENIZER_FOLDER,
    TRAIN_SEED_BASE,
    build_clip_model,
    caption_key,
    clip_model_config,
    hard_negative_captions,
    init_clip_weights,
    load_shipped_clip,
    load_shipped_tokenizer,
    shipped_metrics,
    train_shapeworld_tokenizer,
)
from course_lib.train.distributed import DistributedContext, all_gather_rows, split_sizes
from course_lib.train.loop import TrainLoop
from course_lib.train.state import Checkpointing, describe_model
from course_lib.worlds import shapeworld as sw

__all__ = ["ClipTrainingConfig", "TrainingHistory", "train_contrastive",
           # course_lib.train.clip_model
           "SHIPPED_CLIP", "TOKENIZER_FOLDER", "TRAIN_SEED_BASE", "EVAL_SEED", "train_shapeworld_tokenizer",
           "clip_model_config", "build_clip_model", "init_clip_weights", "caption_key", "hard_negative_captions",
           "load_shipped_tokenizer", "load_shipped_clip", "shipped_metrics",
           # course_lib.train.clip_eval
           "encode_texts", "encode_images", "marginal_accuracy", "evaluate_clip", "format_report"]


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

    Supports notebook 04_clip_text_embeddings.
    """

    loss: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    seconds: float = 0.0


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
    ``train.state.Checkpointing`` (save, resume and stop the run; a step's batch depends only on
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
    run_config = {"trainer": "train_contrastive", "model": describe_model(model), "settings": asdict(config),
                  "tokenizer": {"tokens": len(tokenizer)}}
    loop = TrainLoop(model, opt, total_steps=config.steps, lr_schedule=sched, grad_clip=config.grad_clip,
                     precision=precision, distributed=ctx, checkpoint=checkpoint, run_config=run_config, desc=desc,
                     postfix_every=10)

    def step(i: int) -> torch.Tensor:
        batch = world.sample(config.batch_size, seed=TRAIN_SEED_BASE * (config.seed + 1) + i,
                             split=config.split, kinds=config.kinds)
        texts = batch.captions + (hard_negative_captions(batch.captions) if config.hard_negatives else [])
        targets = matching_targets([caption_key(c) for c in batch.captions], [caption_key(t) for t in texts])
        if processes == 1:
            images = batch.tensors().to(device)
            ids = tokenizer(texts, padding="longest").to(device)  # (T, L<=77); see the module docstring
            with loop.autocast():
                logits = model(images, ids).logits_per_image  # (B, T), T = B + hard negatives
                return clip_loss(logits, targets.to(device))
        # this process's images and texts; every process then sees all embeddings and the same loss
        image_part, text_part = ctx.local_slice(len(batch.captions)), ctx.local_slice(len(texts))
        images = batch.tensors()[image_part].to(device)
        ids = tokenizer(texts[text_part], padding="longest").to(device)
        with loop.autocast():
            image_embeds, text_embeds, scale = embedder(images, ids)
            image_embeds = all_gather_rows(image_embeds.float(), split_sizes(len(batch.captions), processes))
            text_embeds = all_gather_rows(text_embeds.float(), split_sizes(len(texts), processes))
            return clip_loss(scale * image_embeds @ text_embeds.T, targets.to(device))

    def after(i: int, values: dict[str, float]) -> None:
        loop.history.setdefault("scale", []).append(model.scale().item())
        if callback is not None:
            callback(i, model)

    run = loop.run(step, on_step=after)
    return TrainingHistory(loss=run.history.get("loss", []), scale=run.history.get("scale", []), seconds=run.seconds)
