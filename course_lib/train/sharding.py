"""Sharing data between the processes of a torchrun launch: seeds, batch slices, gathered rows.

Not built in a notebook: documented in the README's "Training bigger" section (and the rule for data
in ``course_lib.train.distributed``'s docstring). In one process every slice is the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["rank_seed", "split_sizes", "local_slice", "check_batch_divisible", "all_gather_rows"]


def rank_seed(seed: int, rank: int, stride: int = 1_000_003) -> int:
    """A seed of its own for each process drawing *generated* data: ``seed + rank * stride``.

    Rank 0 keeps ``seed``, so a one-process run is unchanged; the stride (a prime above a million)
    keeps the streams of different ranks apart. Not built in a notebook: see the README's
    "Training bigger".
    """
    if not isinstance(seed, int) or not isinstance(rank, int) or seed < 0 or rank < 0:
        raise ValueError(f"seed and rank must be non-negative ints, got seed={seed!r}, rank={rank!r}")
    return seed + rank * stride


def split_sizes(n: int, world_size: int) -> list[int]:
    """How ``n`` examples are shared by ``world_size`` processes: sizes differing by at most one."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    base, extra = divmod(n, world_size)
    return [base + (r < extra) for r in range(world_size)]


def local_slice(n: int, rank: int, world_size: int) -> slice:
    """The contiguous share of process ``rank`` in a global batch of ``n``: the slices of ranks
    0..world_size-1 are disjoint and together cover ``0..n-1`` in order."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} does not fit world_size {world_size}")
    sizes = split_sizes(n, world_size)
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def check_batch_divisible(batch_size: int, world_size: int, what: str = "batch_size") -> int:
    """The per-process batch ``batch_size // world_size``, or a ``ValueError`` that says what to change."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        divisors = [d for d in range(1, min(batch_size, 64) + 1) if batch_size % d == 0]
        raise ValueError(
            f"{what}={batch_size} (the global batch) cannot be split evenly over {world_size} processes; use a "
            f"{what} divisible by {world_size} (e.g. {lower or world_size} or {lower + world_size}), or start "
            f"a number of processes that divides {batch_size} ({', '.join(map(str, divisors))})")
    return batch_size // world_size


class _GatherRows(torch.autograd.Function):
    """All processes' tensors stacked along dim 0; the gradient of each process's rows flows back to it
    (summed over the processes, since each computes its own copy of what follows)."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor) -> torch.Tensor:
        world = torch.distributed.get_world_size()
        parts = [torch.empty_like(local) for _ in range(world)]
        torch.distributed.all_gather(parts, local.contiguous())
        ctx.rows, ctx.rank = local.shape[0], torch.distributed.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, op=torch.distributed.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_rows(local: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Every process's rows of ``local`` in rank order, differentiable (as CLIP gathers embeddings across GPUs).

    ``sizes``: how many rows each process holds, when they differ (e.g. ``split_sizes(n, world_size)``);
    rows are padded to equal counts for the exchange and the padding is dropped. Every process must
    call it. Each process then computes the same loss from the gathered rows; the gradient reaching
    its own rows is the sum over processes, which DistributedDataParallel's average turns back into
    the single-process gradient.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    world = torch.distributed.get_world_size()
    sizes = sizes or [local.shape[0]] * world
    pad = max(sizes) - local.shape[0]
    if pad:
        local = torch.cat([local, local.new_zeros(pad, *local.shape[1:])])
    gathered = _GatherRows.apply(local)
    return torch.cat([gathered[r * max(sizes):r * max(sizes) + size] for r, size in enumerate(sizes)])
