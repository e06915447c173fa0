"""LoRA's layers: a frozen linear layer plus a trainable low-rank update, added, merged and removed.

Defined in notebook 13_beyond_text_to_image.

``LoRALinear`` computes ``W x + b + (alpha / r) * B (A x)``; ``add_lora`` wraps the chosen linear
layers of a model (``resolve_targets``: presets such as the cross-attention projections, or names),
``merge_lora`` / ``unmerge_lora`` fold the update into the weight and out again, ``remove_lora``
puts plain layers back, ``count_lora_parameters`` says what the adapters cost. The file format is
in ``lora_file``; ``lora`` re-exports both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CROSS_ATTENTION_TARGETS", "SELF_ATTENTION_TARGETS", "TARGET_PRESETS", "LoRAError", "LoRALinear",
           "LoRAParameterCount", "resolve_targets", "add_lora", "lora_layers", "count_lora_parameters",
           "merge_lora", "unmerge_lora", "remove_lora"]

CROSS_ATTENTION_TARGETS: tuple[str, ...] = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
SELF_ATTENTION_TARGETS: tuple[str, ...] = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "cross": CROSS_ATTENTION_TARGETS,
    "self": SELF_ATTENTION_TARGETS,
    "attention": CROSS_ATTENTION_TARGETS + SELF_ATTENTION_TARGETS,
}


class LoRAError(ValueError):
    """A LoRA that cannot be added, saved or loaded as asked; the message says what is wrong.

    Supports notebook 13_beyond_text_to_image.
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
    linear layer. Supports notebook 13_beyond_text_to_image.
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

    Supports notebook 13_beyond_text_to_image.
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
    with the adapters folded in for good. Returns ``model``. Supports notebook 13_beyond_text_to_image.
    """
    for name, layer in lora_layers(model).items():
        _set_module(model, name, layer.to_linear(keep_update))
    return model


def _require_layers(model: nn.Module, what: str) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise LoRAError(f"{type(model).__name__} has no LoRA layers to {what}; add_lora or load_lora first")
    return layers
