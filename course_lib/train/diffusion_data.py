"""The data and the loss of one step of ``train_diffusion_model`` (the loop notebook 06 and every script train with).

``batch_source`` turns a tensor of training images into batches walking through shuffled epochs
(``EpochBatches``, whose position is saved with a training state), or takes a batch function
``(batch_size, generator) -> x0`` or ``-> (x0, model_kwargs)`` as it is. ``sliced_diffusion_loss``
draws the timesteps (or, for rectified flow, the sigmas) and the noise of the *whole* batch from the
run's generator, exactly as ``diffusion.forward.diffusion_loss`` draws them, and computes the loss on
``part`` of it: all of it in one process, this process's slice under torchrun, so that the processes
together use the very numbers one process would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.diffusion.forward import q_sample, training_target
from course_lib.diffusion.rectified_flow import FlowMatchSchedule, flow_matching_loss
from course_lib.diffusion.schedules import NoiseSchedule

__all__ = ["BatchFn", "EpochBatches", "batch_source", "model_input", "sliced_diffusion_loss"]

# A batch source: a tensor of training images (N, ...), or a function (batch_size, generator) ->
# x0, or -> (x0, model_kwargs) for conditional models (e.g. {"context": text embeddings}).
BatchFn = Callable[[int, torch.Generator], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]


class EpochBatches:
    """Batches from a tensor of images, walking through shuffled epochs (its position is saved with the
    training state: the epoch's order and how far it got)."""

    def __init__(self, data: torch.Tensor):
        self.data = data
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def __call__(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.pos + n > len(self.order):   # a new epoch: reshuffle
            self.order, self.pos = torch.randperm(len(self.data), generator=g), 0
        idx = self.order[self.pos:self.pos + n]
        self.pos += n
        return self.data[idx]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"order": self.order.clone()}, {"pos": self.pos}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.order, self.pos = tensors["order"].clone(), int(meta["pos"])


def batch_source(data: torch.Tensor | BatchFn, batch_size: int) -> BatchFn:
    """A tensor of images becomes an ``EpochBatches``; a batch function is returned as it is."""
    if callable(data) and not torch.is_tensor(data):
        return data
    if not torch.is_tensor(data) or not torch.is_floating_point(data) or data.ndim < 2:
        got = f"a tensor of shape {tuple(data.shape)} and dtype {data.dtype}" if torch.is_tensor(data) \
            else type(data).__name__
        raise TypeError(f"data must be a float tensor of training images (N, C, H, W) or a function "
                        f"(batch_size, generator) -> x0; got {got}")
    if len(data) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the data set ({len(data)} images); "
                         "use a smaller batch_size")
    return EpochBatches(data)


def model_input(value: Any, device: torch.device, part: slice, n: int) -> Any:
    """A model input on ``device``, only the rows ``part`` of a per-example input (one with ``n`` rows)."""
    if torch.is_tensor(value):
        if value.ndim >= 1 and value.shape[0] == n:
            value = value[part]
        return value.to(device)
    if isinstance(value, list | tuple) and len(value) == n:
        return value[part]
    return value


def sliced_diffusion_loss(net: nn.Module | Callable[..., torch.Tensor], x0: torch.Tensor,
                          schedule: NoiseSchedule | FlowMatchSchedule, prediction_type: str, g: torch.Generator,
                          model_kwargs: dict[str, Any], part: slice, device: torch.device) -> torch.Tensor:
    """The diffusion loss (``diffusion_loss``, or ``flow_matching_loss`` with a ``FlowMatchSchedule``) of
    the rows ``part`` of the batch ``x0``: the timesteps (or sigmas) and the noise of the *whole* batch
    are drawn from ``g`` first, then sliced (``part=slice(None)``: the whole batch, one process)."""
    if not torch.is_tensor(x0) or not torch.is_floating_point(x0) or x0.ndim < 1:
        raise TypeError("the batch function must return a floating-point tensor x0 with a batch dimension first, "
                        f"got {type(x0).__name__}")
    n = x0.shape[0]
    kwargs = {k: model_input(v, device, part, n) for k, v in model_kwargs.items()}
    if isinstance(schedule, FlowMatchSchedule):
        sigma = schedule.draw_training_sigmas(n, g)
        noise = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype)
        return flow_matching_loss(net, x0[part].to(device), sigma[part].to(device), noise[part].to(device),
                                  schedule.num_train_timesteps, **kwargs)
    t = torch.randint(0, schedule.num_train_timesteps, (n,), generator=g, device=g.device)
    noise = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype)
    x0, t, noise = x0[part].to(device), t[part].to(device), noise[part].to(device)
    out = net(q_sample(x0, t, noise, schedule), t, **kwargs)
    if out.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x0.shape)}; "
                         "a diffusion model's output must have the shape of its input")
    return F.mse_loss(out, training_target(x0, noise, t, schedule, prediction_type))
