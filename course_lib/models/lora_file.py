"""LoRA files: the adapters of a model in safetensors, with what they were made for.

Part of notebook 13_beyond_text_to_image's LoRA (``scripts/train_lora.py`` writes the shipped file).

The tensors ``<layer>.lora_A`` / ``<layer>.lora_B`` and, in the header's metadata, the rank, alpha,
targets, every adapted layer's name and shape and a signature of the base weights it was trained on
(``lora_metadata``), so that ``load_lora`` into another model is a clear ``LoRAError``.
``save_lora`` writes a file, ``read_lora`` reads one, ``load_lora`` puts it into a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from course_lib.models.lora_layers import LoRAError, LoRALinear, _linears, _require_layers, add_lora, lora_layers

__all__ = ["LORA_FORMAT", "lora_state_dict", "lora_metadata", "save_lora", "read_lora", "load_lora"]

LORA_FORMAT = "course_lib.lora/1"


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors only: ``<layer>.lora_A (r, in)`` and ``<layer>.lora_B (out, r)``, on the CPU.

    Supports notebook 13_beyond_text_to_image.
    """
    out = {}
    for name, layer in _require_layers(model, "save").items():
        out[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous().clone()
        out[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous().clone()
    return out


def _signature(weight: torch.Tensor) -> list[float]:
    """Three numbers that identify a weight matrix up to float/bf16 rounding: mean, std and a ramp projection."""
    w = weight.detach().double().cpu().flatten()
    ramp = torch.linspace(-1, 1, len(w), dtype=torch.float64)
    return [float(w.mean()), float(w.std()), float((w * ramp).mean())]


def _fingerprint(layers: dict[str, list[int]]) -> str:
    text = json.dumps(sorted(layers.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def lora_metadata(model: nn.Module, base_model: str | None = None, base_sha256: str | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The safetensors header metadata (strings) that ``save_lora`` writes for ``model``'s adapters.

    ``layers``: each adapted layer's name and ``[out, in]``; ``fingerprint``: a hash of those;
    ``base_signature``: per layer, numbers that identify the base weight it was trained on;
    ``base_model``/``base_sha256``: the checkpoint it was made for (data/manifest.json), when known.
    Supports notebook 13_beyond_text_to_image.
    """
    layers = _require_layers(model, "describe")
    first = next(iter(layers.values()))
    shapes = {n: [m.out_features, m.in_features] for n, m in layers.items()}
    meta = {
        "format": LORA_FORMAT,
        "rank": str(first.rank),
        "alpha": repr(first.alpha),
        "targets": json.dumps(list(layers)),
        "layers": json.dumps(shapes),
        "fingerprint": _fingerprint(shapes),
        "base_signature": json.dumps({n: _signature(m.base_weight()) for n, m in layers.items()}),
        "base_model": base_model or "",
        "base_sha256": base_sha256 or "",
    }
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    return meta


def save_lora(path: str | Path, model: nn.Module, *, base_model: str | None = None,
              base_sha256: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s adapters to a safetensors file, with ``lora_metadata`` in its header.

    ``base_model``/``base_sha256`` name the base checkpoint (e.g. ``"shapeworld_t2i_unet"`` and its
    sha256 in data/manifest.json); ``extra``: any JSON to keep with it. Supports notebook 13_beyond_text_to_image.
    """
    ranks = {m.rank for m in _require_layers(model, "save").values()}
    alphas = {m.alpha for m in lora_layers(model).values()}
    if len(ranks) > 1 or len(alphas) > 1:
        raise LoRAError(f"save_lora stores one rank and alpha for all layers; this model mixes ranks {sorted(ranks)} "
                        f"and alphas {sorted(alphas)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(model), str(path), metadata=lora_metadata(model, base_model, base_sha256, extra))
    return path


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the parsed metadata of a LoRA file written by ``save_lora``.

    Supports notebook 13_beyond_text_to_image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise LoRAError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err})") from None
    if raw.get("format") != LORA_FORMAT:
        raise LoRAError(f"{path} is not a course LoRA file (its metadata has format {raw.get('format')!r}, "
                        f"expected {LORA_FORMAT!r}); write one with course_lib.models.lora.save_lora")
    meta: dict[str, Any] = {
        "rank": int(raw["rank"]), "alpha": float(raw["alpha"]), "targets": json.loads(raw["targets"]),
        "layers": {n: list(s) for n, s in json.loads(raw["layers"]).items()}, "fingerprint": raw["fingerprint"],
        "base_signature": json.loads(raw["base_signature"]), "base_model": raw.get("base_model") or None,
        "base_sha256": raw.get("base_sha256") or None, "extra": json.loads(raw.get("extra", "{}")),
    }
    expected = {f"{n}.lora_{ab}" for n in meta["layers"] for ab in "AB"}
    if set(tensors) != expected:
        raise LoRAError(f"{path}: its tensors do not match its metadata (missing "
                        f"{sorted(expected - set(tensors))[:3]}, unexpected {sorted(set(tensors) - expected)[:3]})")
    return tensors, meta


def _made_for(meta: dict[str, Any]) -> str:
    base = meta["base_model"] or "an unnamed model"
    sha = f", weights sha256 {meta['base_sha256'][:12]}..." if meta["base_sha256"] else ""
    return f"{base} (layer fingerprint {meta['fingerprint']}{sha})"


def _show(items: list[str], k: int = 3) -> str:
    return "; ".join(items[:k]) + (f" (and {len(items) - k} more)" if len(items) > k else "")


def load_lora(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, LoRALinear]:
    """Load a LoRA file into ``model``: adds the adapters (or fills existing ones of the same layout).

    Refuses, with a ``LoRAError`` that names the mismatch and the model the file was made for, a file
    whose layers are missing from ``model`` or have other shapes. With ``strict``, also one whose
    base weights differ from ``model``'s (another training of the same architecture); with
    ``strict=False`` that is a warning. ``model`` is left unchanged when loading fails.
    Supports notebook 13_beyond_text_to_image.
    """
    tensors, meta = read_lora(path)
    linears = _linears(model)
    missing = [n for n in meta["layers"] if n not in linears]
    wrong = [f"{n}: file {tuple(s)} vs model ({linears[n].out_features}, {linears[n].in_features})"
             for n, s in meta["layers"].items() if n in linears
             and list(s) != [linears[n].out_features, linears[n].in_features]]
    if missing or wrong:
        parts = [f"{len(missing)} layer(s) missing from {type(model).__name__}: {_show(missing)}" if missing else "",
                 f"{len(wrong)} shape mismatch(es): {_show(wrong)}" if wrong else ""]
        raise LoRAError(f"LoRA {Path(path).name} was made for another model, {_made_for(meta)}: "
                        + "; ".join(p for p in parts if p) + ". Load it into the model it was trained for.")
    existing = lora_layers(model)
    if existing:
        if set(existing) != set(meta["layers"]) or any(m.rank != meta["rank"] or m.alpha != meta["alpha"]
                                                        for m in existing.values()):
            raise LoRAError(f"{type(model).__name__} already has other LoRA layers (rank "
                            f"{next(iter(existing.values())).rank}, {len(existing)} layers) than {Path(path).name} "
                            f"(rank {meta['rank']}, {len(meta['layers'])} layers); call remove_lora(model) first")
        if any(m.merged for m in existing.values()):
            raise LoRAError("the model's LoRA layers are merged; call unmerge_lora(model) before loading another "
                            "adapter into them")
    differ = []
    for n, sig in meta["base_signature"].items():
        module = linears[n]
        own = _signature(module.base_weight() if isinstance(module, LoRALinear) else module.weight)
        if not all(math.isclose(a, b, rel_tol=2e-2, abs_tol=1e-4) for a, b in zip(own, sig, strict=True)):
            differ.append(n)
    if differ:
        message = (f"LoRA {Path(path).name} was trained on other base weights: {len(differ)} of "
                   f"{len(meta['layers'])} adapted layers differ from the model's ({_show(differ, 2)}). It was "
                   f"made for {_made_for(meta)}")
        if strict:
            raise LoRAError(message + "; load it into that model, or pass strict=False to load it anyway")
        warnings.warn(message + "; loading it anyway (strict=False)", stacklevel=2)
    layers = existing or add_lora(model, meta["rank"], meta["alpha"], targets=list(meta["layers"]))
    with torch.no_grad():
        for n, layer in layers.items():
            a, b = tensors[f"{n}.lora_A"], tensors[f"{n}.lora_B"]
            if tuple(a.shape) != (layer.rank, layer.in_features) or tuple(b.shape) != (layer.out_features, layer.rank):
                raise LoRAError(f"{Path(path).name}: {n} has A {tuple(a.shape)} and B {tuple(b.shape)}, expected "
                                f"({layer.rank}, {layer.in_features}) and ({layer.out_features}, {layer.rank})")
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
    return layers
