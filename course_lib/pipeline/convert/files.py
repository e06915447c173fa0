"""Reading a diffusers folder: its parts, their JSON files and their safetensors weights.

Part of notebook 11_real_weights's loader (``convert.load_diffusers_pipeline``).

A Stable Diffusion folder has ``model_index.json`` and one subfolder per part (``PARTS``); each
network's weights are one safetensors file or the shards of an index (``WEIGHT_FILES``). Pickled
``.bin`` / ``.ckpt`` weights are refused with a message that says how to convert them once.
Every problem is a ``CheckpointError`` naming the part. The rules that map the files' names are in
``configs``, ``clip`` and ``scheduler``; ``convert`` joins them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from course_lib.core.checkpoints import CheckpointError

__all__ = ["PARTS", "PART_CLASSES", "WEIGHT_FILES"]

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# model_index.json: the class each part must be (the first name is diffusers' or transformers').
PART_CLASSES = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
}
WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_META_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} is missing; a diffusers Stable Diffusion folder has "
                              "model_index.json and the parts " + ", ".join(PARTS))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: {path} should hold a JSON object, got {type(data).__name__}")
    return data


def _weight_files(part_dir: Path, stem: str, variant: str | None) -> list[Path]:
    """The safetensors file(s) of one part: a single file or the shards of an index."""
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    single, index = part_dir / name, part_dir / f"{name}.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index, part_dir.name).get("weight_map", {})
        return [part_dir / f for f in sorted(set(weight_map.values()))]
    pickles = sorted(p.name for p in part_dir.glob("*.bin")) + sorted(p.name for p in part_dir.glob("*.ckpt"))
    if pickles:
        raise CheckpointError(
            f"{part_dir.name}: only pickled weights ({', '.join(pickles)}), no {name}. The course reads "
            "safetensors only, because unpickling a file can run any code it contains: convert the folder "
            "once where you trust it (diffusers: StableDiffusionPipeline.from_pretrained(folder)"
            ".save_pretrained(new_folder, safe_serialization=True)), or download the model's safetensors")
    others = sorted(p.name for p in part_dir.glob("*.safetensors"))
    hint = f" (it has {', '.join(others)}: pass variant= to choose one)" if others else ""
    raise CheckpointError(f"{part_dir.name}: {single} is missing{hint}")


def _read_weights(part_dir: Path, stem: str, variant: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(part_dir, stem, variant):
        if not path.is_file():
            raise CheckpointError(f"{part_dir.name}: the shard {path.name} named in the index is missing")
        try:
            state.update(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{part_dir.name}: {path} is not a readable safetensors file ({type(err).__name__}: "
                                  f"{err}); it is damaged or incomplete: download that file again") from None
    return state


def _load_module_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], part: str) -> None:
    """``load_state_dict(strict=True)``, with an error that lists what does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{what} ({len(keys)}): {keys[:5]}" for what, keys in
                 (("shape mismatches", wrong), ("missing keys", missing), ("unexpected keys", unexpected)) if keys]
        raise CheckpointError(f"{part}: the weights do not fit the model built from {part}/config.json: "
                              + "; ".join(parts))
    module.load_state_dict(state, strict=True)
