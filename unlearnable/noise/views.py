"""What a scraper does to a photo before training on it, as batched tensor ops.

- ``scraper_view``: the differentiable model of it used inside the noise search (Expectation over
  Transformation, Athalye et al. 2018, arXiv 1707.07397): downscale to training size with a box
  filter, a random resized crop (scale and aspect jitter, shift) and horizontal flip done with one
  ``affine_grid``/``grid_sample``, then a simulated JPEG re-encode at a random quality. Minimising
  the loss over random views makes the noise survive the real pipeline rather than one fixed view.
  ``white_balance`` (off in ``ViewConfig()``) white-balances a share of the views first by gray
  world (``data.augment.gray_world``, the ``grayworld`` defense): noise searched through them cannot
  rest on a class-wide colour cast, which a scraper's automatic white balance takes out (measured on
  the photo search, README "What the photo noise is").
- ``PHOTO_VIEW``: the whole-photo search's views, every one white-balanced (``protect``'s default).
- ``FACE_VIEW``: the same view with the mild jitter of a face scraper's re-alignment, white-balanced too.
- ``scraper_pipeline``: the non-differentiable pipeline that verification applies to whole photo
  files: squash-resize with antialiasing to training size, then a real JPEG re-encode (Pillow).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.augment import gray_world
from ..data.jpeg import jpeg


@dataclass
class ViewConfig:
    """Random scraper view of a (B, C, S, S) work-resolution batch, returned at ``out_size``."""

    out_size: int = 32
    min_scale: float = 0.6        # crop side relative to the image, per axis: [min_scale, 1]
    max_aspect: float = 4 / 3     # aspect jitter of the crop: [1/max_aspect, max_aspect]
    flip: bool = True
    jpeg_prob: float = 0.5        # share of views re-encoded as JPEG
    jpeg_quality: tuple[int, int] = (50, 95)
    white_balance: float = 0.0    # share of views gray-world white-balanced first (0: off, no random draw)


# The whole-photo search's views (``PhotoProtectConfig``'s default since 2026-11-30): every view
# white-balanced first, so the noise cannot be a class-wide colour cast. Measured on the verify-photos
# benchmark (2-core CPU; held-out clean photos recognised by the victim trained on the protected ones),
# pretrained start, against the views without it: automobile 53 → 36 %, 55 → 22 %, 52 → 38 % (seeds
# 0-2), ship 50 → 32 % and 67 → 43 % (seeds 0-1), horse 23 → 24 % and 33 → 30 %; with a white-balancing
# victim (``grayworld``) automobile 47 → 34 % and 48 → 22 %; on the 7 samples/ photos PSNR 36.6 → 37.7
# dB, SSIM 0.970 → 0.971, blotch 2.35 → 2.29, but on 20 upscaled 12 MP photos SSIM 0.970 → 0.960. With
# the fresh start (the default since, ``PhotoProtectConfig.surrogate_start``) through these views: 12, 14
# and 7 %, 14 and 29 %, 14 and 11 % on the same photos, at a visible price on the samples (README "The
# default now"). Without the white balance the fresh start's noise was mostly a cast.
PHOTO_VIEW = ViewConfig(white_balance=1.0)

# A face scraper re-detects and re-aligns every face to the same template, so the crop it trains on is
# the aligned crop up to detector jitter, rescaling and JPEG: a *mild* random resized crop (side 85-100 %,
# aspect within 10 %), flip, JPEG 50-95 on half of the views (out_size is set to the surrogate's input);
# every view white-balanced first since 2026-11-30: measured (benchmarks/faces.py --config cpu, seeds 0-4,
# protected people's held-out photos recognised) standard victims 1.25 / 7.5 / 2.5 / 2.5 / 5 % (mean 3.75)
# against 8.75 / 3.75 / 3.75 / 3.75 / 3.75 % (mean 4.75) without it, grayworld victims 12.5 / 12.5 / 1.25 /
# 5 / 6.25 % (mean 7.5) against 22.5 / 2.5 / 16.25 / 8.75 / 7.5 % (mean 11.5); README "Faces".
FACE_VIEW = ViewConfig(out_size=32, min_scale=0.85, max_aspect=1.1, flip=True, jpeg_prob=0.5, jpeg_quality=(50, 95),
                       white_balance=1.0)


def scraper_view(z: torch.Tensor, cfg: ViewConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """z (B, C, S, S) float in [0, 1] -> random views (B, C, out, out) in [0, 1], differentiable in z."""
    b = z.shape[0]
    factor = z.shape[-1] // cfg.out_size
    if factor > 1:  # antialiasing: box-filter down to training size before resampling
        z = F.avg_pool2d(z, factor)
    dev = z.device
    if cfg.white_balance > 0:   # the scraper's white balance of the stored image, before its crop
        use = (torch.rand(b, generator=generator) < cfg.white_balance).to(dev)
        z = torch.where(use[:, None, None, None], gray_world(z), z)

    def u(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=generator)).to(dev)

    side = u(cfg.min_scale, 1.0)
    log_ar = u(-float(np.log(cfg.max_aspect)), float(np.log(cfg.max_aspect)))
    sx = (side * torch.exp(log_ar / 2)).clamp(max=1.0)
    sy = (side * torch.exp(-log_ar / 2)).clamp(max=1.0)
    tx = (u(-1.0, 1.0)) * (1 - sx)
    ty = (u(-1.0, 1.0)) * (1 - sy)
    flip = torch.where(u(0.0, 1.0) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [b, z.shape[1], cfg.out_size, cfg.out_size], align_corners=False)
    v = F.grid_sample(z, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.jpeg_prob > 0:
        lo, hi = cfg.jpeg_quality
        q = torch.randint(lo, hi + 1, (b,), generator=generator).to(dev)
        use = (torch.rand(b, generator=generator) < cfg.jpeg_prob).to(dev)
        if bool(use.any()):
            compressed = jpeg(v.clamp(0, 1), q.float(), differentiable=True)
            v = torch.where(use[:, None, None, None], compressed, v)
    return v.clamp(0, 1)


def scraper_pipeline(rgb: np.ndarray, size: int = 32, jpeg_quality: int | None = 75) -> np.ndarray:
    """A scraper's preprocessing of one photo: (H, W, 3) uint8 -> (size, size, 3) uint8, squashed with
    Pillow's antialiased bicubic resize, then re-encoded as JPEG at ``jpeg_quality`` (None: no JPEG)."""
    im = Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if jpeg_quality is not None:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=jpeg_quality)
        buf.seek(0)
        im = Image.open(buf).convert("RGB")
    return np.asarray(im)
