"""Train the text-conditioned latent U-Net of notebooks 09-10 and ship it as data/shapeworld_t2i_unet.*.

    python scripts/train_text_to_image.py                       # the shipped checkpoint (see its .json)
    python scripts/train_text_to_image.py --steps 100 --name scratch --folder /tmp/ckpt   # a quick try

SD 3's recipe (notebook 12_stable_diffusion_3): ``--objective flow`` trains with rectified flow
(logit-normal sigmas, the velocity target) and ``--model mmdit`` trains the multimodal diffusion
transformer instead of the U-Net; configs/train/shapeworld_{mmdit_flow,unet_flow,unet_ddpm_budget}.yaml
are notebook 12's side-by-side runs, all three given the same ``--max-minutes`` on one thread.

Stable Diffusion's recipe at the course's scale (the same code as notebook 09): ShapeWorld
training-split images are encoded once by the frozen autoencoder of notebook 08 (scaled latents,
8x8x4), captions by the frozen CLIP text encoder of notebook 04 ((B, 77, 64) last hidden state),
10% of the captions are dropped to the empty prompt for classifier-free guidance, and the U-Net
learns epsilon on SD's scaled-linear schedule (0.00085..0.012, 1000 steps) with AdamW, warm-up,
gradient clipping and an EMA of the weights, which is what gets saved. ``--max-minutes`` stops
early; the saved command then names the steps actually taken.

Beyond one CPU (README, "Training bigger"): ``--config configs/train/shapeworld_t2i_unet.yaml`` (flags
override it), ``--device cuda --precision bf16`` on a GPU, ``torchrun --nproc_per_node=N`` for N
processes (each encodes the same latents and trains on its slice of every global batch; the result
matches one process), and ``--checkpoint-dir DIR`` / ``--resume DIR``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from course_lib.core.cli import HelpFormatter
from course_lib.core.utils import count_parameters, seed_everything
from course_lib.diffusion.rectified_flow import FLOW_PREDICTION, FlowMatchSchedule
from course_lib.diffusion.schedules import make_schedule
from course_lib.models.mmdit import MMDiT, MMDiTConfig
from course_lib.models.unet import UNet
from course_lib.train.clip import load_shipped_clip
from course_lib.train.diffusion import TrainingConfig, save_diffusion_checkpoint, train_diffusion_model
from course_lib.train.latents import load_shipped_autoencoder
from course_lib.train.precision import resolve_precision
from course_lib.train.run_config import add_runtime_arguments, launcher, parse_args, training_run, window_means
from course_lib.train.text_to_image import (
    SHIPPED_T2I_UNET,
    TRAIN_SEED,
    LatentCaptionData,
    TextConditioner,
    t2i_unet_config,
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch (split between torchrun processes)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--images", type=int, default=60000, help="training images, encoded once to latents")
    p.add_argument("--model", choices=["unet", "mmdit"], default="unet",
                   help="the denoiser: the course's U-Net, or SD 3's multimodal diffusion transformer")
    p.add_argument("--objective", choices=["ddpm", "flow"], default="ddpm",
                   help="ddpm: predict the noise on SD's scaled-linear schedule; flow: rectified flow (SD 3)")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="U-Net: block_out_channels")
    p.add_argument("--patch-size", type=int, default=2, help="MMDiT: latent pixels per patch side")
    p.add_argument("--layers", type=int, default=4, help="MMDiT: joint transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="MMDiT: attention heads")
    p.add_argument("--head-dim", type=int, default=32, help="MMDiT: channels per head (width = heads * head_dim)")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--mask-padding", action=argparse.BooleanOptionalAction, default=True,
                   help="the U-Net reads only each caption's own tokens, the padding masked out of its "
                        "cross-attention (the pipeline does the same when the config says mask_padding); "
                        "--no-mask-padding reads all 77 positions, as SD does")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2; under torchrun, torchrun's OMP_NUM_THREADS per process)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early after this long")
    p.add_argument("--name", default=SHIPPED_T2I_UNET)
    p.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    add_runtime_arguments(p)
    args = parse_args(p, argv, script=Path(__file__).name)

    with training_run(args, default_threads=2) as ctx:
        seed_everything(args.seed)
        tokenizer, clip = load_shipped_clip()
        vae = load_shipped_autoencoder()
        text = TextConditioner(tokenizer, clip.text_encoder, mask_padding=args.mask_padding)
        start = time.time()
        data = LatentCaptionData.from_shapeworld(vae, args.images, seed=TRAIN_SEED)
        ctx.print(f"encoded {len(data)} training images to latents {tuple(data.latents.shape[1:])} in "
                  f"{time.time() - start:.0f} s", flush=True)
        flow = args.objective == "flow"
        schedule = FlowMatchSchedule() if flow else make_schedule("scaled_linear")
        prediction = FLOW_PREDICTION if flow else "epsilon"
        if args.model == "unet":
            unet = UNet(t2i_unet_config(context_dim=text.context_dim, block_out_channels=tuple(args.channels)))
        else:
            if not args.mask_padding:
                raise SystemExit("--model mmdit reads its pooled text vector at each caption's end token, which "
                                 "needs the caption mask: leave --mask-padding on")
            c = text.context_dim
            unet = MMDiT(MMDiTConfig(sample_size=data.latents.shape[-1], patch_size=args.patch_size,
                                     in_channels=data.latents.shape[1], out_channels=data.latents.shape[1],
                                     num_layers=args.layers, attention_head_dim=args.head_dim,
                                     num_attention_heads=args.heads, joint_attention_dim=c,
                                     caption_projection_dim=args.heads * args.head_dim, pooled_projection_dim=c))
        unet = unet.to(ctx.device)
        ctx.print(f"{type(unet).__name__}: {count_parameters(unet):,} parameters; {schedule}; "
                  f"{ctx.world_size} process(es) on {ctx.device}", flush=True)
        config = TrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=200,
                                ema_decay=args.ema_decay, prediction_type=prediction, seed=args.seed)
        start = time.time()
        result = train_diffusion_model(unet, data.batches(text, args.caption_dropout), schedule, config,
                                       max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                                       distributed=ctx, precision=args.precision, checkpoint_dir=args.checkpoint_dir,
                                       checkpoint_every=args.checkpoint_every, resume=args.resume,
                                       run_config={"images": args.images, "caption_dropout": args.caption_dropout,
                                                   "data_seed": TRAIN_SEED, "mask_padding": args.mask_padding})
        if not ctx.is_main:
            return
        minutes = (time.time() - start) / 60
        precision = resolve_precision(args.precision, ctx.device)
        tail = result.losses[-200:]
        print(f"{result.steps} steps ({result.images / len(data):.1f} epochs) in {minutes:.1f} min, "
              f"{result.images_per_second:.0f} img/s; mean loss of the last {len(tail)} steps "
              f"{sum(tail) / len(tail):.4f}", flush=True)

        channels = " ".join(map(str, args.channels))
        sizes = (f"--channels {channels}" if args.model == "unet" else
                 f"--model mmdit --patch-size {args.patch_size} --layers {args.layers} --heads {args.heads} "
                 f"--head-dim {args.head_dim}")
        command = (f"{launcher(ctx)} scripts/train_text_to_image.py --steps {result.steps} "
                   f"--batch-size {args.batch_size} --lr {args.lr} --ema-decay {args.ema_decay} "
                   f"--images {args.images} {sizes} "
                   + ("--objective flow " if flow else "")
                   + f"--caption-dropout {args.caption_dropout} --seed {args.seed}"
                   + ("" if args.mask_padding else " --no-mask-padding")
                   + ("" if args.name == SHIPPED_T2I_UNET else f" --name {args.name}")
                   + ("" if precision == "fp32" else f" --precision {precision}"))
        single_cpu = ctx.world_size == 1 and ctx.device.type == "cpu" and precision == "fp32"
        metrics = {"steps": result.steps, "epochs": round(result.images / len(data), 2),
                   "train_minutes": round(minutes, 1), "images_per_second": round(result.images_per_second, 1),
                   "threads": torch.get_num_threads(), "loss_last_200_steps": round(sum(tail) / len(tail), 4),
                   "machine": "2 shared CPU cores, fp32" if single_cpu else
                              f"{ctx.world_size} process(es) on {ctx.device.type}, {precision}",
                   "loss_every_50_steps": window_means(result.losses, 50)}
        if ctx.world_size > 1 or result.start_step:
            metrics["distributed"] = {"world_size": ctx.world_size, "per_process_batch": args.batch_size
                                      // ctx.world_size, "replica_difference": result.replica_difference,
                                      "resumed_from_step": result.start_step}
        training = {"steps": result.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 200,
                    "objective": args.objective,
                    "ema_decay": args.ema_decay, "grad_clip": config.grad_clip, "seed": args.seed,
                    "caption_dropout": args.caption_dropout, "mask_padding": args.mask_padding,
                    "data": f"{args.images} ShapeWorld train-split images (seeds from {TRAIN_SEED}), latents of "
                            "the shipped autoencoder, captions through the shipped CLIP text encoder",
                    "weights": "EMA"}
        save_diffusion_checkpoint(result.ema, args.name, schedule, prediction, command=command, metrics=metrics,
                                  training=training, folder=args.folder)
        print(f"saved {args.name} (EMA weights); reproduce with: {command}")


if __name__ == "__main__":
    main()
