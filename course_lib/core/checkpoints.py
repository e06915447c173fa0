"""The checkpoint store: safetensors weights, a JSON config, and a sha256 in ``data/manifest.json``.

Defined in notebook 00_welcome. Nothing here unpickles: weights are safetensors, configs JSON.

    save_checkpoint(model, "digit_classifier", config={...}, command="python scripts/...")
    model = load_checkpoint("digit_classifier", DigitClassifier)   # builds from the saved config

Loading checks the file's sha256 against the manifest and that every tensor fits the model, and
says exactly what is wrong when something does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from course_lib.core.paths import data_dir

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint is missing, corrupted, or does not fit the model it is loaded into.

    The one error of checkpoints: the course's own (``load_checkpoint``, ``load_weights``) and the
    public folders ``course_lib.pipeline.convert`` reads (naming the part that does not fit). A
    ``RuntimeError`` and, as convert's errors always were, a ``ValueError``.
    """


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file. Supports notebook 00_welcome."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: str | Path | None = None) -> dict[str, Any]:
    """The manifest of shipped checkpoints: name -> files, sha256, command. Defined in notebook 00_welcome."""
    path = Path(folder or data_dir()) / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def save_checkpoint(model: torch.nn.Module, name: str, *, config: dict[str, Any],
                    folder: str | Path | None = None, command: str | None = None,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Save ``model``'s weights as ``NAME.safetensors`` and ``config`` as ``NAME.json``, and record
    the weights' sha256 in the folder's manifest. ``config`` must be JSON (it is what rebuilds the
    model); ``command`` says how the weights were made; ``metrics`` what they measured.

    Defined in notebook 00_welcome.
    """
    folder = Path(folder or data_dir())
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    return record_checkpoint(weights, name, config=config, command=command, metrics=metrics)


def record_checkpoint(weights: str | Path, name: str, *, config: dict[str, Any], command: str | None = None,
                      metrics: dict[str, Any] | None = None) -> Path:
    """Ship a weights file already written as ``NAME.safetensors`` in its folder: write ``NAME.json``
    (config, command, metrics) and record the file's sha256 in the folder's manifest, as
    ``save_checkpoint`` does, for files that are not a whole model's state dict (scripts/train_lora.py's
    adapters, written by ``course_lib.models.lora.save_lora``).
    """
    weights = Path(weights)
    if weights.name != f"{name}.safetensors" or not weights.is_file():
        raise CheckpointError(f"record_checkpoint expects an existing file named {name}.safetensors, got {weights}")
    folder = weights.parent
    meta = {"config": config, "command": command, "metrics": metrics or {}}
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    manifest = read_manifest(folder)
    manifest[name] = {"weights": weights.name, "config": f"{name}.json", "sha256": sha256_of(weights),
                      "bytes": weights.stat().st_size, "command": command}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return weights


def load_weights(name: str, folder: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified state dict and metadata (config, command, metrics) of a stored checkpoint.

    Supports notebook 00_welcome.
    """
    folder = Path(folder or data_dir())
    manifest = read_manifest(folder)
    if name not in manifest:
        known = ", ".join(sorted(manifest)) or "none"
        raise CheckpointError(f"no checkpoint named {name!r} in {folder / MANIFEST}; known checkpoints: {known}")
    entry = manifest[name]
    weights = folder / entry["weights"]
    if not weights.is_file():
        raise CheckpointError(f"{weights} is listed in the manifest but missing; make it again with: "
                              f"{entry.get('command') or 'its training script'}")
    digest = sha256_of(weights)
    if digest != entry["sha256"]:
        raise CheckpointError(_checksum_message(folder, name, weights, digest, entry))
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(
            f"{weights} matches its checksum in {folder / MANIFEST} but is not a readable safetensors file "
            f"({type(err).__name__}: {err}): it is truncated or damaged, and the manifest was updated to match it. "
            f"Restore both with `git checkout -- {_shown(weights)} {_shown(folder / MANIFEST)}`, or make the "
            f"weights again with: {entry.get('command') or 'its training script'}") from None
    config_path = folder / entry["config"]
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}, the config of checkpoint {name!r}, cannot be read ({err}); restore it "
                              f"with `git checkout -- {_shown(config_path)}`") from None
    return state, meta


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (for a command to copy)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _committed_sha256(folder: Path, name: str) -> str | None:
    """The sha256 that the committed manifest (git HEAD) records for ``name``; None without git."""
    import subprocess

    manifest = (folder / MANIFEST).resolve()
    try:
        top = subprocess.run(["git", "-C", str(manifest.parent), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        rel = manifest.relative_to(Path(top).resolve()).as_posix()
        shown = subprocess.run(["git", "-C", top, "show", f"HEAD:{rel}"], capture_output=True, text=True,
                               timeout=10, check=True).stdout
        return json.loads(shown).get(name, {}).get("sha256")
    except (OSError, ValueError, subprocess.SubprocessError, AttributeError):
        return None


def _checksum_message(folder: Path, name: str, weights: Path, digest: str, entry: dict[str, Any]) -> str:
    """Say which of the two changed, the weights or the manifest, where git can tell."""
    head = (f"{weights.name} does not match its checksum in {folder / MANIFEST} (sha256 {digest[:12]}... != "
            f"{entry['sha256'][:12]}...)")
    remake = f"make the weights again with: {entry.get('command') or 'its training script'}"
    committed = _committed_sha256(folder, name)
    if committed is not None and committed == digest:
        return (f"{head}: the weights are the committed ones, so the manifest changed (its entry for {name!r}). "
                f"Restore it with `git checkout -- {_shown(folder / MANIFEST)}`; if you retrained on purpose, save "
                "with save_checkpoint, which records the new checksum")
    if committed is not None and committed == entry["sha256"]:
        return (f"{head}: the manifest is the committed one, so the weights file changed (corrupted or edited by "
                f"hand). Restore it with `git checkout -- {_shown(weights)}`, or {remake}")
    return (f"{head}: either the weights file or the manifest's entry for {name!r} changed. If you edited the "
            f"manifest, restore it (`git checkout -- {_shown(folder / MANIFEST)}`); if the weights are damaged, "
            f"restore them (`git checkout -- {_shown(weights)}`) or {remake}")


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str = "checkpoint"
                            ) -> torch.nn.Module:
    """Load ``state`` into ``model`` after checking that every key and shape fits; the error lists
    missing and unexpected keys and shape mismatches. Supports notebook 00_welcome."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")
        parts = [f"{len(missing)} missing keys: {show(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected keys: {show(unexpected)}" if unexpected else "",
                 f"{len(wrong)} shape mismatches: {show(wrong)}" if wrong else ""]
        raise CheckpointError(f"the {what} does not fit {type(model).__name__}: "
                              + "; ".join(p for p in parts if p)
                              + ". Build the model with the configuration the checkpoint was saved with.")
    model.load_state_dict(state)
    return model


def load_checkpoint(name: str, model: torch.nn.Module | Callable[..., torch.nn.Module],
                    folder: str | Path | None = None, map_location: str | torch.device = "cpu"
                    ) -> torch.nn.Module:
    """Load a stored checkpoint. ``model`` is either a module to fill, or a class/function that
    builds one from the saved config (``model(**config)``). Returns the model in eval mode.

    Defined in notebook 00_welcome.
    """
    state, meta = load_weights(name, folder)
    if not isinstance(model, torch.nn.Module):
        try:
            model = model(**meta["config"])
        except TypeError as e:
            raise CheckpointError(f"the config saved with {name!r} ({meta['config']}) cannot build "
                                  f"{getattr(model, '__name__', model)}: {e}") from e
    load_state_dict_checked(model, state, what=f"checkpoint {name!r}")
    return model.to(map_location).eval()
