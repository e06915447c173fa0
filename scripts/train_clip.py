"""Train the course's CLIP on ShapeWorld: a BPE tokenizer, then a text and an image encoder, contrastively.

    python scripts/train_clip.py    # about 10 minutes on 2 CPU cores shared with other work (one torch thread)

Made by this script (used from notebook 04 on):
- data/tokenizer/ (vocab.json, merges.txt, tokenizer_config.json), readable by transformers' CLIPTokenizer;
- data/clip_shapeworld.safetensors (+ .json with config and metrics, + its sha256 in data/manifest.json):
  the whole ContrastiveModel (text encoder, image encoder, projections, temperature).
"""

import argparse
import json
import time

import torch

from course_lib.checkpoints import save_checkpoint
from course_lib.clip_training import (
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
from course_lib.paths import data_dir
from course_lib.utils import count_parameters, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=ClipTrainingConfig.steps)
    parser.add_argument("--batch-size", type=int, default=ClipTrainingConfig.batch_size)
    parser.add_argument("--lr", type=float, default=ClipTrainingConfig.lr)
    parser.add_argument("--width", type=int, default=64, help="text encoder width")
    parser.add_argument("--layers", type=int, default=3, help="text encoder blocks")
    parser.add_argument("--image-widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hard-negatives", action="store_true", help="only in-batch negatives")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest when the 2 cores are shared with other work")
    parser.add_argument("--dry-run", action="store_true", help="train and measure, but save nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    start = time.time()

    tokenizer = train_shapeworld_tokenizer(seed=args.seed)
    print(f"tokenizer: {len(tokenizer)} tokens ({len(tokenizer.merges)} merges), e.g. "
          f"{tokenizer.tokenize('a small red circle in the top left')}")

    config = clip_model_config(tokenizer, width=args.width, layers=args.layers,
                               image_widths=args.image_widths, embed_dim=args.embed_dim)
    model = init_clip_weights(build_clip_model(**config))
    print(f"model: {count_parameters(model):,} parameters (text encoder "
          f"{count_parameters(model.text_encoder):,}, image encoder {count_parameters(model.image_encoder):,})")
    train_config = ClipTrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                      hard_negatives=not args.no_hard_negatives)
    history = train_contrastive(model, tokenizer, train_config)
    print(f"trained {train_config.steps} steps of {train_config.batch_size} pairs in {history.seconds / 60:.1f} min; "
          f"loss {sum(history.loss[:10]) / 10:.3f} -> {sum(history.loss[-20:]) / 20:.3f}")

    reports = {"seen": evaluate_clip(model, tokenizer, "train"), "held-out": evaluate_clip(model, tokenizer, "heldout")}
    print(format_report(reports))
    minutes = (time.time() - start) / 60
    print(f"total {minutes:.1f} min")
    if args.dry_run:
        return

    tokenizer.save(data_dir() / TOKENIZER_FOLDER)
    command = (f"python scripts/train_clip.py --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
               f"--width {args.width} --layers {args.layers} --image-widths {' '.join(map(str, args.image_widths))} "
               f"--embed-dim {args.embed_dim} --seed {args.seed} --threads {args.threads}"
               + (" --no-hard-negatives" if args.no_hard_negatives else ""))
    metrics = {
        "seen": {k: round(v, 4) for k, v in reports["seen"].items()},
        "heldout": {k: round(v, 4) for k, v in reports["held-out"].items()},
        "loss": [round(v, 4) for v in history.loss],
        "logit_scale": [round(v, 3) for v in history.scale],
        "train_config": json.loads(json.dumps(train_config.__dict__)),
        "train_minutes": round(history.seconds / 60, 2),
        "total_minutes": round(minutes, 2),
        "torch_threads": torch.get_num_threads(),
    }
    path = save_checkpoint(model, SHIPPED_CLIP, config=config, command=command, metrics=metrics)
    print(f"saved {path} and data/{TOKENIZER_FOLDER}/")


if __name__ == "__main__":
    main()
