"""Mixed precision for the training loops: which precision a device can run, autocast, the fp16 gradient scaler.

Not built in a notebook: documented in the README's "Training bigger" section. The notebooks train in
float32 on the CPU, where ``autocast(device, "fp32")`` does nothing and there is no gradient scaler.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "resolve_precision", "autocast", "make_grad_scaler"]

#: Mixed-precision choices: ``fp32`` (off), ``bf16`` and ``fp16`` autocast, ``auto`` (bf16 on a GPU
#: that supports it, fp32 everywhere else).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for ``precision`` on ``device`` (``"auto"``: bf16 on a CUDA GPU
    that supports it, else fp32). Raises a ``ValueError`` for a choice the device cannot run."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 autocast is for CUDA GPUs (with a gradient scaler); on {device.type} use "
                         "precision 'bf16' or 'fp32'")
    return precision


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The mixed-precision context for the forward pass: ``torch.autocast`` in bf16/fp16, or nothing for fp32.

    Weights, optimizer state and the loss stay in float32; only matrix multiplications and
    convolutions run in the lower precision.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (small gradients would underflow without it); None otherwise."""
    device = torch.device(device)
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
