"""Train notebook 01's GANs and diffusion models and ship their weights in data/.

    python scripts/train_gan_vs_diffusion.py --part toy     # 2-D runs, 5 seeds x 2 mixtures x 2 models
    python scripts/train_gan_vs_diffusion.py --part dcgan   # the digit DCGAN (about 12 min on 2 busy cores)

The digit diffusion model it is compared with is the course's MNIST U-Net, ``data/mnist_unet``,
made by scripts/train_mnist_diffusion.py (notebook 06) with the same parameter count.

Every setting comes from course_lib (``gan.TOY_GAN_TRAINING``, ``toy_diffusion.TOY_DIFFUSION_TRAINING``,
``gan.MNIST_DCGAN_TRAINING``): the notebook trains with
the same code and settings. The 2-D runs use one torch thread, as the notebook does, so that the
notebook's live seed-0 run can reproduce the shipped one.

Made by this script: data/toy_gan_vs_diffusion.safetensors and data/dcgan_mnist.safetensors (each
+ .json, + its sha256 in data/manifest.json).

Beyond one CPU (README, "Training bigger"): ``--config configs/train/dcgan_mnist.yaml`` or
``configs/train/toy_gan_vs_diffusion.yaml``; ``--device cuda`` trains the digit DCGAN on a GPU (the 2-D
runs stay on one CPU thread, to match the notebook). This script trains in one process: under
``torchrun`` with several processes it stops with an error (the GAN's alternating updates are not
split across processes here).
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from course_lib import gan, toy_diffusion
from course_lib.checkpoints import save_checkpoint
from course_lib.classifiers import digit_features
from course_lib.distributed import refuse_torchrun
from course_lib.metrics import frechet_distance
from course_lib.mnist import MNIST5k
from course_lib.run_config import parse_args
from course_lib.toy2d import make_mixture, score_modes
from course_lib.utils import count_parameters, get_device, seed_everything

TOY_MIXTURES = ("ring8", "grid25")
TOY_EVAL_SAMPLES = 2500
TOY_SAMPLER = {"sampler": "dpm-solver++", "steps": 50}


def curve(values: list[float], points: int = 200) -> list[float]:
    """A long loss curve as ``points`` window means, small enough for a JSON file."""
    chunks = np.array_split(np.asarray(values, dtype=float), min(points, len(values)))
    return [round(float(c.mean()), 5) for c in chunks]


def train_toy(seeds: int) -> None:
    torch.set_num_threads(1)
    zoo = toy_diffusion.ToyModelZoo(TOY_MIXTURES, seeds, dataclasses.asdict(gan.TOY_GAN),
                                    dataclasses.asdict(toy_diffusion.TOY_DENOISER))
    schedule = toy_diffusion.toy_schedule()
    metrics: dict = {"seconds": {"gan": [], "diffusion": []}}
    for name in TOY_MIXTURES:
        mixture = make_mixture(name)
        for seed in range(seeds):
            seed_everything(seed)
            G, D = gan.MLPGenerator(gan.TOY_GAN), gan.MLPDiscriminator(gan.TOY_GAN)
            h = gan.train_gan(G, D, mixture.sample, dataclasses.replace(gan.TOY_GAN_TRAINING, seed=seed),
                              show_progress=False)
            zoo.runs(name, "gan")[seed].load_state_dict(G.state_dict())
            s_gan = score_modes(G.sample(TOY_EVAL_SAMPLES, torch.Generator().manual_seed(1000 + seed)), mixture)

            seed_everything(seed)
            M = toy_diffusion.MLPDenoiser(toy_diffusion.TOY_DENOISER)
            hd = toy_diffusion.train_diffusion(M, mixture.sample, schedule,
                                               dataclasses.replace(toy_diffusion.TOY_DIFFUSION_TRAINING, seed=seed),
                                               show_progress=False)
            zoo.runs(name, "diffusion")[seed].load_state_dict(hd.ema.state_dict())
            x = toy_diffusion.generate(hd.ema, schedule, (TOY_EVAL_SAMPLES, 2), seed=1000 + seed, **TOY_SAMPLER)
            s_diff = score_modes(x, mixture)
            metrics[f"{name}_seed{seed}"] = {"gan": [s_gan.modes_covered, round(s_gan.high_quality, 4)],
                                             "diffusion": [s_diff.modes_covered, round(s_diff.high_quality, 4)]}
            metrics["seconds"]["gan"].append(round(h.seconds, 1))
            metrics["seconds"]["diffusion"].append(round(hd.seconds, 1))
            print(f"{name} seed {seed}: GAN {s_gan} ({h.seconds:.0f} s), diffusion {s_diff} ({hd.seconds:.0f} s)",
                  flush=True)
    metrics["sampler"] = TOY_SAMPLER
    save_checkpoint(zoo, "toy_gan_vs_diffusion",
                    config={"mixtures": list(TOY_MIXTURES), "seeds": seeds,
                            "gan": dataclasses.asdict(gan.TOY_GAN),
                            "denoiser": dataclasses.asdict(toy_diffusion.TOY_DENOISER)},
                    command=f"python scripts/train_gan_vs_diffusion.py --part toy --seeds {seeds}",
                    metrics=metrics)


def mnist_frechet(images: torch.Tensor, train: MNIST5k, test: MNIST5k) -> tuple[float, float]:
    real_a, real_b = digit_features(train.images), digit_features(test.images)
    return frechet_distance(real_a, digit_features(images)), frechet_distance(real_a, real_b)


def train_dcgan(threads: int, device: str | None = None) -> None:
    torch.set_num_threads(threads)
    train, test = MNIST5k("train"), MNIST5k("test")
    seed_everything(0)
    G, D = gan.DCGANGenerator(gan.MNIST_DCGAN), gan.DCGANDiscriminator(gan.MNIST_DCGAN)
    dev = get_device(device or "cpu")
    G, D = G.to(dev), D.to(dev)
    config = gan.MNIST_DCGAN_TRAINING
    h = gan.train_gan(G, D, train.images, config)
    G = G.cpu()
    fd, floor = mnist_frechet(G.sample(500, torch.Generator().manual_seed(1)), train, test)
    print(f"DCGAN: {h.seconds / 60:.1f} min, Frechet {fd:.2f} (floor {floor:.2f})")
    save_checkpoint(G, "dcgan_mnist", config=dataclasses.asdict(gan.MNIST_DCGAN),
                    command=f"python scripts/train_gan_vs_diffusion.py --part dcgan --threads {threads}"
                            + ("" if dev.type == "cpu" else f" --device {dev.type}"),
                    metrics={"train_minutes": round(h.seconds / 60, 2), "threads": threads,
                             **({} if dev.type == "cpu" else {"device": str(dev)}),
                             "training": dataclasses.asdict(config),
                             "parameters": {"generator": count_parameters(G), "discriminator": count_parameters(D)},
                             "frechet_500": round(fd, 3), "frechet_floor_500": round(floor, 3),
                             "loss_d": curve(h.loss_d), "loss_g": curve(h.loss_g),
                             "d_real": curve(h.d_real), "d_fake": curve(h.d_fake)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("toy", "dcgan"), required=True)
    parser.add_argument("--seeds", type=int, default=5, help="2-D runs per mixture and model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the digit models")
    parser.add_argument("--device", default=None,
                        help="for --part dcgan: cpu (default), cuda, mps; the 2-D runs always use one CPU thread")
    args = parse_args(parser, argv, script=Path(__file__).name)
    refuse_torchrun("train_gan_vs_diffusion.py", SUPPORTS_TORCHRUN)
    if args.part == "toy":
        train_toy(args.seeds)
    else:
        train_dcgan(args.threads, args.device)


#: The training scripts that split their batches across torchrun processes.
SUPPORTS_TORCHRUN = ("train_mnist_diffusion.py", "train_text_to_image.py", "train_digit_classifier.py",
                     "train_attribute_net.py", "train_segmentation.py", "train_autoencoder.py", "train_clip.py")


if __name__ == "__main__":
    main()
