"""LoRA by hand: low-rank adapters on the attention projections of the course's U-Net.

Defined in notebook 13_beyond_text_to_image.

Fine-tuning all 1.76 million weights of the U-Net to teach it one new thing is costly and easily
breaks what it knew. LoRA (Hu et al. 2021) freezes every weight and learns, for a few chosen
``nn.Linear`` layers ``y = W x + b`` (W: out x in), a low-rank correction:

    y = W x + b + (alpha / r) * B (A x)        A: (r, in), B: (out, r), r << min(in, out)

``B`` starts at zero, so a fresh adapter changes nothing; training moves only ``A`` and ``B``
(``r * (in + out)`` numbers per layer instead of ``in * out``). Afterwards ``B A * alpha / r`` can
be folded into ``W`` (``merge_lora``: no extra cost at inference) and taken out again
(``unmerge_lora``). As in Stable Diffusion's LoRAs, the adapted layers are the attention
projections ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of the cross-attention (``attn2``: where
the prompt enters), optionally of the self-attention (``attn1``) too.

    layers = add_lora(pipe.unet, rank=4, alpha=4)            # cross-attention projections
    count_lora_parameters(pipe.unet)                          # LoRAParameterCount(lora=..., base=...)
    ... train (course_lib.train.diffusion.train_diffusion_model trains only what requires grad) ...
    save_lora("green_circle.safetensors", pipe.unet, base_model="shapeworld_t2i_unet")
    apply_lora(other_pipe, "green_circle.safetensors")       # refuses a LoRA made for another model

The file is safetensors: the tensors ``<layer>.lora_A`` / ``<layer>.lora_B`` and, in its header's
metadata, the rank, alpha, targets, every adapted layer's name and shape and a signature of the
base weights it was trained on, so that loading it into another model is a clear error.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

if TYPE_CHECKING:
    from course_lib.evaluate.adherence import AdherenceReport
    from course_lib.train.text_to_image import LatentCaptionData
    from course_lib.models.vae import AutoencoderKL

__all__ = [
    "CROSS_ATTENTION_TARGETS", "SELF_ATTENTION_TARGETS", "TARGET_PRESETS", "LORA_FORMAT",
    "LoRALinear", "LoRAError", "LoRAParameterCount", "resolve_targets", "add_lora", "lora_layers",
    "lora_state_dict", "lora_metadata", "save_lora", "read_lora", "load_lora", "apply_lora", "merge_lora",
    "unmerge_lora", "remove_lora", "count_lora_parameters", "concept_scenes", "concept_data",
    "concept_adherence", "ConceptAdherence",
]

LORA_FORMAT = "course_lib.lora/1"
CROSS_ATTENTION_TARGETS: tuple[str, ...] = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
SELF_ATTENTION_TARGETS: tuple[str, ...] = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "cross": CROSS_ATTENTION_TARGETS,
    "self": SELF_ATTENTION_TARGETS,
    "attention": CROSS_ATTENTION_TARGETS + SELF_ATTENTION_TARGETS,
}


class LoRAError(ValueError):
    """A LoRA that cannot be added, saved or loaded as asked; the message says what is wrong.

    Defined in notebook 13_beyond_text_to_image.
    """


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``W x + b + scale * B (A x)``.

    ``x (..., in)`` -> ``(..., out)``. ``lora_A (r, in)`` starts small and random (Kaiming uniform,
    as PEFT does), ``lora_B (out, r)`` at zero, so a fresh adapter leaves the output unchanged;
    ``scale = alpha / r``. The base layer's ``weight (out, in)`` and ``bias (out,)`` are kept under
    their own names (frozen), so the U-Net's state-dict keys of the base weights do not change.
    ``merged``: whether ``scale * B A`` is folded into ``weight`` (then the forward is one matmul).
    Defined in notebook 13_beyond_text_to_image.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise LoRAError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_rank_alpha(rank, alpha)
        if rank > min(base.in_features, base.out_features):
            raise LoRAError(f"rank {rank} is larger than this layer's smaller side "
                            f"({base.out_features} x {base.in_features}): a low-rank update needs "
                            f"rank <= {min(base.in_features, base.out_features)}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = int(rank)
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / self.rank
        self.weight = base.weight                                   # (out, in), frozen
        self.bias = base.bias                                       # (out,) or None, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **kw))   # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **kw))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update ``scale * B @ A`` (out, in), computed in float32 and cast to the weight's dtype."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale   # (out, r) @ (r, in) -> (out, in)
        return delta.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)                       # (..., in) -> (..., out)
        if self.merged:
            return out
        low = F.linear(F.linear(x, self.lora_A), self.lora_B)           # (..., in) -> (..., r) -> (..., out)
        return out + low * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``scale * B A`` into ``weight``: the same outputs, one matmul."""
        if not self.merged:
            self.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ``scale * B A`` out of ``weight`` again (equal to the original up to float rounding)."""
        if self.merged:
            self.weight -= self.delta_weight()
            self.merged = False

    def base_weight(self) -> torch.Tensor:
        """The frozen base weight (out, in), without the update even when merged."""
        return self.weight.detach() - self.delta_weight().detach() if self.merged else self.weight.detach()

    def to_linear(self, keep_update: bool = False) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's weight: the base one, or with ``keep_update`` the
        base plus the update (the adapter "fused" for good)."""
        if keep_update:
            self.merge()
        else:
            self.unmerge()
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        layer.weight, layer.bias = self.weight, self.bias
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}, merged={self.merged}")


def _check_rank_alpha(rank: Any, alpha: Any) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAError(f"rank must be an int >= 1 (typically 4 to 64), got {rank!r}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float)
                              or not math.isfinite(alpha) or alpha <= 0):
        raise LoRAError(f"alpha must be a positive number (the update is scaled by alpha / rank), got {alpha!r}")


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` and ``LoRALinear`` of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | LoRALinear)}


def resolve_targets(model: nn.Module, targets: str | Sequence[str] = "cross") -> list[str]:
    """The qualified names of the linear layers that ``targets`` picks, in module order.

    ``targets``: a preset (``"cross"``: the cross-attention's to_q/to_k/to_v/to_out.0; ``"self"``:
    the self-attention's; ``"attention"``: both) or names that a layer's qualified name ends with
    (``"attn2.to_k"``, ``"proj_in"``, or a full name such as
    ``"mid_block.attentions.0.transformer_blocks.0.attn2.to_v"``). Every name must match at least one
    linear layer. Defined in notebook 13_beyond_text_to_image.
    """
    patterns = _target_patterns(targets)
    linears = _linears(model)
    unmatched = [t for t in patterns if not any(_matches(n, t) for n in linears)]
    if unmatched:
        endings = sorted({".".join(n.split(".")[-2:]) for n in linears})
        raise LoRAError(f"target(s) {', '.join(map(repr, unmatched))} match no linear layer of "
                        f"{type(model).__name__}; presets: {', '.join(TARGET_PRESETS)}; layer names end with: "
                        f"{', '.join(endings)}")
    return [n for n in linears if any(_matches(n, t) for t in patterns)]


def _target_patterns(targets: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, Sequence) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise LoRAError(f"targets must be a preset ({', '.join(TARGET_PRESETS)}) or a non-empty list of layer "
                        f"names, got {targets!r}")
    out: list[str] = []
    for t in targets:
        for p in TARGET_PRESETS.get(t, (t,)):
            if p not in out:
                out.append(p)
    return tuple(out)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.ModuleList | nn.Sequential):
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The ``LoRALinear`` layers of ``model`` by qualified name (empty: no adapter).

    Defined in notebook 13_beyond_text_to_image.
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, rank: int = 4, alpha: float | None = None,
             targets: str | Sequence[str] = "cross") -> dict[str, LoRALinear]:
    """Wrap the ``targets`` linear layers of ``model`` in ``LoRALinear`` adapters, in place.

    Every other weight of ``model`` is frozen (``requires_grad=False``); only the adapters' ``A`` and
    ``B`` train. ``alpha`` defaults to ``rank`` (scale 1). Returns the new layers by name.
    Defined in notebook 13_beyond_text_to_image.
    """
    _check_rank_alpha(rank, alpha)
    if lora_layers(model):
        raise LoRAError(f"{type(model).__name__} already has LoRA layers; call remove_lora(model) first "
                        "(or load_lora to fill the existing ones)")
    names = resolve_targets(model, targets)
    linears = _linears(model)
    too_small = [f"{n} ({linears[n].out_features} x {linears[n].in_features})" for n in names
                 if rank > min(linears[n].in_features, linears[n].out_features)]
    if too_small:
        raise LoRAError(f"rank {rank} is larger than the smaller side of {', '.join(too_small[:3])}"
                        f"{' and more' if len(too_small) > 3 else ''}; choose a smaller rank")
    model.requires_grad_(False)
    layers = {}
    for n in names:
        layers[n] = LoRALinear(linears[n], rank, alpha)
        _set_module(model, n, layers[n])
    return layers


def count_lora_parameters(model: nn.Module) -> LoRAParameterCount:
    """How many numbers the adapters train against the base model's own parameters.

    Each adapted layer adds ``rank * (in + out)``. Defined in notebook 13_beyond_text_to_image.
    """
    layers = lora_layers(model)
    lora = sum(m.lora_A.numel() + m.lora_B.numel() for m in layers.values())
    total = sum(p.numel() for p in model.parameters())
    return LoRAParameterCount(lora=lora, base=total - lora, layers=len(layers))


@dataclass(frozen=True)
class LoRAParameterCount:
    """Adapter parameters (``lora``) against the model's own (``base``), over ``layers`` adapted layers.

    Defined in notebook 13_beyond_text_to_image.
    """

    lora: int
    base: int
    layers: int

    @property
    def fraction(self) -> float:
        """Adapter parameters as a share of the base model's."""
        return self.lora / self.base if self.base else float("nan")

    def __str__(self) -> str:
        return (f"{self.lora:,} LoRA parameters in {self.layers} layers = {100 * self.fraction:.2f}% of the "
                f"model's {self.base:,}")


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (``W += scale * B A``): the same outputs, no extra cost.

    Defined in notebook 13_beyond_text_to_image.
    """
    layers = _require_layers(model, "merge")
    for layer in layers.values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged adapter out of its base weight again (``W -= scale * B A``).

    Defined in notebook 13_beyond_text_to_image.
    """
    for layer in _require_layers(model, "unmerge").values():
        layer.unmerge()


def remove_lora(model: nn.Module, keep_update: bool = False) -> nn.Module:
    """Put plain ``nn.Linear`` layers back: the base model again, or with ``keep_update`` the base
    with the adapters folded in for good. Returns ``model``. Defined in notebook 13_beyond_text_to_image.
    """
    for name, layer in lora_layers(model).items():
        _set_module(model, name, layer.to_linear(keep_update))
    return model


def _require_layers(model: nn.Module, what: str) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise LoRAError(f"{type(model).__name__} has no LoRA layers to {what}; add_lora or load_lora first")
    return layers


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors only: ``<layer>.lora_A (r, in)`` and ``<layer>.lora_B (out, r)``, on the CPU.

    Defined in notebook 13_beyond_text_to_image.
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
    Defined in notebook 13_beyond_text_to_image.
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
    sha256 in data/manifest.json); ``extra``: any JSON to keep with it. Defined in notebook 13_beyond_text_to_image.
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

    Defined in notebook 13_beyond_text_to_image.
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
    Defined in notebook 13_beyond_text_to_image.
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


# ------------------------------------------------------------------------------------------------
# Teaching ShapeWorld's text-to-image model a colour-shape pair it never saw
# ------------------------------------------------------------------------------------------------
def _split_for(color: str, shape: str) -> str:
    from course_lib.worlds.shapeworld import is_held_out

    return "heldout" if is_held_out(color, shape) else "all"


def concept_scenes(color: str, shape: str, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` ShapeWorld scenes whose caption names the ``color`` ``shape`` (single, pair and count
    scenes): images ``(n, 3, 32, 32)`` in [-1, 1] and captions. Held-out pairs are drawn from the
    held-out split, where every scene holds one. Defined in notebook 13_beyond_text_to_image.
    """
    from course_lib.worlds.shapeworld import ShapeWorld, parse_caption

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    world, split = ShapeWorld(), _split_for(color, shape)
    images, captions, chunk = [], [], 0
    while len(captions) < n:
        batch = world.sample(max(4 * n, 256), seed=seed + chunk, split=split)
        keep = [i for i, c in enumerate(batch.captions) if (color, shape) in parse_caption(c).objects]
        images.append(batch.tensors()[keep])
        captions.extend(batch.captions[i] for i in keep)
        chunk += 1
    return torch.cat(images)[:n], captions[:n]


def concept_data(vae: AutoencoderKL, color: str, shape: str, n: int, seed: int) -> LatentCaptionData:
    """``concept_scenes`` encoded by the frozen autoencoder: the training data of a LoRA, in the
    form ``LatentCaptionData.batches`` turns into training batches (notebook 09).
    Defined in notebook 13_beyond_text_to_image.
    """
    from course_lib.train.text_to_image import LatentCaptionData
    from course_lib.train.autoencoder import encode_latents

    images, captions = concept_scenes(color, shape, n, seed)
    with torch.no_grad():
        latents = encode_latents(vae, images)                      # (n, 3, 32, 32) -> (n, 4, 8, 8)
    return LatentCaptionData(latents, captions)


@dataclass
class ConceptAdherence:
    """How well images of captions naming one colour-shape pair obey them.

    ``drawn``: share of images in which the judge sees an object of that colour and shape;
    ``report``: the adherence report of notebook 00 (per category, overall, exact).
    Defined in notebook 13_beyond_text_to_image.
    """

    color: str
    shape: str
    n: int
    drawn: float
    report: AdherenceReport
    images: torch.Tensor            # (n, 3, H, W) in [0, 1]
    captions: list[str]

    def as_row(self) -> dict[str, Any]:
        """One table row: the concept, the caption count, ``drawn`` and the adherence report's numbers."""
        return {"concept": f"{self.color} {self.shape}", "n": self.n, "drawn": round(self.drawn, 3),
                **self.report.as_row()}


def concept_adherence(pipe: Any, color: str, shape: str, n: int = 192, seed: int | None = None,
                      batch_size: int = 64, **settings: Any) -> ConceptAdherence:
    """Generate one image for each of ``n`` captions naming ``color`` ``shape`` and judge them.

    ``seed``: of the captions (default: prompt_eval.EVAL_SEED, far from the training scenes);
    image ``i`` starts from the noise of ``settings["seed"] + i``; ``settings``: the pipeline's
    (``guidance_scale=4``, ``steps=20``...). Defined in notebook 13_beyond_text_to_image.
    """
    from course_lib.evaluate.adherence import detect_objects, score_adherence
    from course_lib.evaluate.prompt_eval import EVAL_SEED

    seed = EVAL_SEED if seed is None else seed
    _, captions = concept_scenes(color, shape, n, seed)
    first = int(settings.pop("seed", 0))
    chunks = [pipe(captions[s:s + batch_size], seed=first + s, show_progress=False, **settings).images
              for s in range(0, n, batch_size)]
    images = torch.cat(chunks)                                          # (n, 3, H, W) in [0, 1]
    seen = detect_objects(images * 2 - 1)
    drawn = sum(any(o.color == color and o.shape == shape for o in objs) for objs in seen) / n
    return ConceptAdherence(color, shape, n, drawn, score_adherence(images * 2 - 1, captions), images, captions)
