"""Device selection (``--device auto``) and per-device speed settings."""
from __future__ import annotations

import torch

from .errors import UnlearnableError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise UnlearnableError(f"unknown device {spec!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnlearnableError("--device cuda was asked for but no CUDA GPU is available")
    return dev


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the speed path); a no-op context elsewhere, so CPU stays fp32
    and bit-for-bit deterministic."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
