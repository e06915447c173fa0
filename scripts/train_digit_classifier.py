"""Train the MNIST-5k digit classifier that judges generated digits, and ship it in data/.

    python scripts/train_digit_classifier.py            # about 1 minute on 2 CPU cores
    python scripts/train_digit_classifier.py --config configs/train/digit_classifier.yaml   # the same, from its config

Made by this script: data/digit_classifier.safetensors (+ .json, + its sha256 in data/manifest.json).

Beyond one CPU (README, "Training bigger"): ``--device cuda --precision bf16`` on a GPU;
``torchrun --nproc_per_node=N`` splits every global batch of ``--batch-size`` between N processes
(the same batches and shifts as one process; dropout differs); only rank 0 prints and saves.
``--checkpoint-dir DIR`` saves the training state (every ``--checkpoint-every`` batches and at the end),
``--stop-after K`` stops at batch K (saving it), ``--resume DIR`` continues with the same settings.
"""

import argparse
import time
from pathlib import Path

import torch

from course_lib.core.checkpoints import save_checkpoint
from course_lib.core.cli import HelpFormatter
from course_lib.core.utils import seed_everything
from course_lib.evaluate.classifiers import DIGIT_CLASSIFIER
from course_lib.train.judges import train_digit_classifier
from course_lib.train.precision import resolve_precision
from course_lib.train.run_config import (
    add_runtime_arguments,
    changed_flags,
    launcher,
    parse_args,
    run_notes,
    training_run,
)
from course_lib.train.state import Checkpointing
from course_lib.worlds.mnist import MNIST5k


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=32, help="channels of the first convolution")
    parser.add_argument("--feature-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    add_runtime_arguments(parser, stop_after=True)
    args = parse_args(parser, argv, script=Path(__file__).name)
    checkpoint = Checkpointing.from_args(args, data="MNIST5k('train')")
    with training_run(args) as ctx:
        seed_everything(args.seed)
        train, test = MNIST5k("train"), MNIST5k("test")
        start = time.time()
        model, losses = train_digit_classifier(train.images, train.labels, epochs=args.epochs,
                                               batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                               model_config={"width": args.width, "feature_dim": args.feature_dim},
                                               distributed=ctx, precision=args.precision, checkpoint=checkpoint)
        if checkpoint.stopped_at is not None:
            ctx.print(checkpoint.stopped_message())
            return
        if not ctx.is_main:
            return
        minutes = (time.time() - start) / 60
        model = model.cpu()
        with torch.no_grad():
            acc = (model(test.images).argmax(1) == test.labels).float().mean().item()
        print(f"test accuracy {acc:.4f} on {len(test)} held-back digits; trained in {minutes:.1f} min")
        precision = resolve_precision(args.precision, ctx.device)
        metrics = {"test_accuracy": round(acc, 4), "train_minutes": round(minutes, 2),
                   "final_loss": round(sum(losses[-50:]) / 50, 4), **run_notes(ctx, precision, checkpoint.start_step)}
        command = (f"{launcher(ctx)} scripts/train_digit_classifier.py --epochs {args.epochs} --seed {args.seed}"
                   + changed_flags(args, {"batch_size": 64, "lr": 2e-3, "width": 32, "feature_dim": 128})
                   + ("" if precision == "fp32" else f" --precision {precision}"))
        save_checkpoint(model, DIGIT_CLASSIFIER, config=model.config, command=command, metrics=metrics,
                        folder=args.folder)


if __name__ == "__main__":
    main()
