"""One training loop for every network of the course: each model brings its data and its loss, the loop the rest.

Not built in a notebook (notebook 06 writes a diffusion loop by hand, then uses the library's); every
training function of ``course_lib.train`` runs on it, from the 2-D GAN of notebook 01 to the MMDiT::

    loop = TrainLoop(model, torch.optim.AdamW(model.parameters(), lr=1e-3), total_steps=1000,
                     lr_schedule=warmup, grad_clip=1.0, ema=ema, ema_decay=0.999)

    def step(i):                               # the model's data and loss: all a trainer writes
        x = images[torch.randint(len(images), (64,), generator=g)]
        with loop.autocast():
            return loss_of(model, x)           # or {"loss": ..., "kl": ...}: every value is recorded

    result = loop.run(step)                    # result.history["loss"], result.steps, result.seconds

After ``step(i)`` the loop zeroes the gradients, back-propagates the loss (through a gradient scaler
under fp16), clips the gradient norm, steps the optimizer and its learning-rate schedule, updates the
EMA copy of the weights, records every value (the mean over torchrun's processes), shows the loss on
the progress bar, runs ``on_step(i, values)`` (evaluations, snapshots), saves the training state when
it is due (``Checkpointing``: weights, optimizer, schedule, random generators, history) and stops at
``max_seconds`` (under torchrun all processes stop together). A step that makes its own updates (a
GAN's discriminator, then its generator) calls ``loop.optimize(loss, "discriminator")`` for each and
returns only what to record; one that returns ``None`` skipped its update (nothing is recorded).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from course_lib.core.utils import progress
from course_lib.train.distributed import DistributedContext
from course_lib.train.precision import autocast, make_grad_scaler, resolve_precision
from course_lib.train.state import Checkpointing

__all__ = ["TrainLoop", "LoopResult", "Stateful", "Snapshots", "ema_update"]

Metrics = torch.Tensor | Mapping[str, "torch.Tensor | float"] | None
_RESERVED = ("history", "state", "seconds")  # names in the saved loop state besides the recorded values


class Stateful(Protocol):
    """Something a loop saves with its training state besides weights and generators (e.g. the
    epoch's shuffled order): its tensors and JSON, and how to take them back."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...


class Snapshots(dict):
    """Step -> tensor (e.g. a generator's samples during training), saved with the training state."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {str(k): v for k, v in self.items()}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.update({int(k): v for k, v in tensors.items()})


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter; buffers are copied.

    Supports notebook 06_reverse_diffusion.
    """
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


@dataclass
class LoopResult:
    """What ``TrainLoop.run`` returns: every recorded value per step (``history``, a resumed run's earlier
    steps included), the steps taken in all, the step this run started from, the training seconds (the
    ``on_step`` hooks left out), whether ``max_seconds`` ended it, and the largest weight difference
    between torchrun's processes at the end (0.0 in one process)."""

    history: dict[str, list] = field(default_factory=dict)
    steps: int = 0
    start_step: int = 0
    seconds: float = 0.0
    out_of_time: bool = False
    replica_difference: float = 0.0


class TrainLoop:
    """The training loop (see the module docstring). Built before the steps run: with a ``checkpoint`` to
    resume, the weights, optimizers, schedule, generators, ``state`` and history are loaded here, and
    ``start_step`` says where the run goes on.

    ``modules``: the network (or ``{"generator": G, "discriminator": D}``), unwrapped (not
    DistributedDataParallel), saved under these names; ``optimizers`` likewise (one, or a dict);
    ``total_steps``: the steps of the whole run. ``lr_schedule``: a torch schedule stepped after every
    optimizer step, or a function ``step -> lr`` set before each step. ``grad_clip``: the largest
    gradient norm of the modules' parameters (None: no clipping). ``ema`` and ``ema_decay`` (a number,
    or a function of the 0-based step): the moving average of the first module. ``precision``:
    ``loop.autocast()`` and fp16's gradient scaler. ``distributed``: a torchrun process's context.
    ``checkpoint``/``run_config``: a ``Checkpointing`` and what a resumed run must share;
    ``generators``/``state``: the named random generators and ``Stateful`` objects saved with it;
    ``global_rng=False``: leave torch's global random state out (a loop that draws every number from its
    generators). ``max_seconds``: stop when this much time has passed (the run then counts as finished).
    ``desc``, ``show_progress``, ``postfix_every``: the progress bar (rank 0 only) and how often it shows
    the recent mean of the recorded values. ``after_backward()``: runs once the gradients are there (e.g.
    to read their norms).
    """

    def __init__(self, modules: nn.Module | Mapping[str, nn.Module],
                 optimizers: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer], *, total_steps: int,
                 lr_schedule: LRScheduler | Callable[[int], float] | None = None, grad_clip: float | None = None,
                 ema: nn.Module | None = None, ema_decay: float | Callable[[int], float] | None = None,
                 precision: str = "fp32", distributed: DistributedContext | None = None,
                 checkpoint: Checkpointing | None = None, run_config: dict[str, Any] | None = None,
                 generators: Mapping[str, torch.Generator] | None = None,
                 state: Mapping[str, Stateful] | None = None, global_rng: bool = True,
                 max_seconds: float | None = None, desc: str | None = None, show_progress: bool = True,
                 postfix_every: int = 50, after_backward: Callable[[], None] | None = None):
        self.modules = {"model": modules} if isinstance(modules, nn.Module) else dict(modules)
        self.optimizers = ({"optimizer": optimizers} if isinstance(optimizers, torch.optim.Optimizer)
                           else dict(optimizers))
        if lr_schedule is not None and len(self.optimizers) != 1:
            raise ValueError("lr_schedule drives one optimizer; this loop has "
                             f"{', '.join(self.optimizers)}: step their schedules in the step function")
        if (ema is None) != (ema_decay is None):
            raise ValueError("give both ema (the averaged copy) and ema_decay, or neither")
        self.model = next(iter(self.modules.values()))
        self.device = next(self.model.parameters()).device
        self.ctx = distributed if distributed is not None else DistributedContext(device=self.device)
        self.world = self.ctx.world_size if self.ctx.is_distributed else 1
        self.precision = resolve_precision(precision, self.device)
        self.scaler = make_grad_scaler(self.device, self.precision)
        self.total_steps, self.lr_schedule, self.grad_clip = total_steps, lr_schedule, grad_clip
        self.ema, self.ema_decay, self.after_backward = ema, ema_decay, after_backward
        self.max_seconds, self.desc, self.show_progress = max_seconds, desc, show_progress
        self.postfix_every = postfix_every
        self.state = dict(state or {})
        self.checkpoint = checkpoint if checkpoint is not None else Checkpointing()
        saved = self.checkpoint.begin(
            self.ctx, run_config or {}, total=total_steps,
            modules={**self.modules, **({"ema": ema} if ema is not None else {})}, optimizers=self.optimizers,
            schedulers={"lr_schedule": lr_schedule} if isinstance(lr_schedule, LRScheduler) else {},
            generators=dict(generators or {}), states={"grad_scaler": self.scaler} if self.scaler else {},
            global_rng=global_rng)
        self.history: dict[str, list] = {}
        self._seconds_before = 0.0
        if saved is not None:
            loop = saved.meta["loop"]
            self.history = {name: list(loop[name]) for name in loop["history"]}
            self._seconds_before = float(loop["seconds"])
            for name, obj in self.state.items():
                obj.load_state(saved.group(name), loop["state"][name])
        self.start_step = self.checkpoint.start_step
        self._optimized = False

    # ------------------------------------------------------------------------------ used by a step
    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context for the forward pass and the loss (nothing in fp32)."""
        return autocast(self.device, self.precision)

    def optimize(self, loss: torch.Tensor, optimizer: str | None = None) -> None:
        """One update: zero the gradients, back-propagate ``loss``, clip, step ``optimizer`` (its name; the
        only one by default) and the learning-rate schedule."""
        if optimizer is None and len(self.optimizers) != 1:
            raise ValueError(f"this loop has several optimizers ({', '.join(self.optimizers)}): name the one "
                             "to step, loop.optimize(loss, name)")
        opt = self.optimizers[optimizer] if optimizer is not None else next(iter(self.optimizers.values()))
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        if self.after_backward is not None:
            self.after_backward()
        if self.grad_clip:
            params = itertools.chain.from_iterable(m.parameters() for m in self.modules.values())
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()
        if isinstance(self.lr_schedule, LRScheduler):
            self.lr_schedule.step()
        self._optimized = True

    # ------------------------------------------------------------------------------ the run
    def run(self, step: Callable[[int], Metrics],
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> LoopResult:
        """Run ``step(i)`` for the steps ``start_step .. end`` (the total, or ``--stop-after``); after each,
        ``on_step(i, values)`` with the values just recorded (its time is not training time)."""
        ctx, ckpt = self.ctx, self.checkpoint
        first, end = self.start_step, ckpt.end_step
        for module in self.modules.values():
            module.train()
        start, hooks = time.perf_counter(), 0.0

        def seconds() -> float:
            return self._seconds_before + time.perf_counter() - start - hooks

        def loop_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            tensors, metas = {}, {}
            for name, obj in self.state.items():
                obj_tensors, metas[name] = obj.state()
                tensors.update({f"{name}.{k}": v for k, v in obj_tensors.items()})
            return tensors, {**self.history, "history": list(self.history), "state": metas, "seconds": seconds()}

        bar = progress(range(first, end), desc=self.desc, total=self.total_steps, initial=first,
                       disable=None if self.show_progress and ctx.is_main else True)
        done, out_of_time = first, False
        for i in bar:
            if self.lr_schedule is not None and not isinstance(self.lr_schedule, LRScheduler):
                for opt in self.optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = self.lr_schedule(i)
            self._optimized = False
            metrics = step(i)
            if metrics is not None:
                metrics = {"loss": metrics} if torch.is_tensor(metrics) else dict(metrics)
                if not self._optimized:
                    if "loss" not in metrics:
                        raise ValueError(f"step {i} returned {sorted(metrics)} but no 'loss' to optimize, and made "
                                         "no update itself (loop.optimize(loss, optimizer))")
                    self.optimize(metrics["loss"])
                if self.ema is not None:
                    decay = self.ema_decay(i) if callable(self.ema_decay) else self.ema_decay
                    ema_update(self.ema, self.model, decay)
            values, out_of_time = self._record(metrics or {}, time.perf_counter() - start)
            done = i + 1
            if values and hasattr(bar, "set_postfix") and done % self.postfix_every == 0:
                bar.set_postfix({k: f"{sum(v[-self.postfix_every:]) / len(v[-self.postfix_every:]):.4f}"
                                 for k, v in self.history.items() if k in values})
            if on_step is not None:
                hook_start = time.perf_counter()
                on_step(i, values)
                hooks += time.perf_counter() - hook_start
            ckpt.step_done(done, loop_state)
            if out_of_time:
                break
        result = LoopResult(self.history, done, first, seconds(), out_of_time)
        ckpt.finish(done, loop_state, average_buffers=[*self.modules.values(), *([self.ema] if self.ema else [])],
                    stopped=False if out_of_time else None)
        if self.world > 1:
            result.replica_difference = max(ctx.replica_difference(m) for m in self.modules.values())
        for module in self.modules.values():
            module.eval()
        return result

    def _record(self, metrics: dict[str, Any], elapsed: float) -> tuple[dict[str, float], bool]:
        """The step's values as numbers, appended to the history: tensors are this process's values and
        become their mean over the processes (numbers are taken as they are); and whether any process is
        out of time (one exchange for both)."""
        late = self.max_seconds is not None and elapsed > self.max_seconds
        names = [k for k, v in metrics.items() if torch.is_tensor(v)]
        values = {k: (v.item() if torch.is_tensor(v) else float(v)) for k, v in metrics.items()}
        if self.world > 1 and (names or self.max_seconds is not None):
            total = self.ctx.all_reduce_sum(torch.tensor([values[k] for k in names] + [float(late)],
                                                         dtype=torch.float64))
            values.update({k: float(total[j]) / self.world for j, k in enumerate(names)})
            late = bool(total[-1] > 0)
        for k, v in values.items():
            if k in _RESERVED:
                raise ValueError(f"a step cannot record a value named {k!r} (the training state uses it)")
            self.history.setdefault(k, []).append(v)
        return values, late
