"""A blotch measure for protected photos: how much low-frequency colour change sits on flat regions.

PSNR and SSIM do not see the artefact that class-wise photo noise shows: a 64 × 64 pattern stretched
over the photo gives smooth pink and green blotches on flat areas (sky, walls). A fine grain of the
same energy is far less visible, yet has the same PSNR. The measure here targets exactly that:

    blotch = sqrt( mean over flat pixels of  LP(ΔCb)² + LP(ΔCr)² )          (8-bit levels)

- Δ = written − original, both as decoded (what a viewer sees), rescaled to 8-bit levels; ΔCb, ΔCr
  its chroma in the JPEG/JFIF (full-range ITU-R BT.601) YCbCr transform.
- LP: a 9 × 9 box mean (stride 1, borders replicated): keeps structure wider than about 9 pixels
  at 1:1 and divides the variance of pixel-independent noise by 81. Chromatic contrast sensitivity
  is low-pass (Mullen, J. Physiol. 359, 1985): the eye sees colour change best at low spatial
  frequencies, so low-passed chroma is its visible part.
- Flat pixels: the original's luma has a local standard deviation (7 × 7 window) below 3 levels,
  the smallest luminance visibility threshold of Chou & Li's JND profile (IEEE TCSVT 5(6), 1995):
  a region whose own variation is below visibility offers no texture masking.

``blotch_luma`` is the same on the luma change (a blotch moved from colour to brightness is still
a blotch); ``flat_share`` is the share of flat pixels. With no flat pixel both are None; a grayscale
photo has no chroma (``blotch`` 0 where flat pixels exist). Both are RMS figures in levels, so
they can be compared across photos of different sizes; they are not calibrated visibility scores
(``unlearnable.eval.scielab`` is: S-CIELAB against one just-noticeable difference; ``flat_mask``
gives it the same flat pixels).

Streams over row strips with a 4-row halo, float64, so a 12-megapixel photo needs a few tens of MB.
"""
from __future__ import annotations

import math

import numpy as np
import torch

FLAT_STD = 3.0      # 8-bit levels: local std of the original's luma below which a pixel is flat
FLAT_WINDOW = 7     # side of the local-std window
LOWPASS = 9         # side of the box low-pass
_HALO = max(FLAT_WINDOW, LOWPASS) // 2
_STRIP = 256
_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Valid k × k box mean of (C, h, w) float64 -> (C, h - k + 1, w - k + 1): running sums along each
    axis (two cumulative sums, a few operations per pixel whatever k)."""
    c = x.cumsum(1)
    x = c[:, k - 1:].clone()
    x[:, 1:] -= c[:, :-k]
    c = x.cumsum(2)
    x = c[:, :, k - 1:].clone()
    x[:, :, 1:] -= c[:, :, :-k]
    return x.div_(k * k)


def _rows(img, r0: int, r1: int, halo: int) -> torch.Tensor:
    """Rows [r0 - halo, r1 + halo) and columns [-halo, W + halo) of an (H, W, C) image, the borders
    replicated, as float64 (C, rows, columns)."""
    h, w = img.shape[:2]
    rows = np.clip(np.arange(r0 - halo, r1 + halo), 0, h - 1)
    cols = np.clip(np.arange(-halo, w + halo), 0, w - 1)
    if isinstance(img, np.ndarray):
        t = img[rows[0]:rows[-1] + 1][rows - rows[0]][:, cols]
        return torch.from_numpy(np.ascontiguousarray(t.transpose(2, 0, 1), dtype=np.float64))
    t = img[int(rows[0]):int(rows[-1]) + 1].cpu()
    t = t[torch.from_numpy(rows - rows[0])][:, torch.from_numpy(cols)]
    return t.to(torch.float64).permute(2, 0, 1).contiguous()


def _flat(luma: torch.Tensor, halo: int, rows: int, w: int) -> torch.Tensor:
    """Flat pixels (rows, w) of a strip's luma (1, rows + 2 halo, w + 2 halo) in 8-bit levels: local
    std over ``FLAT_WINDOW`` below ``FLAT_STD``."""
    m = _box(torch.cat([luma, luma * luma]), FLAT_WINDOW)
    o = halo - FLAT_WINDOW // 2
    return (m[1] - m[0] ** 2).clamp_(min=0).sqrt_()[o:o + rows, o:o + w] < FLAT_STD


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Luma (1, h, w) of a (C, h, w) strip in 8-bit levels (C = 3: JFIF Y; C = 1: itself)."""
    if x.shape[0] == 1:
        return x
    return (torch.tensor(_YCC[:1], dtype=torch.float64) @ x.flatten(1)).view(1, *x.shape[1:])


def flat_mask(original, data_range: float = 255.0) -> torch.Tensor:
    """The (H, W) boolean mask of the pixels ``blotch`` calls flat (module doc) in ``original``."""
    a = original[:, :, None] if original.ndim == 2 else original
    h, w = a.shape[:2]
    strips = [_flat(_luma(_rows(a, r0, min(h, r0 + _STRIP), _HALO).mul_(255.0 / data_range)), _HALO,
                    min(h, r0 + _STRIP) - r0, w) for r0 in range(0, h, _STRIP)]
    return torch.cat(strips)


def blotch(original, written, data_range: float = 255.0) -> dict:
    """Blotch figures of ``written`` against ``original`` ((H, W) or (H, W, C) images, C = 1 or 3,
    numpy or torch, on the scale of ``data_range``: 255 for 8-bit, 65535 for 16-bit).

    Returns ``{"blotch": float | None, "blotch_luma": float | None, "flat_share": float}``: RMS of the
    9 × 9 low-passed chroma (and luma) change over the flat pixels, in 8-bit levels (module doc)."""
    a, b = original, written
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got {tuple(a.shape)}")
    h, w, c = a.shape
    scale = 255.0 / data_range
    ycc = torch.tensor(_YCC, dtype=torch.float64)
    sums = torch.zeros(2, dtype=torch.float64)  # chroma, luma
    flat_total = 0
    r = _HALO
    for r0 in range(0, h, _STRIP):
        r1 = min(h, r0 + _STRIP)
        x = _rows(a, r0, r1, r).mul_(scale)
        d = _rows(b, r0, r1, r).mul_(scale).sub_(x)
        if c == 3:
            d = (ycc @ d.flatten(1)).view(d.shape)                          # ΔY, ΔCb, ΔCr
        flat = _flat(_luma(x), r, r1 - r0, w)
        o = r - LOWPASS // 2
        lp = _box(d, LOWPASS)[:, o:o + r1 - r0, o:o + w]
        flat_total += int(flat.sum())
        e = lp.square_().mul_(flat).flatten(1).sum(1)
        sums[1] += e[0]
        if c == 3:
            sums[0] += e[1] + e[2]
    if flat_total == 0:
        return {"blotch": None, "blotch_luma": None, "flat_share": 0.0}
    return {"blotch": math.sqrt(float(sums[0]) / flat_total), "blotch_luma": math.sqrt(float(sums[1]) / flat_total),
            "flat_share": flat_total / (h * w)}
