"""Training beyond one CPU: one GPU, or several processes under ``torchrun`` (DistributedDataParallel).

Not built in a notebook: this module is documented in the README's "Training bigger" section.
The notebooks train on one CPU process, where everything here reduces to "do nothing":
``init_distributed()`` without torchrun's environment returns a single-process context (rank 0
of 1), ``ctx.wrap(model)`` returns the model itself, and ``autocast(device, "fp32")`` is a no-op.
This module starts and joins the processes; batch slices and seeds per process are in
``course_lib.train.sharding``, autocast and the gradient scaler in ``course_lib.train.precision``.

    ctx = init_distributed()                     # reads torchrun's RANK, WORLD_SIZE, LOCAL_RANK, ...
    model = build_model().to(ctx.device)         # cuda:LOCAL_RANK on a GPU machine, else the CPU
    net = ctx.wrap(model)                        # DistributedDataParallel when world_size > 1
    part = x_global[ctx.local_slice(len(x_global))]   # this process's share of the global batch
    ctx.print("only rank 0 prints")              # and only rank 0 saves checkpoints
    shutdown_distributed(ctx)

The course's rule for data, which is what makes a run on N processes equal a run on one:

- **Data sets in memory** (MNIST-5k, encoded latents): every process draws the *whole* global batch
  from the same seeded generator, then keeps its slice ``ctx.local_slice(B)``. The union of the
  slices is exactly the batch a single process would draw, and DistributedDataParallel averages
  the gradients of the slice means, which is the gradient of the global mean.
- **Generated data** (ShapeWorld rendered on the fly): each process renders its own images from
  its own seeds (``rank_seed``), so no two processes see the same image.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from course_lib.core.utils import get_device
from course_lib.train.precision import PRECISIONS, autocast, make_grad_scaler, resolve_precision
from course_lib.train.sharding import all_gather_rows, check_batch_divisible, local_slice, rank_seed, split_sizes

# The precision and sharding helpers live in their own modules (course_lib.train.precision and .sharding);
# they are named here too, where every training loop and script has always found them.
__all__ = [
    "PRECISIONS", "TORCHRUN_ENV", "TIMEOUT_ENV_VAR", "DistributedSetupError", "DistributedContext", "torchrun_env",
    "init_distributed", "shutdown_distributed", "refuse_torchrun", "rank_seed", "split_sizes", "local_slice",
    "check_batch_divisible", "resolve_precision", "autocast", "make_grad_scaler", "unwrap", "all_gather_rows",
    "distributed_run", "training_context",
]

#: The environment variables torchrun sets for every process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Seconds to wait for every process to join (and for any one collective operation); default 300.
TIMEOUT_ENV_VAR = "COURSE_DIST_TIMEOUT"
_LAUNCH_HINT = ("launch the script with `torchrun --nproc_per_node=N scripts/...` (it sets RANK, WORLD_SIZE, "
                "LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process), or unset these variables to train "
                "in one process")


class DistributedSetupError(RuntimeError):
    """The processes of a distributed run cannot be set up: a bad or incomplete torchrun environment,
    processes that never joined, or settings that differ between processes."""


@dataclass
class DistributedContext:
    """Who this process is in a (possibly one-process) training run, and how to talk to the others.

    ``rank``: 0..world_size-1 (rank 0 is the main process: it alone prints, logs and saves);
    ``world_size``: number of processes; ``local_rank``: index on this machine (which GPU);
    ``device``: where this process trains; ``backend``: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA) when
    a process group is running, ``None`` for a plain single process. ``DistributedContext()`` is a
    single process on the CPU. Not built in a notebook: see the README's "Training bigger".
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints, logs, shows progress bars and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when gradients must be averaged across more than one process."""
        return self.backend is not None and self.world_size > 1

    def local_slice(self, n: int) -> slice:
        """This process's share ``[start, stop)`` of a global batch of ``n`` examples (see ``local_slice``)."""
        return local_slice(n, self.rank, self.world_size)

    def wrap(self, model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """``model`` in DistributedDataParallel when distributed (gradients averaged across processes
        during ``backward``, weights broadcast from rank 0 now), else ``model`` itself."""
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on rank 0 only (flushed), so a run on N processes logs each line once."""
        if self.is_main:
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in a single process)."""
        if self.is_distributed:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``values`` over all processes (a new tensor on the caller's device)."""
        if not self.is_distributed:
            return values.clone()
        buf = values.detach().to(self.device, torch.float64).clone()
        torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
        return buf.to(values.device, values.dtype)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise mean of ``values`` over all processes."""
        return self.all_reduce_sum(values) / self.world_size

    def check_same_on_all_ranks(self, settings: Any, what: str = "settings") -> None:
        """Raise ``DistributedSetupError`` if ``settings`` (JSON-able, e.g. ``vars(args)``) differ between
        processes: N processes started with different flags would silently train different things."""
        if not self.is_distributed:
            return
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).digest()
        code = torch.tensor([int.from_bytes(digest[:6], "little")], dtype=torch.float64, device=self.device)
        low, high = code.clone(), code.clone()
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        if low.item() != high.item():
            raise DistributedSetupError(
                f"the {what} differ between processes (this is rank {self.rank}: {settings!r}). Start every "
                "process with the same command line and config file.")

    @torch.no_grad()
    def average_buffers(self, model: nn.Module) -> None:
        """Average every floating-point buffer over the processes (e.g. BatchNorm's running statistics,
        which each process updates from its own slice); call it once after training."""
        if not self.is_distributed:
            return
        for b in unwrap(model).buffers():
            if torch.is_floating_point(b):
                total = b.detach().to(self.device, torch.float64).clone()
                torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
                b.copy_((total / self.world_size).to(b.device, b.dtype))

    @torch.no_grad()
    def replica_difference(self, model: nn.Module) -> float:
        """The largest difference between this process's weights and rank 0's (0.0 in one process).

        After DDP training every process should hold the very same weights; this checks it.
        """
        if not self.is_distributed:
            return 0.0
        diffs = []
        for p in unwrap(model).state_dict().values():
            if not torch.is_floating_point(p):
                continue
            ref = p.detach().clone()
            torch.distributed.broadcast(ref, src=0)
            diffs.append((p.detach() - ref).abs().max().float())
        local = torch.stack(diffs).max() if diffs else torch.zeros((), device=self.device)
        worst = local.to(self.device).reshape(1).clone()
        torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
        return float(worst.item())


def _env_int(env: dict[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise DistributedSetupError(f"{name}={env[name]!r} is not an integer; {_LAUNCH_HINT}") from None


def torchrun_env(env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The checked torchrun settings of this process, or None when it was not started by torchrun.

    Returns ``{"rank", "world_size", "local_rank", "master_addr", "master_port"}``. Raises a
    ``DistributedSetupError`` that says what to do when the variables are incomplete or
    inconsistent (e.g. ``RANK`` set but ``MASTER_ADDR`` missing, or ``RANK >= WORLD_SIZE``).
    Not built in a notebook: see the README's "Training bigger".
    """
    env = dict(os.environ if env is None else env)
    present = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in env]
    if not present:
        return None
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        have = ", ".join(f"{k}={env[k]}" for k in present)
        raise DistributedSetupError(
            f"this process looks distributed ({have}) but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set, so it cannot find the other processes; "
            + _LAUNCH_HINT)
    rank, world_size = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    port = _env_int(env, "MASTER_PORT")
    if world_size < 1:
        raise DistributedSetupError(f"WORLD_SIZE={world_size} must be at least 1; {_LAUNCH_HINT}")
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} does not fit WORLD_SIZE={world_size} (ranks run from 0 to "
                                    f"{world_size - 1}); {_LAUNCH_HINT}")
    if "LOCAL_WORLD_SIZE" in env and not 0 <= local_rank < _env_int(env, "LOCAL_WORLD_SIZE"):
        raise DistributedSetupError(f"LOCAL_RANK={local_rank} does not fit LOCAL_WORLD_SIZE="
                                    f"{env['LOCAL_WORLD_SIZE']}; {_LAUNCH_HINT}")
    if not 0 < port < 65536:
        raise DistributedSetupError(f"MASTER_PORT={port} is not a valid port; {_LAUNCH_HINT}")
    return {"rank": rank, "world_size": world_size, "local_rank": local_rank,
            "master_addr": env["MASTER_ADDR"], "master_port": port}


def _device_for(local_rank: int, prefer: str | torch.device | None, distributed: bool) -> torch.device:
    """cuda:LOCAL_RANK when training on GPUs under torchrun; otherwise ``utils.get_device(prefer)``."""
    device = get_device(prefer)
    if device.type == "mps" and distributed:
        raise DistributedSetupError("torchrun on Apple MPS is not supported here; pass --device cpu to train "
                                    "several CPU processes, or run one process on MPS without torchrun")
    if device.type != "cuda" or not distributed:
        return device
    if device.index is not None and prefer is not None:
        raise DistributedSetupError(f"--device {device} pins every process to one GPU; under torchrun pass "
                                    "--device cuda and each process takes the GPU of its LOCAL_RANK")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedSetupError(
            f"LOCAL_RANK={local_rank} but this machine has {count} CUDA GPU{'s' * (count != 1)}: start at most "
            f"one process per GPU (torchrun --nproc_per_node={count}), or train on the CPU with --device cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout_s: float | None = None) -> DistributedContext:
    """Join the other processes of a torchrun launch, or return a single-process context.

    ``device``: ``None`` picks the best one (``COURSE_DEVICE``, then CUDA, MPS, CPU; under torchrun
    on GPUs, ``cuda:LOCAL_RANK``); ``backend``: ``None`` means ``"nccl"`` on CUDA, ``"gloo"`` on the
    CPU; ``timeout_s``: how long to wait for every process to join (default: the
    ``COURSE_DIST_TIMEOUT`` environment variable, else 300 s). Calling it again returns the context
    of the process group already running. Errors say what to do: a bad environment, processes that
    never joined (``WORLD_SIZE`` larger than the processes started), a device with too few GPUs.
    Not built in a notebook: see the README's "Training bigger".
    """
    settings = torchrun_env()
    if settings is None:
        return DistributedContext(device=_device_for(0, device, distributed=False))
    rank, world_size, local_rank = settings["rank"], settings["world_size"], settings["local_rank"]
    dev = _device_for(local_rank, device, distributed=True)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise DistributedSetupError("the nccl backend needs CUDA GPUs; use backend='gloo' to train on the CPU")
    dist = torch.distributed
    if not dist.is_available():
        raise DistributedSetupError("this build of torch has no torch.distributed; train in one process "
                                    "(without torchrun)")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if timeout_s is None:
            timeout_s = float(os.environ.get(TIMEOUT_ENV_VAR, "300"))
        try:
            dist.init_process_group(backend, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as e:  # the store's timeouts and connection errors have varying types
            raise DistributedSetupError(
                f"process {rank} of WORLD_SIZE={world_size} could not join the others at "
                f"{settings['master_addr']}:{settings['master_port']} within {timeout_s:g} s ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}). Every one of the "
                f"WORLD_SIZE processes must start and reach the same MASTER_ADDR:MASTER_PORT: {_LAUNCH_HINT}. "
                f"Set {TIMEOUT_ENV_VAR} to wait longer.") from e
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise DistributedSetupError(f"the running process group has rank {dist.get_rank()} of "
                                    f"{dist.get_world_size()}, but the environment says RANK={rank}, "
                                    f"WORLD_SIZE={world_size}; {_LAUNCH_HINT}")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                              backend=dist.get_backend())


def shutdown_distributed(ctx: DistributedContext | None = None) -> None:
    """Leave the process group (if any). Call it at the end of a script run under torchrun.

    First the garbage collector frees what finished runs may still hold in reference cycles (a
    DistributedDataParallel wrapper destroyed after the group is gone can abort the process: "terminate
    called without an active exception", seen in 1 of 10 GAN runs under torchrun on two busy cores, 0 of
    16 with this), then every process waits for the others, so that none leaves the group while another
    still uses it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def refuse_torchrun(script: str, supported: tuple[str, ...] = ()) -> None:
    """Raise a ``DistributedSetupError`` if this process was started by torchrun with more than one process.

    For training loops that cannot be split across processes correctly: an honest error beats N
    processes that each train (and save) their own copy. ``supported`` names the scripts that can.
    """
    settings = torchrun_env()
    if settings is not None and settings["world_size"] > 1:
        which = f" Scripts that do support torchrun: {', '.join(supported)}." if supported else ""
        raise DistributedSetupError(
            f"{script} trains in one process only (on the CPU or one GPU: pass --device cuda); it was started "
            f"as process {settings['rank']} of {settings['world_size']} under torchrun. Run it with plain "
            f"`python`.{which}")


def training_context(distributed: DistributedContext | None, device: torch.device, batch_size: int,
                     what: str = "the model") -> tuple[DistributedContext, int]:
    """A training loop's context and world size (1 outside torchrun). Under torchrun, checks that
    ``batch_size`` (the global batch) splits evenly between the processes and that the networks,
    on ``device``, sit on this process's device."""
    ctx = distributed if distributed is not None else DistributedContext(device=device)
    world = ctx.world_size if ctx.is_distributed else 1
    if world > 1:
        check_batch_divisible(batch_size, world, "batch_size")
        if device != ctx.device:
            raise ValueError(f"{what} is on {device} but this process trains on {ctx.device}; move it there "
                             "first: .to(ctx.device)")
    return ctx, world


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def distributed_run(device: str | torch.device | None = None) -> Iterator[DistributedContext]:
    """``with distributed_run(args.device) as ctx: ...``: ``init_distributed``, then ``shutdown_distributed``."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        shutdown_distributed(ctx)
