"""Putting a LoRA into a pipeline, by file or by the name of a shipped one.

Defined in notebook 13_beyond_text_to_image.

``apply_lora(pipe, "shapeworld_lora_green_circle")`` loads the adapter into ``pipe.unet`` (checksum
verified for a shipped name, refused for another U-Net) and leaves it frozen, in eval mode,
optionally merged. The adapters themselves are ``course_lib.models.lora``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from course_lib.models.lora import load_lora, merge_lora

__all__ = ["apply_lora"]


def _resolve_lora_path(path_or_name: str | Path) -> Path:
    """A file path, or the name of a LoRA in data/manifest.json (then its checksum is verified)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    from course_lib.core.checkpoints import read_manifest, sha256_of
    from course_lib.core.paths import data_dir

    entry = read_manifest().get(str(path_or_name))
    if entry is None:
        raise FileNotFoundError(f"LoRA {path_or_name} is neither a file nor a checkpoint name in "
                                f"{data_dir() / 'manifest.json'}")
    path = data_dir() / entry["weights"]
    if not path.is_file():
        raise FileNotFoundError(f"LoRA {path_or_name} is listed in {data_dir() / 'manifest.json'} but {path} is "
                                f"missing; make it again with: {entry.get('command', 'its training script')}")
    if sha256_of(path) != entry["sha256"]:
        from course_lib.core.checkpoints import load_weights
        load_weights(str(path_or_name))   # raises the course's checksum error, which says what changed
    return path


def apply_lora(pipe_or_unet: Any, path: str | Path, *, strict: bool = True, merge: bool = False) -> nn.Module:
    """Load a LoRA into a pipeline's U-Net (``pipe.unet``) or into a U-Net, ready to sample.

    ``path``: a LoRA file, or the name of one shipped in data/manifest.json (checksum verified).
    ``merge``: fold it into the weights (no extra cost per step; ``unmerge_lora`` takes it out).
    The adapters are frozen and the U-Net in eval mode; ``remove_lora(pipe.unet)`` restores the
    base model. Returns the U-Net. Defined in notebook 13_beyond_text_to_image.
    """
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    if not isinstance(unet, nn.Module):
        raise TypeError(f"apply_lora takes a pipeline (with .unet) or a U-Net module, "
                        f"got {type(pipe_or_unet).__name__}")
    layers = load_lora(unet, _resolve_lora_path(path), strict=strict)
    for layer in layers.values():
        layer.lora_A.requires_grad_(False)
        layer.lora_B.requires_grad_(False)
    if merge:
        merge_lora(unet)
    return unet.eval()
