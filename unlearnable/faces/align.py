"""Align faces to a canonical 112 × 112 crop and paste crop-space noise back at full resolution.

Template: the standard ArcFace / InsightFace five-point template for 112 × 112 crops
(``arcface_dst`` in deepinsight/insightface ``python-package/insightface/utils/face_align.py``; the
alignment of ArcFace, Deng et al. CVPR 2019, arXiv:1801.07698, of MS1M/Glint360k crops, and of the
112 × 112 faces in the Unlearnable Examples face case study), (x, y) in crop pixels, pixel centres on
integers::

    left eye (38.2946, 51.6963)   right eye (73.5318, 51.5014)   nose (56.0252, 71.7366)
    left mouth (41.5493, 92.3655) right mouth (70.7299, 92.2041)

Transform: the least-squares similarity (rotation, uniform scale, translation) from the five detected
landmarks to the template, Umeyama, "Least-squares estimation of transformation parameters between
two point patterns", IEEE TPAMI 13(4), 1991, eqs. 40-42, with the reflection excluded (S = diag(1, -1)
when det Σ < 0) — the estimator of ``skimage.transform.SimilarityTransform.estimate``, which InsightFace
uses. A transform is a (2, 3) float64 matrix M mapping image pixel (x, y) to crop pixel
M[:, :2] @ (x, y) + M[:, 2] (the matrix InsightFace hands to ``cv2.warpAffine``).

Warping: ``torch.nn.functional.grid_sample``, bilinear, ``align_corners=True`` (pixel centres on
integers, as the template and MTCNN's landmarks), zeros outside the image (as InsightFace's
``borderValue=0``). ``align`` samples each crop pixel's preimage, all faces of an image in one call;
only the image region the crops touch is converted to float.

Paste-back: each full-size pixel (x, y) maps to crop position (u, v) = M (x, y) and takes δ there by
bilinear interpolation — a convex combination of four δ values (zeros outside the crop) — times a
feather weight w = clamp(min(u, v, 111 − u, 111 − v) / feather, 0, 1), which is 0 on the crop border
and outside, 1 deeper than ``feather`` crop pixels. Faces are combined by the weighted mean
δ = Σᵢ wᵢ δᵢ / max(1, Σᵢ wᵢ), and the returned weight is min(1, Σᵢ wᵢ). The coefficients wᵢ / max(1, Σ wⱼ)
are non-negative and sum to at most 1, so ‖δ‖∞ ≤ maxᵢ ‖δᵢ‖∞ at every pixel (checked on every call),
the result is continuous across overlaps (no seam where one face's weight overtakes another's, as
"max weight wins" would leave), and a caller may add whole-image noise as δ + (1 − weight) δ_photo
and still hold the budget. Each face is processed over its own bounding region, so the temporaries stay
the size of the face, not of the photo.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..noise.upsample import EPS_TOLERANCE

CROP_SIZE = 112
TEMPLATE = torch.tensor([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=torch.float64)
FEATHER = 8.0   # crop pixels over which the paste-back weight ramps from 0 (border) to 1


def fit_similarity(src: torch.Tensor | np.ndarray, dst: torch.Tensor | np.ndarray = TEMPLATE) -> torch.Tensor:
    """Least-squares similarity (Umeyama 1991, no reflection) mapping points ``src`` onto ``dst``.
    ``src``: (N, K, 2) or (K, 2) (x, y) points, K ≥ 2; ``dst``: (K, 2). Returns (N, 2, 3) float64 M with
    dst ≈ M[:, :2] @ src + M[:, 2] (or (2, 3) for unbatched ``src``)."""
    src = torch.as_tensor(src, dtype=torch.float64)
    dst = torch.as_tensor(dst, dtype=torch.float64)
    single = src.ndim == 2
    if single:
        src = src[None]
    if src.ndim != 3 or src.shape[1:] != dst.shape or dst.shape[-1] != 2 or dst.shape[0] < 2:
        raise ValueError(f"src must be (N, K, 2) matching dst {tuple(dst.shape)}, got {tuple(src.shape)}")
    if not torch.isfinite(src).all():
        raise ValueError("landmarks must be finite")
    mu_x, mu_y = src.mean(1, keepdim=True), dst.mean(0, keepdim=True)
    xc, yc = src - mu_x, (dst - mu_y).expand_as(src)
    var_x = xc.pow(2).sum((1, 2)) / src.shape[1]
    if (var_x <= 1e-12).any():
        raise ValueError("landmarks are all at one point; no similarity fits them")
    cov = yc.transpose(1, 2) @ xc / src.shape[1]                    # (N, 2, 2) Σ_xy
    u, d, vt = torch.linalg.svd(cov)
    s = torch.ones_like(d)
    s[:, 1] = torch.where(torch.linalg.det(u) * torch.linalg.det(vt) < 0, -1.0, 1.0)
    rot = u @ torch.diag_embed(s) @ vt
    scale = (d * s).sum(1) / var_x
    a = scale[:, None, None] * rot
    t = mu_y.transpose(0, 1)[None] - a @ mu_x.transpose(1, 2)       # (N, 2, 1)
    m = torch.cat([a, t], 2)
    return m[0] if single else m


def invert(m: torch.Tensor) -> torch.Tensor:
    """(…, 2, 3) affine maps -> their inverses, same shape."""
    a_inv = torch.linalg.inv(m[..., :2])
    return torch.cat([a_inv, -a_inv @ m[..., 2:]], -1)


def _apply(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(…, 2, 3) maps applied to (…, P, 2) points."""
    return pts @ m[..., :2].transpose(-1, -2) + m[..., None, :, 2]


def _crop_grid(size: int) -> torch.Tensor:
    """(size * size, 2) float64 (u, v) pixel centres of a size × size crop, row-major."""
    r = torch.arange(size, dtype=torch.float64)
    v, u = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], 1)


def align(image: np.ndarray, landmarks: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned crops of the faces of one image. ``image``: (H, W, 3) uint8 RGB; ``landmarks``: (N, 5, 2)
    (x, y) in MTCNN's order (or (5, 2) for one face). Returns crops (N, 3, 112, 112) float32 in [0, 1]
    (zeros where a crop reaches outside the image) and transforms (N, 2, 3) float64, image -> crop."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an (H, W, 3) uint8 array")
    lm = torch.as_tensor(landmarks, dtype=torch.float64)
    if lm.ndim == 2:
        lm = lm[None]
    m = fit_similarity(lm)
    n, (h, w) = m.shape[0], image.shape[:2]
    src = _apply(invert(m), _crop_grid(CROP_SIZE)[None])          # (N, S*S, 2) image (x, y) of crop pixels
    crops = torch.zeros(n, 3, CROP_SIZE, CROP_SIZE)
    if n == 0:
        return crops, m
    # the pixels bilinear sampling can touch: floor(min) .. floor(max) + 1, inside the image
    x0 = min(max(math.floor(float(src[..., 0].min())), 0), w)
    x1 = min(max(math.floor(float(src[..., 0].max())) + 2, 0), w)
    y0 = min(max(math.floor(float(src[..., 1].min())), 0), h)
    y1 = min(max(math.floor(float(src[..., 1].max())) + 2, 0), h)
    if x1 <= x0 or y1 <= y0:
        return crops, m
    region = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1).float().div_(255)
    region = F.pad(region[None], (1, 1, 1, 1))                      # zeros = outside the image, ≥ 3 × 3
    hp, wp = region.shape[-2:]
    gx = (src[..., 0] - x0 + 1) * (2 / (wp - 1)) - 1
    gy = (src[..., 1] - y0 + 1) * (2 / (hp - 1)) - 1
    grid = torch.stack([gx, gy], -1).float().reshape(1, n * CROP_SIZE, CROP_SIZE, 2)
    out = F.grid_sample(region, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    crops = out[0].reshape(3, n, CROP_SIZE, CROP_SIZE).permute(1, 0, 2, 3).contiguous()
    return crops, m


def feather_weight(uv: torch.Tensor, feather: float = FEATHER, size: int = CROP_SIZE) -> torch.Tensor:
    """(…, 2) crop positions -> (…) weight: 0 on and outside the crop border, rising linearly to 1 at
    ``feather`` crop pixels inside (``feather`` = 0: 1 inside the crop, 0 outside)."""
    inset = torch.minimum(torch.minimum(uv[..., 0], uv[..., 1]),
                          torch.minimum(size - 1 - uv[..., 0], size - 1 - uv[..., 1]))
    if feather <= 0:
        return (inset >= 0).to(uv.dtype)
    return (inset / feather).clamp(0, 1)


def paste_back(delta_crop: torch.Tensor, transform: torch.Tensor, height: int, width: int,
               feather: float = FEATHER, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop-space noise back onto the full photo. ``delta_crop``: (N, 3, 112, 112) float in pixel units;
    ``transform``: (N, 2, 3) image -> crop maps from ``align``; ``feather``: crop pixels of the border
    ramp. Returns δ (3, height, width) float32 — the feathered weighted mean of the faces' noise, zero
    away from faces — and the weight (height, width) float32 in [0, 1]. ‖δ‖∞ ≤ max ‖δ_crop‖∞ always
    holds (a violation raises ``RuntimeError``); with ``eps`` given, a ``delta_crop`` over budget or not
    finite raises ``ValueError`` first."""
    delta_crop = delta_crop.detach().float().cpu()
    m = torch.as_tensor(transform, dtype=torch.float64).cpu()
    if m.ndim == 2:
        m = m[None]
    if delta_crop.ndim == 3:
        delta_crop = delta_crop[None]
    n, size = delta_crop.shape[0], delta_crop.shape[-1]
    if delta_crop.shape[1:] != (3, size, size) or m.shape != (n, 2, 3):
        raise ValueError(f"delta_crop (N, 3, S, S) and transform (N, 2, 3) must agree, got "
                         f"{tuple(delta_crop.shape)} and {tuple(m.shape)}")
    worst_in = float(delta_crop.abs().max()) if delta_crop.numel() else 0.0
    if not math.isfinite(worst_in):
        raise ValueError("noise is not finite")
    if eps is not None and worst_in > eps + EPS_TOLERANCE:
        raise ValueError(f"noise exceeds its budget: max |δ| = {worst_in * 255:.3g}/255 > ε = {eps * 255:.3g}/255")
    total = torch.zeros(3, height, width)
    wsum = torch.zeros(height, width)
    corners = torch.tensor([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], dtype=torch.float64)
    for i in range(n):
        box = _apply(invert(m[i]), corners)                         # the crop's preimage corners
        x0, y0 = (max(math.ceil(float(box[:, k].min())), 0) for k in (0, 1))
        x1 = min(math.floor(float(box[:, 0].max())) + 1, width)
        y1 = min(math.floor(float(box[:, 1].max())) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=torch.float64),
                                torch.arange(x0, x1, dtype=torch.float64), indexing="ij")
        uv = _apply(m[i], torch.stack([xs, ys], -1))                # (h, w, 2) crop positions
        grid = (uv * (2 / (size - 1)) - 1).float()[None]
        sampled = F.grid_sample(delta_crop[i:i + 1], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)[0]
        wgt = feather_weight(uv, feather, size).float()
        total[:, y0:y1, x0:x1] += sampled * wgt
        wsum[y0:y1, x0:x1] += wgt
    delta = total / wsum.clamp(min=1)
    worst_out = float(delta.abs().max()) if delta.numel() else 0.0
    if worst_out > worst_in * (1 + 1e-6) + 1e-9:
        raise RuntimeError(f"paste-back broke the budget: {worst_out} > {worst_in}")
    return delta, wsum.clamp(max=1)
