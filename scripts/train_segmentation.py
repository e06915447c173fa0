"""Train notebook 03's segmentation U-Net and its twin without skip connections, and ship both in data/.

    python scripts/train_segmentation.py            # about 10 minutes on one CPU core (both networks)

On a busy machine, OMP_NUM_THREADS=1 can be several times faster than letting torch spin two threads.

Made by this script: data/segmentation_unet.safetensors and data/segmentation_unet_no_skip.safetensors
(+ .json with the config and the training curves, + their sha256 in data/manifest.json). Both
networks see the same images in the same order; they differ only in the skip connections.

Beyond one CPU (README, "Training bigger"): ``--config configs/train/segmentation_unet.yaml`` (flags
override it), ``--device cuda --precision bf16`` on a GPU, ``torchrun --nproc_per_node=N`` to split
every global batch of ``--batch-size`` between N processes (BatchNorm statistics per process);
only rank 0 measures, prints and saves. ``--checkpoint-dir DIR`` saves each network's training state
in ``DIR/segmentation_unet`` and ``DIR/segmentation_unet_no_skip`` (every ``--checkpoint-every`` steps
and at its end); ``--stop-after K`` stops the network in training at step K (saving it) and the
script there; ``--resume DIR`` continues: a finished network is only measured and saved again, the
one in progress continues, one without a state starts afresh.
"""

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from course_lib.core.checkpoints import save_checkpoint
from course_lib.core.cli import HelpFormatter
from course_lib.core.utils import seed_everything
from course_lib.models.segmentation import (
    SegmentationUNet,
    SegmentationUNetConfig,
    mean_iou,
    predict,
)
from course_lib.train.precision import resolve_precision
from course_lib.train.run_config import (
    add_runtime_arguments,
    changed_flags,
    launcher,
    parse_args,
    run_notes,
    training_run,
)
from course_lib.train.segmentation import shapeworld_segmentation_data, train_segmenter
from course_lib.train.state import Checkpointing

NAMES = {True: "segmentation_unet", False: "segmentation_unet_no_skip"}
TRAIN_SEED, EVAL_SEED = 0, 1  # notebook 03 tests on fresh images from yet another seed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--base-channels", type=int, default=8, help="channels of the first level (doubling per level)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["skip", "no-skip"], help="train one of the two networks (default: both)")
    parser.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    add_runtime_arguments(parser, stop_after=True)
    args = parse_args(parser, argv, script=Path(__file__).name)
    chosen = [skip for skip in (True, False) if args.only is None or skip == (args.only == "skip")]
    checkpoints = Checkpointing.from_args(args, data={"images": args.images, "seed": TRAIN_SEED}).parts(
        NAMES[skip] for skip in chosen)
    with training_run(args) as ctx:
        images, masks = shapeworld_segmentation_data(args.images, seed=TRAIN_SEED)
        eval_data = shapeworld_segmentation_data(500, seed=EVAL_SEED)
        precision = resolve_precision(args.precision, ctx.device)
        for skip in chosen:
            seed_everything(args.seed)
            model = SegmentationUNet(SegmentationUNetConfig(skip=skip, base_channels=args.base_channels)).to(ctx.device)
            checkpoint = checkpoints[NAMES[skip]]
            if args.resume is not None and checkpoint.resume is None:
                ctx.print(f"{NAMES[skip]}: no training state in {Path(args.resume) / NAMES[skip]}; "
                          "trained from the start")
            start = time.time()
            hist = train_segmenter(model, images, masks, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   seed=args.seed, eval_every=100, eval_data=eval_data, desc=NAMES[skip],
                                   distributed=ctx, precision=args.precision, checkpoint=checkpoint)
            if checkpoint.stopped_at is not None:
                ctx.print(checkpoint.stopped_message(NAMES[skip]))
                return
            if not ctx.is_main:
                continue
            minutes = (time.time() - start) / 60
            model = model.cpu()
            miou = mean_iou(predict(model, eval_data[0]), eval_data[1])
            every = 10
            loss_curve = [round(sum(hist.losses[i:i + every]) / every, 4) for i in range(0, len(hist.losses), every)]
            print(f"{NAMES[skip]}: mean IoU {miou:.4f} on 500 held-back images; trained in {minutes:.1f} min",
                  flush=True)
            metrics = {"eval_mean_iou": round(miou, 4), "train_minutes": round(minutes, 2),
                       "loss_every_10_steps": loss_curve, "eval_steps": hist.eval_steps,
                       "eval_mean_iou_curve": [round(v, 4) for v in hist.eval_miou],
                       "train": {"steps": args.steps, "images": args.images, "batch_size": args.batch_size,
                                 "lr": args.lr, "seed": args.seed}, **run_notes(ctx, precision, checkpoint.start_step)}
            extra = changed_flags(args, {"batch_size": 32, "lr": 3e-3, "base_channels": 8})
            save_checkpoint(model, NAMES[skip], config=asdict(model.config),
                            command=f"{launcher(ctx)} scripts/train_segmentation.py --steps {args.steps} "
                                    f"--images {args.images} --seed {args.seed}{extra}"
                                    + ("" if precision == "fp32" else f" --precision {precision}"),
                            metrics=metrics, folder=args.folder)


if __name__ == "__main__":
    main()
