"""Run settings from a config file: ``--config configs/train/NAME.yaml``, with command-line flags on top.

Not built in a notebook: documented in the README's "Training bigger" section. Every training
script in ``scripts/`` parses its arguments with ``parse_args``, so its settings can come from a
small YAML (or JSON) file whose keys are the script's flags::

    # configs/train/mnist_unet.yaml
    script: train_mnist_diffusion.py    # optional: refuses to be used by another script
    steps: 6000
    batch_size: 64                      # or batch-size
    base_channels: 16

``python scripts/train_mnist_diffusion.py --config configs/train/mnist_unet.yaml --steps 200`` takes
every value from the file except ``steps``. "The same model, but bigger" is a new file, not new
code. Unknown keys, values of the wrong type and choices a flag does not offer are errors that
name the key and list what is allowed.

The rest is what every script does around its training function: ``training_run`` joins torchrun's
processes, sets torch's threads and checks that every process has the same settings; ``launcher``,
``run_notes`` and ``changed_flags`` are the words it records with the weights it ships.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from course_lib.train.distributed import PRECISIONS, DistributedContext, distributed_run

__all__ = ["load_config_file", "parse_args", "add_runtime_arguments", "add_checkpoint_arguments", "training_run",
           "launcher", "run_notes", "changed_flags", "window_means"]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a ``.yaml``/``.yml`` or ``.json`` file (a mapping of flag names to values)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; the shipped ones are in configs/train/")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings (key: value), got {type(data).__name__}")
    return data


def _convert(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """``value`` from the file, checked (and converted) the way argparse would treat it on the command line."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: {key}: {why}")

    if value is None:
        return None
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
        return value

    def one(v: Any) -> Any:
        kind = action.type
        if isinstance(v, bool) and kind in (int, float):
            raise bad(f"must be a number, got {v!r}")
        if kind is int:
            if isinstance(v, float) and not v.is_integer():
                raise bad(f"must be an integer, got {v!r}")
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise bad(f"must be an integer, got {v!r}") from None
        elif kind is float:
            try:
                v = float(v)  # YAML reads 1e-3 (no dot) as a string
            except (TypeError, ValueError):
                raise bad(f"must be a number, got {v!r}") from None
        elif kind is None or kind is str:
            if not isinstance(v, str | int | float):
                raise bad(f"must be a single value, got {v!r}")
            v = str(v)
        elif callable(kind):
            v = kind(v)
        if action.choices is not None and v not in action.choices:
            raise bad(f"must be one of {', '.join(map(str, action.choices))}, got {v!r}")
        return v

    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list | tuple):
            value = [value]
        if action.nargs == "+" and not value:
            raise bad("needs at least one value")
        return [one(v) for v in value]
    return one(value)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               script: str | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config FILE``: the file's values replace the defaults, and
    flags given on the command line replace the file's values. ``script``: this script's file name,
    checked against the file's optional ``script:`` key. Errors exit with argparse's usage message.
    """
    if not any("--config" in a.option_strings for a in parser._actions):
        parser.add_argument("--config", default=None, metavar="FILE",
                            help="YAML or JSON file of settings (keys: the flags below); flags given here override it")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        return parser.parse_args(argv)
    path = Path(known.config)
    try:
        settings = load_config_file(path)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    actions = {a.dest: a for a in parser._actions
               if a.dest not in ("help", "config") and not isinstance(a, argparse._HelpAction)}
    defaults: dict[str, Any] = {}
    for raw_key, value in settings.items():
        key = str(raw_key).replace("-", "_")
        if key == "script":
            if script is not None and Path(str(value)).name != script:
                parser.error(f"{path} is a config for {value}, not for {script}")
            continue
        if key not in actions:
            parser.error(f"{path}: unknown setting {raw_key!r} for this script; known settings: "
                         f"{', '.join(sorted(actions))}")
        try:
            defaults[key] = _convert(actions[key], str(raw_key), value, path)
        except (TypeError, ValueError) as e:
            parser.error(str(e))
        actions[key].required = False  # given by the file
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def add_runtime_arguments(parser: argparse.ArgumentParser, resume: bool = True, stop_after: bool = False) -> None:
    """The flags every training script shares: ``--device``, ``--precision`` and, with ``resume``,
    ``--checkpoint-dir``, ``--checkpoint-every`` and ``--resume`` (and ``--stop-after`` with ``stop_after``)."""
    group = parser.add_argument_group("where and how to train (README: \"Training bigger\")")
    group.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1, mps (default: COURSE_DEVICE, else CUDA, MPS, CPU; under torchrun "
                            "on GPUs each process takes cuda:LOCAL_RANK)")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="autocast: auto (bf16 on a GPU that supports it, else fp32), fp32, bf16, fp16 (CUDA)")
    if resume:
        add_checkpoint_arguments(parser, stop_after=stop_after, group=group)


def add_checkpoint_arguments(parser: argparse.ArgumentParser, stop_after: bool = True,
                             group: argparse._ArgumentGroup | None = None) -> None:
    """``--checkpoint-dir``, ``--checkpoint-every``, ``--resume`` and (with ``stop_after``) ``--stop-after``:
    what ``course_lib.train.state.Checkpointing.from_args`` reads."""
    group = group or parser.add_argument_group("stopping and resuming (README: \"Training bigger\")")
    group.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                       help="save the full training state here (rank 0), at the end and every "
                            "--checkpoint-every steps")
    group.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS")
    group.add_argument("--resume", default=None, metavar="DIR",
                       help="continue from a training state saved with --checkpoint-dir (same settings)")
    if stop_after:
        group.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                           help="stop the run at this step (the learning-rate schedule still spans the whole run), "
                                "save its state to --checkpoint-dir and ship nothing; continue it with --resume")


# ----------------------------------------------------------------------------------------------
# Around a script's training function
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def training_run(args: argparse.Namespace, default_threads: int | None = None) -> Iterator[DistributedContext]:
    """``with training_run(args) as ctx:`` a script's run: join torchrun's processes (``init_distributed`` on
    ``args.device``; a single process without torchrun), set torch's CPU threads (``args.threads``, else
    ``default_threads`` in one process; under torchrun each process keeps torchrun's OMP_NUM_THREADS), check
    that every process was started with the same settings, and leave the process group at the end."""
    with distributed_run(getattr(args, "device", None)) as ctx:
        threads = getattr(args, "threads", None)
        if threads is None and ctx.world_size == 1:
            threads = default_threads
        if threads is not None:
            torch.set_num_threads(threads)
        ctx.check_same_on_all_ranks(vars(args), "settings")
        yield ctx


def launcher(ctx: DistributedContext) -> str:
    """How the run was started, as its recorded command begins: ``python`` or ``torchrun --nproc_per_node=N``."""
    return "python" if ctx.world_size == 1 else f"torchrun --nproc_per_node={ctx.world_size}"


def run_notes(ctx: DistributedContext, precision: str, start_step: int = 0) -> dict[str, Any]:
    """What a script adds to its metrics about the run when it was not one fp32 process on the CPU
    (``machine``), and the step a resumed run started from (``resumed_from_step``)."""
    notes: dict[str, Any] = {}
    if ctx.world_size > 1 or ctx.device.type != "cpu" or precision != "fp32":
        notes["machine"] = f"{ctx.world_size} process(es) on {ctx.device.type}, {precision}"
    if start_step:
        notes["resumed_from_step"] = start_step
    return notes


def changed_flags(args: argparse.Namespace, defaults: dict[str, Any]) -> str:
    """`` --flag value`` for each setting of ``defaults`` (dest name: default) that ``args`` changed."""
    return "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k, default in defaults.items()
                   if getattr(args, k) != default)


def window_means(values: Sequence[float], every: int = 50, digits: int = 4) -> list[float]:
    """A loss curve for a JSON file: the mean of every ``every`` values (the last window may be shorter)."""
    return [round(sum(values[i:i + every]) / len(values[i:i + every]), digits) for i in range(0, len(values), every)]
