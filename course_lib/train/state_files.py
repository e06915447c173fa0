"""The training state on disk: everything a run needs to continue exactly where it stopped, without pickle.

Not built in a notebook: documented in the README's "Training bigger" section (``--resume``).

A training state is a folder with two files:

- ``training_state.safetensors``: every tensor: the model (``model.*``), its EMA copy (``ema.*``),
  the optimizer's moment estimates (``optimizer.<param index>.<name>``), the random generator's
  state (``rng.<name>``) and any other tensor the loop needs (e.g. the epoch's shuffled order);
- ``training_state.json``: the step, the run's configuration (a resumed run must have the same),
  the optimizer's hyper-parameters, the learning-rate schedule's and gradient scaler's counters,
  the losses so far, and the sha256 of the tensor file.

Nothing is unpickled when loading (the course forbids it): tensors come from safetensors, all else
from JSON. ``save_training_state`` writes both files under temporary names and renames them, so
an interrupted save leaves the previous state intact. ``course_lib.train.state.Checkpointing`` decides
what goes in (every training loop saves and resumes through it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from course_lib.core.checkpoints import CheckpointError, sha256_of

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
]

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
FORMAT = "course_lib.train.state/1"


class TrainingState:
    """A loaded (or to-be-saved) training state: ``tensors`` by flat name and JSON ``meta``."""

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]):
        self.tensors = tensors
        self.meta = meta

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose names start with ``prefix + "."``, with the prefix removed (a state dict)."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _jsonable(value: Any) -> Any:
    """Tuples to lists, numbers and strings as they are; anything else is an error (no pickling)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in a training state's JSON")


def optimizer_state(opt: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict[str, torch.Tensor],
                                                                                     dict[str, Any]]:
    """An optimizer's state as flat tensors (``prefix.<param index>.<name>``) and JSON (hyper-parameters,
    non-tensor per-parameter values)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in sd["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = _jsonable(value)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                         prefix: str = "optimizer") -> None:
    """Load what ``optimizer_state`` stored into ``opt`` (built over the same parameters)."""
    current = opt.state_dict()["param_groups"]
    groups = meta["param_groups"]
    if len(groups) != len(current) or any(len(a["params"]) != len(b["params"]) for a, b in zip(groups, current,
                                                                                                 strict=True)):
        raise CheckpointError("the stored optimizer state was made for a model with different parameters; "
                              "build the model with the configuration the state was saved with")
    for group, now in zip(groups, current, strict=True):  # JSON made the tuples (e.g. betas) lists
        for k, v in now.items():
            if isinstance(v, tuple) and isinstance(group.get(k), list):
                group[k] = tuple(group[k])
    state: dict[int, dict[str, Any]] = {}
    n = len(prefix) + 1
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[n:].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_training_state(folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (safetensors) and ``meta`` (JSON, with the tensors' sha256) into ``folder``.

    Call it on the main process only. Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_tensors, tmp_json = folder / (STATE_TENSORS + ".tmp"), folder / (STATE_JSON + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp_tensors))
    record = {"format": FORMAT, **_jsonable(meta), "sha256": sha256_of(tmp_tensors)}
    tmp_json.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_tensors, folder / STATE_TENSORS)
    os.replace(tmp_json, folder / STATE_JSON)
    return folder


def load_training_state(folder: str | Path) -> TrainingState:
    """Read a folder written by ``save_training_state`` (checksum verified; nothing unpickled)."""
    folder = Path(folder)
    tensors_path, json_path = folder / STATE_TENSORS, folder / STATE_JSON
    if not json_path.is_file() or not tensors_path.is_file():
        hint = " (it is a shipped model, not a training state)" if folder.suffix in (".safetensors", ".json") else ""
        raise CheckpointError(f"{folder} is not a training state{hint}: expected {STATE_TENSORS} and {STATE_JSON} "
                              "in it, as written by a training script's --checkpoint-dir")
    meta = json.loads(json_path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    digest = sha256_of(tensors_path)
    if digest != meta.get("sha256"):
        raise CheckpointError(f"{tensors_path} does not match the checksum in {json_path.name} (sha256 "
                              f"{digest[:12]}... != {str(meta.get('sha256'))[:12]}...): the two files are from "
                              "different saves, or one was changed. Resume from an intact folder or start afresh.")
    return TrainingState(load_file(str(tensors_path)), meta)


def _differences(saved: Any, now: Any, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now)):
            where = f"{path}.{k}" if path else str(k)
            if k not in saved:
                out.append(f"{where}: not in the checkpoint, {now[k]!r} now")
            elif k not in now:
                out.append(f"{where}: {saved[k]!r} in the checkpoint, not set now")
            else:
                out.extend(_differences(saved[k], now[k], where))
        return out
    return [] if saved == now else [f"{path}: {saved!r} in the checkpoint, {now!r} now"]


def check_same_config(folder: str | Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Raise a ``CheckpointError`` listing every setting in which ``now`` differs from the stored ``saved``."""
    diffs = _differences(_jsonable(saved), _jsonable(now))
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CheckpointError(
            f"cannot resume from {folder}: it was saved by a run with a different configuration ({shown}). "
            f"Resume with the settings it was saved with (see {Path(folder) / STATE_JSON}, key \"config\"), "
            "or start a fresh run without --resume.")


def describe_model(obj: nn.Module) -> dict[str, Any]:
    """A JSON description of a model's configuration, for checking that a resumed run is the same run:
    its class, its ``config`` (a dataclass or dict) or else every weight's shape, and its parameter count."""
    cfg = getattr(obj, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    return {"class": type(obj).__name__, "config": cfg if isinstance(cfg, dict) else None,
            "parameters": sum(p.numel() for p in obj.parameters()),
            "shapes": {k: list(v.shape) for k, v in obj.state_dict().items()} if cfg is None else None}
