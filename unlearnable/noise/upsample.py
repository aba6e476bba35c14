"""Map work-resolution noise onto a full-size photo without breaking the budget.

δ (3, S, S) is upsampled to (H, W) by separable bilinear interpolation written as two small
matrices, ``A_h (H, S) @ δ_c @ A_w (S, W)ᵀ``. Each output pixel is a convex combination of δ
values (non-negative weights summing to 1), so ‖up(δ)‖∞ ≤ ‖δ‖∞ ≤ ε at full resolution; the
photo is then perturbed and rounded to its integer levels, so every pixel moves by at most
round(ε · max_level) levels. The work is done in horizontal strips, so a 12-megapixel photo
needs a few tens of MB on top of its own pixels, never a full float copy.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bilinear resampling (half-pixel centres, edge clamped), rows sum to 1."""
    pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = pos.clamp(0, n_in - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    w_hi = pos - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - w_hi
    m[torch.arange(n_out), hi] += w_hi
    return m.float()


def upsample_noise(delta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """δ (C, S, S) -> (C, height, width) bilinear; for checks and small images (allocates it all)."""
    a_h, a_w = bilinear_matrix(height, delta.shape[-2]), bilinear_matrix(width, delta.shape[-1])
    return torch.einsum("hs,cst,wt->chw", a_h, delta.float(), a_w)


EPS_TOLERANCE = 1e-6  # float32 rounding of a δ that was projected onto [-ε, ε]


def apply_noise(pixels: np.ndarray, delta: torch.Tensor, strip: int = 256,
                eps: float | None = None,
                shape: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None) -> tuple[np.ndarray, int]:
    """Add δ ((3, S, S) float in pixel units [-ε, ε]) to ``pixels`` ((H, W, C) uint8 or uint16, C = 1 or 3).
    A δ already at full size ((3, H, W), e.g. face noise pasted back) is added as it is.

    Grayscale photos get the channel mean of δ (the noise stays gray). Returns the perturbed pixels
    (same shape and dtype) and the largest per-pixel change in integer levels. With ``eps`` given, a δ
    over budget (‖δ‖∞ > ε, e.g. loaded from a tampered file) or not finite raises ``ValueError``
    before any pixel is touched. ``shape(noise, r0, r1)`` (None: no op), e.g. the perceptual budget's
    ``noise.perceptual.noise_shaper``, maps each strip of upsampled noise in levels, (rows, W, C) for
    rows [r0, r1), to the noise added; it must not grow it (|shaped| ≤ ε · max level)."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1|3), got {pixels.shape}")
    if eps is not None:
        worst_delta = float(delta.abs().max()) if delta.numel() else 0.0
        if not np.isfinite(worst_delta) or worst_delta > eps + EPS_TOLERANCE:
            raise ValueError(f"noise exceeds its budget: max |δ| = {worst_delta * 255:.3g}/255 "
                             f"> ε = {eps * 255:.3g}/255")
    max_level = float(np.iinfo(pixels.dtype).max)
    h, w, c = pixels.shape
    d = delta.float()
    if c == 1:
        d = d.mean(0, keepdim=True)
    full = tuple(d.shape[-2:]) == (h, w)
    if not full:
        a_h = bilinear_matrix(h, d.shape[-2])
        right = torch.einsum("cst,wt->csw", d, bilinear_matrix(w, d.shape[-1])) * max_level  # (C, S, W)
    out = np.empty_like(pixels)
    worst = 0
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        if full:
            noise = d[:, r0:r1].permute(1, 2, 0) * max_level
        else:
            noise = torch.einsum("hs,csw->hwc", a_h[r0:r1], right)                   # (rows, W, C)
        if shape is not None:
            noise = shape(noise, r0, r1)
        src = torch.from_numpy(pixels[r0:r1].astype(np.float32))
        res = (src + noise).round_().clamp_(0, max_level)
        worst = max(worst, int((res - src).abs().max()))
        out[r0:r1] = res.numpy().astype(pixels.dtype)
    return out, worst
