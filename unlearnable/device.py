"""Device selection (``--device auto``) and per-device speed settings."""
from __future__ import annotations

import ctypes
import sys

import torch

from .errors import UnlearnableError

_TUNED = False


def tune_cpu_allocator() -> None:
    """Keep freed activation buffers in the process on glibc (Linux).

    glibc returns every large block (> 32 MB, i.e. one conv activation of a 512-image batch)
    to the kernel on free and page-faults it back in on the next step; that showed as 50 %
    system time and halved PGD throughput on 2 cores. Raising the mmap and trim thresholds
    (mallopt, the programmatic form of MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_) keeps
    them. Idempotent; a no-op off glibc."""
    global _TUNED
    if _TUNED or not sys.platform.startswith("linux"):
        return
    _TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if isinstance(spec, torch.device):
        dev = spec
    elif spec == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
    else:
        try:
            dev = torch.device(spec)
        except RuntimeError as e:
            raise UnlearnableError(f"unknown device {spec!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UnlearnableError(f"device {spec!r} was asked for but no CUDA GPU is available "
                                   "(use --device auto or cpu)")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnlearnableError(f"device {spec!r} was asked for but only {torch.cuda.device_count()} "
                                   "CUDA GPU(s) are visible")
        mps = getattr(torch.backends, "mps", None)
        if dev.type == "mps" and not (mps is not None and mps.is_available()):
            raise UnlearnableError(f"device {spec!r} was asked for but Apple's MPS is not available on this "
                                   "machine (it needs macOS on Apple silicon; use --device auto or cpu)")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise UnlearnableError(f"device {spec!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cpu":
        tune_cpu_allocator()
    return dev


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the speed path); a no-op context elsewhere, so CPU stays fp32
    and bit-for-bit deterministic."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
