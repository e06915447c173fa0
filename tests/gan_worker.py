"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (and imported by it for the sizes).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/gan_worker.py OUT [SCRIPT ARGS...]

Each process trains with ``course_lib.train.gan.train_gan`` on the CPU (gloo), DistributedDataParallel over both:

1. a tiny 2-D GAN (MLPs, no BatchNorm) for ``STEPS`` steps;
2. a tiny DCGAN (BatchNorm in both networks) for ``STEPS`` steps; then the same DCGAN again, stopped
   at ``STEPS // 2`` with its training state saved, and a fresh one (other weights) resumed from it.

Every process writes what it ended with (``OUT/rank{R}.safetensors``) and its losses
(``OUT/rank{R}.json``); the test compares the processes with each other, the resumed DCGAN with the
uninterrupted one, and the 2-D GAN with one process. Then, with ``SCRIPT ARGS``, the same processes
run that training script exactly as ``torchrun ... SCRIPT ARGS`` would (one launch keeps the test fast).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from course_lib.models import gan
from course_lib.train.distributed import DistributedContext, init_distributed, shutdown_distributed
from course_lib.train.gan import GANHistory, GANTrainConfig, train_gan
from course_lib.train.state import Checkpointing
from course_lib.worlds.toy2d import make_mixture

STEPS, BATCH = 4, 8
TOY = GANTrainConfig(steps=STEPS, batch_size=BATCH, lr_generator=2e-3, lr_discriminator=2e-3, seed=1)
DCGAN = GANTrainConfig(steps=STEPS, batch_size=BATCH, lr_generator=2e-3, lr_discriminator=2e-3, seed=2)


def toy_nets() -> tuple[gan.MLPGenerator, gan.MLPDiscriminator]:
    torch.manual_seed(0)
    cfg = gan.MLPGANConfig(latent_dim=4, hidden=16, layers=2)
    return gan.MLPGenerator(cfg), gan.MLPDiscriminator(cfg)


def dcgan_nets(seed: int = 0) -> tuple[gan.DCGANGenerator, gan.DCGANDiscriminator]:
    torch.manual_seed(seed)
    cfg = gan.DCGANConfig(latent_dim=4, channels=4, image_size=8)
    return gan.DCGANGenerator(cfg), gan.DCGANDiscriminator(cfg)


def ring(n: int, g: torch.Generator) -> torch.Tensor:
    return make_mixture("ring8").sample(n, g)


def digits() -> torch.Tensor:
    """Stand-ins for 8x8 digits in [-1, 1] (the DCGAN's numbers, not its pictures, are under test)."""
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def weights(prefix: str, G: torch.nn.Module, D: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.G.{k}": v for k, v in G.state_dict().items()}
    out.update({f"{prefix}.D.{k}": v for k, v in D.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def train_toy(ctx: DistributedContext | None = None) -> tuple[dict[str, torch.Tensor], GANHistory]:
    G, D = toy_nets()
    history = train_gan(G, D, ring, TOY, show_progress=False, distributed=ctx)
    return weights("toy", G, D), history


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    state, toy = train_toy(ctx)
    G, D = dcgan_nets()
    dcgan = train_gan(G, D, digits(), DCGAN, show_progress=False, distributed=ctx)
    state.update(weights("dcgan", G, D))
    G, D = dcgan_nets()
    stopped = Checkpointing(out / "dcgan-state", stop_after=STEPS // 2)
    train_gan(G, D, digits(), DCGAN, show_progress=False, distributed=ctx, checkpoint=stopped)
    G, D = dcgan_nets(seed=99)  # other weights: the resume must replace them all
    resumed = train_gan(G, D, digits(), DCGAN, show_progress=False, distributed=ctx,
                            checkpoint=Checkpointing(resume=out / "dcgan-state"))
    state.update(weights("resumed", G, D))
    save_file(state, str(out / f"rank{ctx.rank}.safetensors"))
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({
        "rank": ctx.rank, "world_size": ctx.world_size, "stopped_at": stopped.stopped_at,
        "toy": {"loss_d": toy.loss_d, "loss_g": toy.loss_g, "replica_difference": toy.replica_difference},
        "dcgan": {"loss_d": dcgan.loss_d, "replica_difference": dcgan.replica_difference},
        "resumed": {"loss_d": resumed.loss_d, "start_step": resumed.start_step,
                    "replica_difference": resumed.replica_difference}}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    if len(sys.argv) > 2:  # the script joins the running process group and leaves it at its end
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    shutdown_distributed()
