"""Train notebook 01's GANs and diffusion models and ship their weights in data/.

    python scripts/train_gan_vs_diffusion.py --part toy     # 2-D runs, 5 seeds x 2 mixtures x 2 models
    python scripts/train_gan_vs_diffusion.py --part dcgan   # the digit DCGAN (about 12 min on 2 busy cores)

The digit diffusion model it is compared with is the course's MNIST U-Net stopped at the DCGAN's
budget, ``data/mnist_unet_short``, made by scripts/train_mnist_diffusion.py (notebook 06) with the
same parameter count (``--config configs/train/mnist_unet_short.yaml``).

Every setting comes from course_lib (``course_lib.train.gan.TOY_GAN_TRAINING`` and ``MNIST_DCGAN_TRAINING``,
``toy_diffusion.TOY_DIFFUSION_TRAINING``): the notebook trains with
the same code and settings. The 2-D runs use one torch thread, as the notebook does. A GAN run is
chaotic: the shipped seed-0 ring GAN came from an earlier run and differs from what this code gives
on a given machine today (notebook 01, section 4, measures how one float32 step in the weights grows).

Made by this script: data/toy_gan_vs_diffusion.safetensors and data/dcgan_mnist.safetensors (each
+ .json, + its sha256 in data/manifest.json).

Beyond one CPU (README, "Training bigger"): ``--config configs/train/dcgan_mnist.yaml`` or
``configs/train/toy_gan_vs_diffusion.yaml``; ``--device cuda`` trains the digit DCGAN on a GPU (the 2-D
runs stay on the CPU, one thread per process, to match the notebook). ``--steps N`` shortens every run
(a quick try; ``--folder`` keeps it out of data/).

``torchrun --nproc_per_node=N`` trains every run with DistributedDataParallel over N processes: each
process draws the whole global batch (real points or digits, and the latents z; for the diffusion
runs also the timesteps and noise) from the run's one seeded generator and trains on its own
slice of it, so the processes see different examples and together the single-process batch. Each
GAN step first updates D (one forward of D on the real and the fake slice, D's gradients averaged),
then G (G's gradients averaged; D's own gradients from this pass are discarded, as in one process).
Only rank 0 measures, prints and saves; the saved metrics hold the largest weight difference
between the processes (0.0). What matches one process:

- the 2-D GANs and diffusion models (no BatchNorm): the same run, to float tolerance;
- the digit DCGAN: *not* the same run. Its generator and discriminator use BatchNorm, which in
  training mode normalises by the statistics of the batch each process holds (its slice), not of
  the global batch, so the numbers differ from one process (statistically it is a DCGAN trained
  with a smaller BatchNorm batch). ``torch.nn.SyncBatchNorm`` would compute global statistics, but
  in this torch version it runs on CUDA only, so it is not used (the CPU is what this course
  tests on). BatchNorm's running statistics are averaged over the processes at the end.

``--checkpoint-dir DIR`` saves the training state (generator, discriminator, both optimizers, the
random generator, the losses; every ``--checkpoint-every`` steps and at the end): the DCGAN's in DIR,
each 2-D run's in ``DIR/{mixture}_seed{seed}_{gan|diffusion}``. ``--stop-after K`` stops the run in
progress at step K (saving it) and the script there; ``--resume DIR`` continues (finished 2-D runs
are only measured again; ``--steps`` may grow, as no learning-rate schedule depends on it), in one
process, on a GPU or under torchrun.
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from course_lib.core.checkpoints import save_checkpoint
from course_lib.core.cli import HelpFormatter
from course_lib.core.utils import count_parameters, get_device, seed_everything
from course_lib.evaluate.classifiers import digit_features
from course_lib.evaluate.metrics import frechet_distance
from course_lib.models import gan
from course_lib.models.toy import TOY_DENOISER, MLPDenoiser, ToyModelZoo
from course_lib.train import toy_diffusion
from course_lib.train.distributed import DistributedContext, distributed_run
from course_lib.train.gan import MNIST_DCGAN_TRAINING, TOY_GAN_TRAINING, train_gan
from course_lib.train.run_config import add_checkpoint_arguments, launcher, parse_args
from course_lib.train.state import Checkpointing
from course_lib.worlds.mnist import MNIST5k
from course_lib.worlds.toy2d import make_mixture, score_modes

TOY_MIXTURES = ("ring8", "grid25")
TOY_EVAL_SAMPLES = 2500
TOY_SAMPLER = {"sampler": "dpm-solver++", "steps": 50}


def curve(values: list[float], points: int = 200) -> list[float]:
    """A long loss curve as ``points`` window means, small enough for a JSON file."""
    chunks = np.array_split(np.asarray(values, dtype=float), min(points, len(values)))
    return [round(float(c.mean()), 5) for c in chunks]


def _distributed_metrics(ctx: DistributedContext, batch_size: int, replica_difference: float,
                         resumed_from_step: int | list[int]) -> dict:
    return {"world_size": ctx.world_size, "per_process_batch": batch_size // ctx.world_size,
            "replica_difference": replica_difference, "resumed_from_step": resumed_from_step}


def train_toy(seeds: int, ctx: DistributedContext | None = None, steps: int | None = None,
              folder: str | None = None, checkpoint: Checkpointing | None = None) -> None:
    ctx = ctx or DistributedContext()
    checkpoint = checkpoint or Checkpointing()
    torch.set_num_threads(1)
    gan_training, diffusion_training = TOY_GAN_TRAINING, toy_diffusion.TOY_DIFFUSION_TRAINING
    if steps is not None:
        gan_training = dataclasses.replace(gan_training, steps=steps)
        diffusion_training = dataclasses.replace(diffusion_training, steps=steps)
    runs = checkpoint.parts({f"{name}_seed{seed}_{kind}": {"part": "toy", "mixture": name}
                             for name in TOY_MIXTURES for seed in range(seeds) for kind in ("gan", "diffusion")})
    zoo = ToyModelZoo(TOY_MIXTURES, seeds, dataclasses.asdict(gan.TOY_GAN), dataclasses.asdict(TOY_DENOISER))
    schedule = toy_diffusion.toy_schedule()
    metrics: dict = {"seconds": {"gan": [], "diffusion": []}}
    replica_difference, resumed = 0.0, []
    for name in TOY_MIXTURES:
        mixture = make_mixture(name)
        for seed in range(seeds):
            seed_everything(seed)
            G, D = gan.MLPGenerator(gan.TOY_GAN), gan.MLPDiscriminator(gan.TOY_GAN)
            run = runs[f"{name}_seed{seed}_gan"]
            h = train_gan(G, D, mixture.sample, dataclasses.replace(gan_training, seed=seed),
                          show_progress=False, distributed=ctx, checkpoint=run)
            if run.stopped_at is not None:
                ctx.print(run.stopped_message(f"{name} seed {seed} (GAN)"))
                return
            replica_difference = max(replica_difference, h.replica_difference)
            resumed.append(run.start_step)

            seed_everything(seed)
            M = MLPDenoiser(TOY_DENOISER)
            run = runs[f"{name}_seed{seed}_diffusion"]
            hd = toy_diffusion.train_diffusion(M, mixture.sample, schedule,
                                               dataclasses.replace(diffusion_training, seed=seed),
                                               show_progress=False, distributed=ctx, checkpoint=run)
            if run.stopped_at is not None:
                ctx.print(run.stopped_message(f"{name} seed {seed} (diffusion)"))
                return
            replica_difference = max(replica_difference, ctx.replica_difference(M), ctx.replica_difference(hd.ema))
            resumed.append(run.start_step)
            if not ctx.is_main:
                continue
            zoo.runs(name, "gan")[seed].load_state_dict(G.state_dict())
            s_gan = score_modes(G.sample(TOY_EVAL_SAMPLES, torch.Generator().manual_seed(1000 + seed)), mixture)
            zoo.runs(name, "diffusion")[seed].load_state_dict(hd.ema.state_dict())
            x = toy_diffusion.generate(hd.ema, schedule, (TOY_EVAL_SAMPLES, 2), seed=1000 + seed, **TOY_SAMPLER)
            s_diff = score_modes(x, mixture)
            metrics[f"{name}_seed{seed}"] = {"gan": [s_gan.modes_covered, round(s_gan.high_quality, 4)],
                                             "diffusion": [s_diff.modes_covered, round(s_diff.high_quality, 4)]}
            metrics["seconds"]["gan"].append(round(h.seconds, 1))
            metrics["seconds"]["diffusion"].append(round(hd.seconds, 1))
            print(f"{name} seed {seed}: GAN {s_gan} ({h.seconds:.0f} s), diffusion {s_diff} ({hd.seconds:.0f} s)",
                  flush=True)
    if not ctx.is_main:
        return
    metrics["sampler"] = TOY_SAMPLER
    if ctx.world_size > 1 or any(resumed):
        metrics["distributed"] = _distributed_metrics(ctx, gan_training.batch_size, replica_difference, resumed)
    save_checkpoint(zoo, "toy_gan_vs_diffusion",
                    config={"mixtures": list(TOY_MIXTURES), "seeds": seeds,
                            "gan": dataclasses.asdict(gan.TOY_GAN),
                            "denoiser": dataclasses.asdict(TOY_DENOISER)},
                    command=f"{launcher(ctx)} scripts/train_gan_vs_diffusion.py --part toy --seeds {seeds}"
                            + ("" if steps is None else f" --steps {steps}"),
                    metrics=metrics, folder=folder)


def mnist_frechet(images: torch.Tensor, train: MNIST5k, test: MNIST5k) -> tuple[float, float]:
    real_a, real_b = digit_features(train.images), digit_features(test.images)
    return frechet_distance(real_a, digit_features(images)), frechet_distance(real_a, real_b)


def train_dcgan(threads: int, device: str | None = None, ctx: DistributedContext | None = None,
                steps: int | None = None, folder: str | None = None, checkpoint: Checkpointing | None = None) -> None:
    ctx = ctx or DistributedContext(device=get_device(device or "cpu"))
    checkpoint = checkpoint or Checkpointing()
    torch.set_num_threads(threads)
    train, test = MNIST5k("train"), MNIST5k("test")
    seed_everything(0)
    G, D = gan.DCGANGenerator(gan.MNIST_DCGAN), gan.DCGANDiscriminator(gan.MNIST_DCGAN)
    dev = ctx.device
    G, D = G.to(dev), D.to(dev)
    config = MNIST_DCGAN_TRAINING if steps is None else dataclasses.replace(MNIST_DCGAN_TRAINING, steps=steps)
    h = train_gan(G, D, train.images, config, distributed=ctx, checkpoint=checkpoint)
    if checkpoint.stopped_at is not None:
        ctx.print(checkpoint.stopped_message("the DCGAN"))
        return
    if not ctx.is_main:
        return
    G = G.cpu()
    fd, floor = mnist_frechet(G.sample(500, torch.Generator().manual_seed(1)), train, test)
    print(f"DCGAN: {h.seconds / 60:.1f} min, Frechet {fd:.2f} (floor {floor:.2f})")
    metrics = {"train_minutes": round(h.seconds / 60, 2), "threads": threads,
               **({} if dev.type == "cpu" else {"device": str(dev)}),
               "training": dataclasses.asdict(config),
               "parameters": {"generator": count_parameters(G), "discriminator": count_parameters(D)},
               "frechet_500": round(fd, 3), "frechet_floor_500": round(floor, 3),
               "loss_d": curve(h.loss_d), "loss_g": curve(h.loss_g),
               "d_real": curve(h.d_real), "d_fake": curve(h.d_fake)}
    if ctx.world_size > 1 or h.start_step:
        metrics["distributed"] = {**_distributed_metrics(ctx, config.batch_size, h.replica_difference, h.start_step),
                                  "batchnorm": "per-process batch statistics (running statistics averaged at the end)"}
    save_checkpoint(G, "dcgan_mnist", config=dataclasses.asdict(gan.MNIST_DCGAN),
                    command=f"{launcher(ctx)} scripts/train_gan_vs_diffusion.py --part dcgan --threads {threads}"
                            + ("" if dev.type == "cpu" else f" --device {dev.type}")
                            + ("" if steps is None else f" --steps {steps}"),
                    metrics=metrics, folder=folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--part", choices=("toy", "dcgan"), required=True)
    parser.add_argument("--seeds", type=int, default=5, help="2-D runs per mixture and model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the digit models")
    parser.add_argument("--device", default=None,
                        help="for --part dcgan: cpu (default), cuda, mps; the 2-D runs always use one CPU thread "
                             "(under torchrun with --device cuda, each process takes cuda:LOCAL_RANK)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of every run (default: the course's settings, which made the shipped weights)")
    parser.add_argument("--folder", default=None, help="where to save (default: the course's data/)")
    add_checkpoint_arguments(parser)
    args = parse_args(parser, argv, script=Path(__file__).name)
    checkpoint = Checkpointing.from_args(args, part=args.part)
    with distributed_run("cpu" if args.part == "toy" else (args.device or "cpu")) as ctx:
        ctx.check_same_on_all_ranks(vars(args), "settings")
        if args.part == "toy":
            train_toy(args.seeds, ctx, args.steps, args.folder, checkpoint)
        else:
            train_dcgan(args.threads, args.device, ctx, args.steps, args.folder, checkpoint)


if __name__ == "__main__":
    main()
