"""Train the course's KL autoencoder on ShapeWorld (32x32x3 -> 8x8x4) and ship it; or sweep the KL weight.

    python scripts/train_autoencoder.py              # about 8 minutes on 2 CPU cores (one thread)
    python scripts/train_autoencoder.py --kl-sweep   # about 8 minutes: short runs at several KL weights

Made by the first command (used from notebook 08 on): data/shapeworld_vae.safetensors (+ .json,
+ its sha256 in data/manifest.json). Its config holds ``scaling_factor``, measured after training
the way SD measured 0.18215 (one over the standard deviation of sampled latents); its metrics
hold PSNR, the Frechet distance of reconstructions with its floor, the prompt adherence of
reconstructions and of the originals, and the loss curve.

Made by the second: benchmarks/results/vae_kl_sweep.json, read by notebook 08: for each KL weight,
PSNR, the latents' standard deviation and scale factor, the KL per latent number, and the Frechet
distance of images decoded from random latents.

Beyond one CPU (README, "Training bigger"): ``--config configs/train/shapeworld_vae.yaml`` (flags override
it; ``--channels`` and ``--latent-channels`` make a bigger autoencoder), ``--device cuda --precision
bf16`` on a GPU, and ``torchrun --nproc_per_node=N``: each process renders its own images (its own
seeds) and trains on ``--batch-size / N`` of them per step, gradients averaged; only rank 0
measures and saves. ``--checkpoint-dir DIR`` saves the training state (every ``--checkpoint-every``
steps and at the end), ``--stop-after K`` stops at step K (saving it), ``--resume DIR`` continues with
the same settings and the same number of processes (each renders its own images). The KL sweep runs
in one process and does not save training states.
"""

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from course_lib.core.checkpoints import save_checkpoint
from course_lib.core.cli import HelpFormatter
from course_lib.core.paths import REPO_ROOT
from course_lib.core.utils import count_parameters, seed_everything
from course_lib.evaluate.classifiers import shapeworld_features
from course_lib.evaluate.metrics import frechet_distance
from course_lib.models.vae import AutoencoderKL
from course_lib.train.autoencoder import (
    SHIPPED_VAE,
    SHIPPED_VAE_CONFIG,
    AutoencoderTrainingConfig,
    decode_latents,
    encode_latents,
    evaluate_reconstructions,
    measure_scale_factor,
    psnr,
    reconstruct,
    train_autoencoder,
)
from course_lib.train.distributed import DistributedContext, refuse_torchrun
from course_lib.train.precision import resolve_precision
from course_lib.train.run_config import add_runtime_arguments, launcher, parse_args, run_notes, training_run
from course_lib.train.state import Checkpointing
from course_lib.worlds.shapeworld import ShapeWorld

SWEEP_RESULTS = REPO_ROOT / "benchmarks" / "results" / "vae_kl_sweep.json"
SWEEP_WEIGHTS = (1e-6, 1e-4, 1e-2, 1e-1)


def _config_json(vae: AutoencoderKL) -> dict:
    cfg = asdict(vae.config)
    cfg["block_out_channels"] = list(cfg["block_out_channels"])
    return cfg


def autoencoder_config(args: argparse.Namespace):
    """The shipped sizes, or bigger ones from --channels / --latent-channels / --layers-per-block."""
    return replace(SHIPPED_VAE_CONFIG, block_out_channels=tuple(args.channels), latent_channels=args.latent_channels,
                   layers_per_block=args.layers_per_block)


def train_and_ship(args: argparse.Namespace, command: str, ctx: DistributedContext | None = None,
                   checkpoint: Checkpointing | None = None) -> None:
    ctx = ctx or DistributedContext()
    checkpoint = checkpoint or Checkpointing()
    config = autoencoder_config(args)
    vae = AutoencoderKL(config).to(ctx.device)
    ctx.print(f"autoencoder: {count_parameters(vae):,} parameters, {config}; {ctx.world_size} process(es) on "
              f"{ctx.device}")
    train_cfg = AutoencoderTrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                          kl_weight=args.kl_weight, loss_kind=args.loss, seed=args.seed,
                                          channels_last=not args.no_channels_last)
    history = train_autoencoder(vae, train_cfg, distributed=ctx, precision=args.precision, checkpoint=checkpoint)
    if checkpoint.stopped_at is not None:
        ctx.print(checkpoint.stopped_message())
        return
    if not ctx.is_main:
        return
    vae = vae.cpu()
    print(f"trained {train_cfg.steps} steps in {history.seconds / 60:.1f} min "
          f"({history.images_per_second:.0f} images/s); last 50 steps: L1 "
          f"{sum(history.reconstruction[-50:]) / 50:.1f}, KL {sum(history.kl[-50:]) / 50:.0f} per image")

    scale = measure_scale_factor(vae, n=2048, seed=args.seed)
    vae.config.scaling_factor = scale
    z = encode_latents(vae, ShapeWorld().sample(2048, seed=args.seed).tensors(), scale=True)
    print(f"scale factor {scale:.4f} (SD: 0.18215); scaled latents: std {z.std():.3f}, mean {z.mean():.3f}")

    metrics = {"scale_factor": round(scale, 5), "scaled_latent_std_of_means": round(float(z.std()), 4),
               "parameters": count_parameters(vae), "train_minutes": round(history.seconds / 60, 2),
               "images_per_second": round(history.images_per_second, 1), "training": asdict(train_cfg)}
    metrics.update(run_notes(ctx, resolve_precision(args.precision, ctx.device), checkpoint.start_step))
    for split in ("train", "heldout"):
        report = evaluate_reconstructions(vae, n=1000, seed=4242, split=split)
        print(f"{split:8s}", report.as_row())
        metrics[split] = report.as_row(4)
    every = max(1, train_cfg.steps // 150)
    metrics["loss_curve_every"] = every
    metrics["reconstruction_curve"] = [round(sum(history.reconstruction[i:i + every]) / every, 2)
                                       for i in range(0, train_cfg.steps - every + 1, every)]
    save_checkpoint(vae, SHIPPED_VAE, config=_config_json(vae), command=command, metrics=metrics, folder=args.folder)
    print(f"saved {Path(args.folder) if args.folder else 'data'}/{SHIPPED_VAE}.safetensors; "
          f"total {(time.time() - START) / 60:.1f} min")


def kl_sweep(args: argparse.Namespace, command: str) -> None:
    world = ShapeWorld()
    test = world.sample(500, seed=4242).tensors()
    reference = shapeworld_features(world.sample(2000, seed=4243).tensors())
    floor = frechet_distance(reference, shapeworld_features(test))
    rows = []
    for weight in args.weights:
        seed_everything(args.seed)
        vae = AutoencoderKL(autoencoder_config(args)).to(args.device or "cpu")
        cfg = AutoencoderTrainingConfig(steps=args.sweep_steps, batch_size=args.batch_size, lr=args.lr,
                                        kl_weight=weight, loss_kind=args.loss, seed=args.seed,
                                        channels_last=not args.no_channels_last)
        history = train_autoencoder(vae, cfg, desc=f"kl_weight={weight:g}", precision=args.precision)
        vae = vae.cpu()
        recon = reconstruct(vae, test)
        posterior_std = _mean_posterior_std(vae, test)
        means = encode_latents(vae, test, scale=False)
        scale = measure_scale_factor(vae, n=2048, seed=args.seed)
        # Decode random latents from the prior N(0, I), put at the latents' scale: is the autoencoder,
        # alone, a generator? Only when the KL weight makes its latents look like the prior.
        g = torch.Generator().manual_seed(args.seed)
        prior = decode_latents(vae, torch.randn(500, *means.shape[1:], generator=g) / scale, scaled=False)
        row = {"kl_weight": weight, "psnr": round(float(psnr(test, recon).mean()), 3),
               "kl_per_latent": round(sum(history.kl[-50:]) / 50 / means[0].numel(), 4),
               "latent_std": round(float(means.std()), 4), "posterior_std": round(posterior_std, 4),
               "scale_factor": round(scale, 5),
               "frechet_recon": round(frechet_distance(reference, shapeworld_features(recon)), 3),
               "frechet_prior_samples": round(frechet_distance(reference, shapeworld_features(prior)), 3),
               "minutes": round(history.seconds / 60, 2)}
        print(row, flush=True)
        rows.append(row)
    SWEEP_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = {"command": command, "autoencoder": _config_json(AutoencoderKL(autoencoder_config(args))),
           "training": asdict(replace(cfg, kl_weight=None)), "frechet_floor": round(floor, 3),
           "eval": "500 training-split images, seed 4242; Frechet reference: 2000 images, seed 4243",
           "rows": rows}
    SWEEP_RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {SWEEP_RESULTS.relative_to(REPO_ROOT)}; total {(time.time() - START) / 60:.1f} min")


@torch.no_grad()
def _mean_posterior_std(vae: AutoencoderKL, images: torch.Tensor) -> float:
    return vae.encode(images).std.mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch (split between processes)")
    parser.add_argument("--lr", type=float, default=AutoencoderTrainingConfig.lr)
    parser.add_argument("--kl-weight", type=float, default=1e-6, help="SD's value")
    parser.add_argument("--loss", choices=("l1", "mse"), default="mse",
                        help="reconstruction loss (SD: l1 + LPIPS + GAN; here mse learns colour ~3x sooner)")
    parser.add_argument("--channels", type=int, nargs="+", default=list(SHIPPED_VAE_CONFIG.block_out_channels),
                        help="block_out_channels (one per level; 3 levels: 32x32 -> 8x8)")
    parser.add_argument("--latent-channels", type=int, default=SHIPPED_VAE_CONFIG.latent_channels)
    parser.add_argument("--layers-per-block", type=int, default=SHIPPED_VAE_CONFIG.layers_per_block)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 1: fastest on a busy 2-core machine; under torchrun, torchrun's "
                             "OMP_NUM_THREADS per process)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--kl-sweep", action="store_true", help="run the KL-weight sweep instead")
    parser.add_argument("--weights", type=float, nargs="+", default=list(SWEEP_WEIGHTS))
    parser.add_argument("--sweep-steps", type=int, default=500)
    parser.add_argument("--folder", default=None, help="where to save the autoencoder (default: the course's data/)")
    add_runtime_arguments(parser, stop_after=True)
    args = parse_args(parser, argv, script=Path(__file__).name)
    checkpoint = Checkpointing.from_args(args)
    if args.kl_sweep:
        if checkpoint.enabled:
            parser.error("--kl-sweep trains several short runs and saves no training state; drop --checkpoint-dir, "
                         "--resume and --stop-after")
        refuse_torchrun("train_autoencoder.py --kl-sweep", ("train_autoencoder.py (without --kl-sweep)",))
    flags = ["--kl-sweep", "--weights", *(f"{w:g}" for w in args.weights), "--sweep-steps",
             str(args.sweep_steps)] if args.kl_sweep else ["--steps", str(args.steps), "--kl-weight",
                                                          f"{args.kl_weight:g}"]
    sizes = autoencoder_config(args)
    if sizes != SHIPPED_VAE_CONFIG:
        flags += ["--channels", *map(str, args.channels), "--latent-channels", str(args.latent_channels),
                  "--layers-per-block", str(args.layers_per_block)]
    with training_run(args, default_threads=1) as ctx:
        seed_everything(args.seed)
        precision = resolve_precision(args.precision, ctx.device)
        command = " ".join([f"{launcher(ctx)} scripts/train_autoencoder.py", *flags, "--loss", args.loss,
                            "--batch-size", str(args.batch_size),
                            "--lr", f"{args.lr:g}", "--seed", str(args.seed)]
                           + ([] if precision == "fp32" else ["--precision", precision]))
        if args.kl_sweep:
            kl_sweep(args, command)
        else:
            train_and_ship(args, command, ctx, checkpoint)


START = time.time()

if __name__ == "__main__":
    main()
