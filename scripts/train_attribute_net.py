"""Train the ShapeWorld attribute network that judges generated images, and ship it in data/.

    python scripts/train_attribute_net.py               # a few minutes on 2 CPU cores
    python scripts/train_attribute_net.py --config configs/train/shapeworld_attribute_net.yaml   # the same

Made by this script: data/shapeworld_attribute_net.safetensors (+ .json, + sha256 in data/manifest.json).
The accuracy it prints is per pixel on fresh images; the adherence of real images to their own
captions is measured in tests/test_evaluators.py and notebook 00.

Beyond one CPU (README, "Training bigger"): ``--device cuda --precision bf16`` on a GPU;
``torchrun --nproc_per_node=N`` splits every global batch of ``--batch-size`` between N processes
(the same images and augmentations as one process; BatchNorm statistics per process); only rank 0
prints and saves. ``--checkpoint-dir DIR`` saves the training state (every ``--checkpoint-every``
batches and at the end), ``--stop-after K`` stops at batch K (saving it), ``--resume DIR`` continues
with the same settings.
"""

import argparse
import time
from pathlib import Path

import torch

from course_lib.core.checkpoints import save_checkpoint
from course_lib.core.cli import HelpFormatter
from course_lib.core.utils import seed_everything
from course_lib.evaluate.classifiers import ATTRIBUTE_NET
from course_lib.train.judges import train_attribute_net
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
from course_lib.worlds.shapeworld import ShapeWorld


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16, help="channels at full resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    add_runtime_arguments(parser, stop_after=True)
    args = parse_args(parser, argv, script=Path(__file__).name)
    checkpoint = Checkpointing.from_args(args)
    with training_run(args) as ctx:
        seed_everything(args.seed)
        start = time.time()
        model, losses = train_attribute_net(args.images, args.epochs, batch_size=args.batch_size, lr=args.lr,
                                            seed=args.seed, model_config={"width": args.width},
                                            distributed=ctx, precision=args.precision, checkpoint=checkpoint)
        if checkpoint.stopped_at is not None:
            ctx.print(checkpoint.stopped_message())
            return
        if not ctx.is_main:
            return
        minutes = (time.time() - start) / 60
        model = model.cpu()
        test = ShapeWorld().sample(2000, seed=12345, split="all")
        shape_mask, color_mask = (torch.from_numpy(m).long() for m in test.semantic_masks())
        with torch.no_grad():
            s, c = model(test.tensors())
        fg = shape_mask > 0
        shape_acc = (s.argmax(1)[fg] == shape_mask[fg]).float().mean().item()
        color_acc = (c.argmax(1)[fg] == color_mask[fg]).float().mean().item()
        print(f"foreground pixel accuracy: shape {shape_acc:.4f}, colour {color_acc:.4f}; "
              f"trained in {minutes:.1f} min")
        precision = resolve_precision(args.precision, ctx.device)
        metrics = {"shape_pixel_accuracy": round(shape_acc, 4), "color_pixel_accuracy": round(color_acc, 4),
                   "train_minutes": round(minutes, 2), **run_notes(ctx, precision, checkpoint.start_step)}
        command = (f"{launcher(ctx)} scripts/train_attribute_net.py --images {args.images} --epochs {args.epochs} "
                   f"--seed {args.seed}" + changed_flags(args, {"batch_size": 64, "lr": 3e-3, "width": 16})
                   + ("" if precision == "fp32" else f" --precision {precision}"))
        save_checkpoint(model, ATTRIBUTE_NET, config=model.config, command=command, metrics=metrics,
                        folder=args.folder)


if __name__ == "__main__":
    main()
