"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (and imported by it for the sizes).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py OUT [SCRIPT ARGS...]

Each process trains the same tiny U-Net with ``train_diffusion_model`` on the CPU (gloo): 2 steps
that save a training state, then a fresh model resumed from it for 2 more. Every process writes
what it ended with (``OUT/rank{R}.safetensors``) and which examples of each global batch it was
given (``OUT/rank{R}.json``); the test compares them with each other and with one process.

Then, with ``SCRIPT ARGS`` (a script's path and its flags), the same processes run that training
script exactly as ``torchrun ... SCRIPT ARGS`` would (one launch instead of two keeps the test fast).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from course_lib.diffusion.schedules import make_schedule
from course_lib.models.unet import UNet, UNetConfig
from course_lib.train.diffusion import TrainingConfig, train_diffusion_model
from course_lib.train.distributed import init_distributed, shutdown_distributed

STEPS, BATCH, SEED = 4, 8, 3
CONFIG = TrainingConfig(steps=STEPS, batch_size=BATCH, lr=1e-3, warmup_steps=0, ema_decay=0.9, seed=SEED)


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(in_channels=1, out_channels=1, sample_size=8, block_out_channels=(8, 16),
                           layers_per_block=1, attention_levels=(), norm_num_groups=4, num_attention_heads=2))


class Recording(nn.Module):
    """The U-Net, noting which examples (``index``, one per row) each call was given."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self.seen.append(index.tolist())
        return self.unet(x, t)


def toy_data(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g).clamp(-1, 1)


def batches(data: torch.Tensor):
    """Global batches with each row's index passed to the model (and so sliced like the images)."""
    def next_batch(n: int, g: torch.Generator):
        idx = torch.randint(0, len(data), (n,), generator=g)
        return data[idx], {"index": idx}
    return next_batch


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    data, schedule = toy_data(), make_schedule("linear", 1000)
    first = Recording(tiny_unet(0))
    half = TrainingConfig(**{**CONFIG.__dict__, "steps": STEPS // 2})
    train_diffusion_model(first, batches(data), schedule, half, distributed=ctx, show_progress=False,
                          checkpoint_dir=out / "state")
    ctx.barrier()  # rank 0 has written the state
    second = Recording(tiny_unet(99))  # other weights: the resume must replace them all
    result = train_diffusion_model(second, batches(data), schedule, CONFIG, distributed=ctx, show_progress=False,
                                   resume=out / "state")
    state = {f"model.{k}": v for k, v in second.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in result.ema.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"rank{ctx.rank}.safetensors"))
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({
        "rank": ctx.rank, "world_size": ctx.world_size, "seen": first.seen + second.seen,
        "losses": result.losses, "replica_difference": result.replica_difference,
        "start_step": result.start_step}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    if len(sys.argv) > 2:  # the script joins the running process group and leaves it at its end
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    shutdown_distributed()
