"""Train the course's MNIST diffusion U-Net and ship it as data/mnist_unet.{safetensors,json}.

    python scripts/train_mnist_diffusion.py                 # the shipped checkpoint (see data/mnist_unet.json)
    python scripts/train_mnist_diffusion.py --steps 200 --name scratch --folder /tmp/ckpt   # a quick try

The same code as notebook 06_reverse_diffusion: ``course_lib.train.diffusion.train_diffusion_model`` on the
4,500 training digits of MNIST-5k, DDPM's linear noise schedule (1000 steps, betas 1e-4..0.02),
epsilon prediction, AdamW with warm-up, gradient clipping, and an EMA of the weights, which is what
gets saved. ``--max-minutes`` stops early on a slow machine; the saved command then names the steps
actually taken, so running it reproduces the checkpoint (not under ``--lr-schedule cosine``, whose
decay is planned for ``--steps``: give such a run the time it needs).

Beyond one CPU (README, "Training bigger"): ``--config configs/train/mnist_unet.yaml`` (flags override
it), ``--device cuda --precision bf16`` on a GPU, ``torchrun --nproc_per_node=N`` for N processes
(the global batch of ``--batch-size`` is split between them; the result matches one process), and
``--checkpoint-dir DIR`` / ``--resume DIR`` to stop and continue a run in any of these modes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from course_lib.core.cli import HelpFormatter
from course_lib.core.utils import count_parameters, seed_everything
from course_lib.diffusion.schedules import make_schedule
from course_lib.models.unet import UNet, UNetConfig
from course_lib.train.diffusion import TrainingConfig, save_diffusion_checkpoint, train_diffusion_model
from course_lib.train.precision import resolve_precision
from course_lib.train.run_config import add_runtime_arguments, launcher, parse_args, training_run, window_means
from course_lib.worlds.mnist import MNIST5k


def mnist_unet_config(base_channels: int = 16) -> UNetConfig:
    """The MNIST U-Net: three levels (28, 14, 7 pixels), self-attention at 7x7 and in the middle."""
    c = base_channels
    return UNetConfig(in_channels=1, out_channels=1, sample_size=28, block_out_channels=(c, 2 * c, 4 * c),
                      layers_per_block=1, attention_levels=(2,), norm_num_groups=8, num_attention_heads=4)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch (split between torchrun processes)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="after the 200 warm-up steps: keep --lr, or a half cosine down to 0 at the last step")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.add_argument("--schedule", default="linear", choices=["linear", "scaled_linear", "cosine"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2; under torchrun, torchrun's OMP_NUM_THREADS per process)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early after this long")
    p.add_argument("--name", default="mnist_unet")
    p.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    add_runtime_arguments(p)
    args = parse_args(p, argv, script=Path(__file__).name)

    with training_run(args, default_threads=2) as ctx:
        seed_everything(args.seed)
        images = MNIST5k("train").images                                  # (4500, 1, 28, 28) in [-1, 1]
        schedule = make_schedule(args.schedule)
        unet = UNet(mnist_unet_config(args.base_channels)).to(ctx.device)
        ctx.print(f"U-Net: {count_parameters(unet):,} parameters; {len(images)} training digits; {schedule}; "
                  f"{ctx.world_size} process(es) on {ctx.device}", flush=True)
        config = TrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=200,
                                ema_decay=args.ema_decay, prediction_type=args.prediction_type, seed=args.seed,
                                lr_schedule=args.lr_schedule)
        start = time.time()
        result = train_diffusion_model(unet, images, schedule, config,
                                       max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                                       distributed=ctx, precision=args.precision, checkpoint_dir=args.checkpoint_dir,
                                       checkpoint_every=args.checkpoint_every, resume=args.resume,
                                       run_config={"data": "MNIST5k('train')"})
        if not ctx.is_main:
            return
        minutes = (time.time() - start) / 60
        precision = resolve_precision(args.precision, ctx.device)
        tail = result.losses[-500:]
        final_loss = sum(tail) / len(tail)
        print(f"{result.steps} steps ({result.images / len(images):.1f} epochs) in {minutes:.1f} min, "
              f"{result.images_per_second:.0f} img/s; mean loss of the last {len(tail)} steps {final_loss:.4f}",
              flush=True)
        if args.lr_schedule != "constant" and result.steps < args.steps:
            print(f"warning: stopped at {result.steps} of {args.steps} steps, before the {args.lr_schedule} "
                  "learning rate reached 0; the saved command (which names the steps taken) will not reproduce "
                  "these weights exactly", flush=True)

        command = (f"{launcher(ctx)} scripts/train_mnist_diffusion.py --steps {result.steps} "
                   f"--batch-size {args.batch_size} "
                   f"--lr {args.lr} --ema-decay {args.ema_decay} --base-channels {args.base_channels} "
                   f"--prediction-type {args.prediction_type} --schedule {args.schedule} --seed {args.seed}"
                   + ("" if args.lr_schedule == "constant" else f" --lr-schedule {args.lr_schedule}")
                   + ("" if precision == "fp32" else f" --precision {precision}")
                   + ("" if args.name == "mnist_unet" else f" --name {args.name}"))
        first = result.losses[:100]
        single_cpu = ctx.world_size == 1 and ctx.device.type == "cpu" and precision == "fp32"
        metrics = {"steps": result.steps, "epochs": round(result.images / len(images), 2),
                   "train_minutes": round(minutes, 1), "images_per_second": round(result.images_per_second, 1),
                   "threads": torch.get_num_threads(), "loss_first_100_steps": round(sum(first) / len(first), 4),
                   "loss_last_500_steps": round(final_loss, 4),
                   "machine": "2 shared CPU cores (other jobs running), fp32" if single_cpu else
                              f"{ctx.world_size} process(es) on {ctx.device.type}, {precision}",
                   "loss_every_50_steps": window_means(result.losses, 50)}
        if ctx.world_size > 1 or result.start_step:
            metrics["distributed"] = {"world_size": ctx.world_size, "per_process_batch": args.batch_size
                                      // ctx.world_size, "replica_difference": result.replica_difference,
                                      "resumed_from_step": result.start_step}
        training = {"steps": result.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 200,
                    **({} if args.lr_schedule == "constant" else {"lr_schedule": args.lr_schedule}),
                    "ema_decay": args.ema_decay, "grad_clip": config.grad_clip, "seed": args.seed,
                    "data": "MNIST5k('train'), 4500 digits in [-1, 1]", "weights": "EMA"}
        save_diffusion_checkpoint(result.ema, args.name, schedule, args.prediction_type, command=command,
                                  metrics=metrics, training=training, folder=args.folder)
        print(f"saved {args.name} (EMA weights); reproduce with: {command}")


if __name__ == "__main__":
    main()
