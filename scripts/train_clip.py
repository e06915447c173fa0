"""Train the course's CLIP on ShapeWorld: a BPE tokenizer, then a text and an image encoder, contrastively.

    python scripts/train_clip.py    # about 10 minutes on 2 CPU cores shared with other work (one torch thread)

Made by this script (used from notebook 04 on):
- data/tokenizer/ (vocab.json, merges.txt, tokenizer_config.json), readable by transformers' CLIPTokenizer;
- data/clip_shapeworld.safetensors (+ .json with config and metrics, + its sha256 in data/manifest.json):
  the whole ContrastiveModel (text encoder, image encoder, projections, temperature).

Beyond one CPU (README, "Training bigger"): ``--config configs/train/clip_shapeworld.yaml`` (flags
override it), ``--device cuda --precision bf16`` on a GPU, and ``torchrun --nproc_per_node=N``:
every process renders the same global batch of ``--batch-size`` pairs, embeds its share, and the
embeddings are gathered so the loss still compares all of them (as CLIP did across GPUs); only
rank 0 measures and saves. ``--checkpoint-dir DIR`` saves the training state (every
``--checkpoint-every`` steps and at the end), ``--stop-after K`` stops at step K (saving it),
``--resume DIR`` continues with the same settings (in any of these modes).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from course_lib.core.checkpoints import save_checkpoint
from course_lib.core.cli import HelpFormatter
from course_lib.core.paths import data_dir
from course_lib.core.utils import count_parameters, seed_everything
from course_lib.train.clip import (
    SHIPPED_CLIP,
    TOKENIZER_FOLDER,
    ClipTrainingConfig,
    build_clip_model,
    clip_model_config,
    evaluate_clip,
    format_report,
    init_clip_weights,
    train_contrastive,
    train_shapeworld_tokenizer,
)
from course_lib.train.precision import resolve_precision
from course_lib.train.run_config import add_runtime_arguments, launcher, parse_args, run_notes, training_run
from course_lib.train.state import Checkpointing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=ClipTrainingConfig.steps)
    parser.add_argument("--batch-size", type=int, default=ClipTrainingConfig.batch_size, help="the global batch")
    parser.add_argument("--lr", type=float, default=ClipTrainingConfig.lr)
    parser.add_argument("--width", type=int, default=64, help="text encoder width")
    parser.add_argument("--layers", type=int, default=3, help="text encoder blocks")
    parser.add_argument("--image-widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hard-negatives", action="store_true", help="only in-batch negatives")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 1: fastest when the 2 cores are shared with other work; under "
                             "torchrun, torchrun's OMP_NUM_THREADS per process)")
    parser.add_argument("--dry-run", action="store_true", help="train and measure, but save nothing")
    parser.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    add_runtime_arguments(parser, stop_after=True)
    args = parse_args(parser, argv, script=Path(__file__).name)
    checkpoint = Checkpointing.from_args(args)
    with training_run(args, default_threads=1) as ctx:
        train_and_save(args, ctx, checkpoint)


def train_and_save(args: argparse.Namespace, ctx, checkpoint: Checkpointing | None = None) -> None:
    checkpoint = checkpoint or Checkpointing()
    seed_everything(args.seed)
    start = time.time()

    tokenizer = train_shapeworld_tokenizer(seed=args.seed)
    ctx.print(f"tokenizer: {len(tokenizer)} tokens ({len(tokenizer.merges)} merges), e.g. "
              f"{tokenizer.tokenize('a small red circle in the top left')}")

    config = clip_model_config(tokenizer, width=args.width, layers=args.layers,
                               image_widths=args.image_widths, embed_dim=args.embed_dim)
    model = init_clip_weights(build_clip_model(**config)).to(ctx.device)
    ctx.print(f"model: {count_parameters(model):,} parameters (text encoder "
              f"{count_parameters(model.text_encoder):,}, image encoder {count_parameters(model.image_encoder):,}); "
              f"{ctx.world_size} process(es) on {ctx.device}")
    train_config = ClipTrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                      hard_negatives=not args.no_hard_negatives)
    history = train_contrastive(model, tokenizer, train_config, distributed=ctx, precision=args.precision,
                                checkpoint=checkpoint)
    if checkpoint.stopped_at is not None:
        ctx.print(checkpoint.stopped_message())
        return
    if not ctx.is_main:
        return
    model = model.cpu()
    print(f"trained {train_config.steps} steps of {train_config.batch_size} pairs in {history.seconds / 60:.1f} min; "
          f"loss {sum(history.loss[:10]) / 10:.3f} -> {sum(history.loss[-20:]) / 20:.3f}")

    reports = {"seen": evaluate_clip(model, tokenizer, "train"), "held-out": evaluate_clip(model, tokenizer, "heldout")}
    print(format_report(reports))
    minutes = (time.time() - start) / 60
    print(f"total {minutes:.1f} min")
    if args.dry_run:
        return

    folder = Path(args.folder) if args.folder else data_dir()
    tokenizer.save(folder / TOKENIZER_FOLDER)
    precision = resolve_precision(args.precision, ctx.device)
    command = (f"{launcher(ctx)} scripts/train_clip.py --steps {args.steps} --batch-size {args.batch_size} "
               f"--lr {args.lr} --width {args.width} --layers {args.layers} "
               f"--image-widths {' '.join(map(str, args.image_widths))} --embed-dim {args.embed_dim} "
               f"--seed {args.seed} --threads {torch.get_num_threads()}"
               + (" --no-hard-negatives" if args.no_hard_negatives else "")
               + ("" if precision == "fp32" else f" --precision {precision}"))
    metrics = {
        "seen": {k: round(v, 4) for k, v in reports["seen"].items()},
        "heldout": {k: round(v, 4) for k, v in reports["held-out"].items()},
        "loss": [round(v, 4) for v in history.loss],
        "logit_scale": [round(v, 3) for v in history.scale],
        "train_config": json.loads(json.dumps(train_config.__dict__)),
        "train_minutes": round(history.seconds / 60, 2),
        "total_minutes": round(minutes, 2),
        "torch_threads": torch.get_num_threads(),
        **run_notes(ctx, precision, checkpoint.start_step),
    }
    path = save_checkpoint(model, SHIPPED_CLIP, config=config, command=command, metrics=metrics, folder=folder)
    print(f"saved {path} and {folder / TOKENIZER_FOLDER}/")


if __name__ == "__main__":
    main()
