"""Resumable training: ``--checkpoint-dir``, ``--checkpoint-every``, ``--resume`` and ``--stop-after``.

Not built in a notebook: documented in the README's "Training bigger" section (``--resume``).

``Checkpointing`` saves and resumes a training loop's full state (``course_lib.train.loop.TrainLoop``
drives it for every training function of the course); ``course_lib.train.state_files`` is the format
on disk (a safetensors file and a JSON file, nothing unpickled), whose names are also found here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib.core.checkpoints import CheckpointError, load_state_dict_checked
from course_lib.train.state_files import (
    STATE_JSON,
    STATE_TENSORS,
    TrainingState,
    check_same_config,
    describe_model,
    load_optimizer_state,
    load_training_state,
    optimizer_state,
    save_training_state,
)

__all__ = [
    "STATE_TENSORS",
    "STATE_JSON",
    "TrainingState",
    "save_training_state",
    "load_training_state",
    "optimizer_state",
    "load_optimizer_state",
    "check_same_config",
    "describe_model",
    "Checkpointing",
]

LoopState = Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]


def _gather_from_ranks(ctx: Any, value: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``value`` (same shape and dtype everywhere), in rank order, on the CPU."""
    if not ctx.is_distributed:
        return [value.cpu()]
    buf = value.to(ctx.device)
    parts = [torch.empty_like(buf) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(parts, buf)
    return [p.cpu() for p in parts]


class Checkpointing:
    """``--checkpoint-dir``, ``--checkpoint-every``, ``--resume`` and ``--stop-after`` for one training loop.

    Not built in a notebook: documented in the README's "Training bigger". A script makes one from
    its flags (``Checkpointing.from_args(args)``) and hands it to a training function
    (``checkpoint=``), whose loop (``course_lib.train.loop.TrainLoop``) registers what it changes and
    calls three methods::

        state = ckpt.begin(ctx, run_config, total=steps, modules={"model": model},
                           optimizers={"optimizer": opt}, schedulers={"lr_schedule": sched},
                           generators={"batches": g})   # None, or the TrainingState it resumed from
        start = ckpt.start_step                            # 0 for a fresh run
        for step in range(start, ckpt.end_step):           # end_step: total, or --stop-after
            ...one step...
            ckpt.step_done(step + 1, lambda: (tensors, loop_meta))   # saves every checkpoint_every steps
        ckpt.finish(ckpt.end_step, lambda: (tensors, loop_meta),     # saves the final (or stopped) state
                    average_buffers=[model])                         # and averages BatchNorm statistics

    Saved with the modules' state dicts, the optimizers' state, the learning-rate schedules'
    counters (and other ``states`` with a JSON ``state_dict``, e.g. fp16's gradient scaler), the
    named generators, every process's global torch random state (dropout, posterior samples:
    ``rng.torch.<rank>``, and ``rng.cuda.<rank>`` on a GPU; left out with ``global_rng=False`` by a
    loop that draws every random number from its named generators), the loop's own tensors (e.g.
    the epoch's shuffled order) and JSON (``loop_meta``: losses so far...). A resumed run must have
    the same ``run_config`` (and ``extra_config``), else a ``CheckpointError`` lists what differs.
    ``--stop-after K`` ends the run at step K of its ``total`` (the learning-rate schedule still
    spans the whole run) and saves its state, so that ``--resume`` continues it to the same weights
    as an uninterrupted run; ``stopped_at`` is then K (None for a run that reached its end).
    Without any of the four options every method does nothing (and draws no random numbers).
    """

    def __init__(self, checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
                 resume: str | Path | None = None, stop_after: int | None = None,
                 extra_config: dict[str, Any] | None = None):
        for name, value in (("checkpoint_every", checkpoint_every), ("stop_after", stop_after)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int (steps) or None, got {value!r}")
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError("--checkpoint-every needs --checkpoint-dir: the folder to save the training state in")
        if stop_after is not None and checkpoint_dir is None:
            raise ValueError("--stop-after needs --checkpoint-dir: a run stopped early continues from the training "
                             "state saved there (with --resume)")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.resume = Path(resume) if resume is not None else None
        self.stop_after = stop_after
        self.extra_config = dict(extra_config or {})
        self.start_step = 0
        self.end_step: int | None = None
        self.total: int | None = None
        self.stopped_at: int | None = None
        self._ctx: Any = None
        self._config: dict[str, Any] = {}
        self._modules: dict[str, nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: dict[str, Any] = {}
        self._generators: dict[str, torch.Generator] = {}
        self._resume_from: Path | None = None
        self._states: dict[str, Any] = {}
        self._save_global_rng = True

    @classmethod
    def from_args(cls, args: Any, **extra_config: Any) -> Checkpointing:
        """From a script's parsed flags (``add_runtime_arguments``); ``extra_config``: what else a resumed run
        must share (e.g. a description of the data)."""
        return cls(getattr(args, "checkpoint_dir", None), getattr(args, "checkpoint_every", None),
                   getattr(args, "resume", None), getattr(args, "stop_after", None), extra_config=extra_config)

    @property
    def enabled(self) -> bool:
        """True when the loop saves or resumes a training state."""
        return self.checkpoint_dir is not None or self.resume is not None

    def part(self, name: str, **extra_config: Any) -> Checkpointing:
        """The options for one of several networks a script trains one after another: its state lives in
        ``DIR/name``, and it resumes from ``RESUME/name`` if that holds a state (else it starts afresh)."""
        resume = None
        if self.resume is not None and (self.resume / name / STATE_JSON).is_file():
            resume = self.resume / name
        part = Checkpointing(self.checkpoint_dir / name if self.checkpoint_dir is not None else None,
                             self.checkpoint_every, resume, self.stop_after,
                             extra_config={**self.extra_config, **extra_config})
        part._resume_from = self.checkpoint_dir  # what the script resumes from: the folder of all parts
        return part

    def parts(self, names: Iterable[str] | Mapping[str, dict[str, Any]]) -> dict[str, Checkpointing]:
        """``part(name)`` for each name (a mapping gives each its own ``extra_config``); a ``--resume`` folder
        that holds none of them is an error."""
        extras = dict(names) if isinstance(names, Mapping) else {n: {} for n in names}
        names = list(extras)
        if self.resume is not None and not any((self.resume / n / STATE_JSON).is_file() for n in names):
            found = " (it holds the state of a single training loop, from another script or part)" \
                if (self.resume / STATE_JSON).is_file() else ""
            raise CheckpointError(
                f"cannot resume from {self.resume}: it holds no training state of this run{found}; expected "
                f"subfolders {', '.join(names)}, as written by --checkpoint-dir of the same script and settings. "
                "Resume from such a folder, or start a fresh run without --resume.")
        return {n: self.part(n, **extras[n]) for n in names}

    def stopped_message(self, what: str = "the run") -> str:
        """What a script prints when ``--stop-after`` ended ``what`` early (it then ships nothing)."""
        return (f"stopped {what} at step {self.stopped_at} of {self.total} (--stop-after); its training state is in "
                f"{self.checkpoint_dir}: continue it with --resume {self._resume_from or self.checkpoint_dir} and "
                "the same settings")

    # ------------------------------------------------------------------------------ the loop's side
    def begin(self, ctx: Any, run_config: dict[str, Any], *, total: int, modules: dict[str, nn.Module],
              optimizers: dict[str, torch.optim.Optimizer] | None = None, schedulers: dict[str, Any] | None = None,
              generators: dict[str, torch.Generator] | None = None, states: dict[str, Any] | None = None,
              global_rng: bool = True) -> TrainingState | None:
        """Register what the loop changes (``modules``: unwrapped, not DistributedDataParallel) and, with
        ``resume``, load it all; ``total``: the steps of the whole run. Every process calls it."""
        self._ctx, self.total = ctx, total
        self._config = {**run_config, "extra": self.extra_config}
        self._modules, self._optimizers = dict(modules), dict(optimizers or {})
        self._schedulers, self._generators = dict(schedulers or {}), dict(generators or {})
        self._states, self._save_global_rng = dict(states or {}), global_rng
        self.stopped_at, self.start_step = None, 0
        state = None
        if self.resume is not None:
            state = load_training_state(self.resume)
            if "optimizers" not in state.meta:
                raise CheckpointError(f"{self.resume} holds a training state in the format of an older course_lib "
                                      "(before every loop saved through Checkpointing); start a fresh run without "
                                      "--resume")
            check_same_config(self.resume, state.meta["config"], self._config)
            for name, module in self._modules.items():
                load_state_dict_checked(module, state.group(name), what=f"training state {self.resume} ({name})")
            for name, opt in self._optimizers.items():
                load_optimizer_state(opt, state.tensors, state.meta["optimizers"][name], prefix=name)
            for name, sched in self._schedulers.items():
                sched.load_state_dict(state.meta["lr_schedules"][name])
            for name, obj in self._states.items():
                if state.meta.get("states", {}).get(name):
                    obj.load_state_dict(state.meta["states"][name])
            for name, g in self._generators.items():
                g.set_state(state.tensors[f"rng.{name}"])
            if global_rng:
                self._restore_global_rng(state.tensors)
            self.start_step = state.step
        end = total if self.stop_after is None else min(total, max(self.stop_after, self.start_step))
        self.end_step = end
        return state

    def step_done(self, step: int, extra: LoopState | None = None) -> None:
        """After step ``step`` (steps taken so far): save every ``checkpoint_every`` steps (all processes call
        it; rank 0 writes). The state at ``end_step`` is saved by ``finish``."""
        if self.checkpoint_every is not None and step % self.checkpoint_every == 0 and step < self.end_step:
            self.save(step, extra)

    def finish(self, step: int, extra: LoopState | None = None,
               average_buffers: Iterable[nn.Module] = (), stopped: bool | None = None) -> None:
        """After the loop (``step``: steps taken; all processes call it): note an early stop, average the
        floating-point buffers (BatchNorm's running statistics) of ``average_buffers`` over the processes,
        and save the state. A stopped run is saved *before* the average, exactly as it stood (so that
        resuming it continues the very same run), a finished one after it (as it is shipped).
        ``stopped``: whether the run stopped early (default: it did if ``step`` falls short of the total;
        a run that ended at its time limit passes False: it is finished, and ships)."""
        if stopped is None:
            stopped = self.total is not None and step < self.total
        if stopped:
            self.stopped_at = step
            self.save(step, extra)
        for module in average_buffers:
            self._ctx.average_buffers(module)
        if not stopped:
            self.save(step, extra)

    def save(self, step: int, extra: LoopState | None = None) -> None:
        """Write the training state after ``step`` steps into ``checkpoint_dir`` (rank 0; all processes call it)."""
        if self.checkpoint_dir is None:
            return
        ctx = self._ctx
        rng = self._global_rng() if self._save_global_rng else {}  # a collective: every process takes part
        if ctx.is_main:
            loop_tensors, loop_meta = extra() if extra is not None else ({}, {})
            tensors: dict[str, torch.Tensor] = {}
            for name, module in self._modules.items():
                tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
            opt_meta = {}
            for name, opt in self._optimizers.items():
                opt_tensors, opt_meta[name] = optimizer_state(opt, prefix=name)
                tensors.update(opt_tensors)
            tensors.update({f"rng.{name}": g.get_state() for name, g in self._generators.items()})
            tensors.update(rng)
            clash = sorted(set(tensors) & set(loop_tensors))
            if clash:
                raise ValueError(f"the loop's tensors {clash} clash with the registered ones; rename them")
            tensors.update(loop_tensors)
            meta = {"step": step, "total_steps": self.total, "config": self._config, "optimizers": opt_meta,
                    "lr_schedules": {name: s.state_dict() for name, s in self._schedulers.items()},
                    "states": {name: obj.state_dict() for name, obj in self._states.items()},
                    "world_size": ctx.world_size, "loop": loop_meta}
            save_training_state(self.checkpoint_dir, tensors, meta)
        ctx.barrier()  # the state is on disk before any process goes on (e.g. to resume it)

    def _rng_device(self) -> torch.device:
        for module in self._modules.values():
            for p in module.parameters():
                return p.device
        return self._ctx.device

    def _global_rng(self) -> dict[str, torch.Tensor]:
        states = {"torch": torch.get_rng_state()}
        device = self._rng_device()
        if device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(device)
        out = {}
        for kind, value in states.items():
            for rank, part in enumerate(_gather_from_ranks(self._ctx, value)):
                out[f"rng.{kind}.{rank}"] = part
        return out

    def _restore_global_rng(self, tensors: dict[str, torch.Tensor]) -> None:
        """Each process takes its own saved state (rank 0's when the saving run had fewer processes)."""
        rank = self._ctx.rank
        key = f"rng.torch.{rank}" if f"rng.torch.{rank}" in tensors else "rng.torch.0"
        if key in tensors:
            torch.set_rng_state(tensors[key])
        device = self._rng_device()
        if device.type == "cuda":
            key = f"rng.cuda.{rank}" if f"rng.cuda.{rank}" in tensors else "rng.cuda.0"
            if key in tensors:
                torch.cuda.set_rng_state(tensors[key], device)
