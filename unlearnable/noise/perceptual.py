"""A perceptual budget on top of the hard ε for photos: less noise where the eye would see it.

Class-wise photo noise is a 64 × 64 pattern stretched over the whole photo, so on flat areas (sky,
walls, skin) it shows as smooth pink and green blotches. This module shapes the noise with a
just-noticeable-difference (JND) mask computed from the clean photo, and makes it luma-heavy:

    n(p) = m(p) · [ c · δ(p) + (1 − c) · Y(δ(p)) · (1, 1, 1) ]                            (1)

with Y(v) = 0.299 v_R + 0.587 v_G + 0.114 v_B (ITU-R BT.601 luma weights), the chroma factor
c = ``CHROMA`` and the mask m(p) = min(1, JND(p) / (255 ε)) ∈ [0, 1]. The luma of n is m · Y(δ);
its chroma (n minus its luma on every channel) is m · c times δ's. Each channel of the bracket is a
convex combination of δ_R, δ_G, δ_B (weights c + (1 − c) w_k and (1 − c) w_j, all ≥ 0, summing
to 1), so ‖n‖∞ ≤ ‖δ‖∞ ≤ ε at every pixel: the hard budget is never exceeded, only shrunk to the JND
where that is below ε (asserted by the tests, also on the rounded written file).

**JND model**: Chou & Li, "A perceptually tuned subband image coder based on the measure of
just-noticeable-distortion profile", IEEE TCSVT 5(6), 1995, Eq. 1-4 (the pixel-domain profile that
Yang et al., IEEE TCSVT 15(6) 2005, build their NAMM on). On the luma Y in 8-bit levels:

- background luminance bg = Y ⋆ B / 32, B the 5 × 5 weighted mean with a zero centre;
- max gradient mg = max_k |Y ⋆ G_k| / 16 over the four 5 × 5 directional operators G_1..G_4;
- luminance adaptation f2(bg) = T0 (1 − √(bg / 127)) + 3 for bg ≤ 127, γ (bg − 127) + 3 above,
  T0 = 17, γ = 3 / 128 (levels; the eye sees least at mid-grey, 3 levels there, 20 at black);
- texture (spatial) masking f1(bg, mg) = mg · α(bg) + β(bg), α = 0.0001 bg + 0.115,
  β = λ − 0.01 bg, λ = 1/2;
- JND = max(f1, f2).

Deviations, named:
1. *Scale*: the profile is computed on the photo squashed to ``MASK_SIZE`` × ``MASK_SIZE``
   (256, four times the default work size; the preview the search reads, ``read_preview``) and
   upsampled bilinearly to full size, not on every full-size pixel. The noise is a 64 × 64 pattern:
   on a 12-megapixel photo its structure spans tens of pixels, and masking is strongest from
   texture in the masked signal's own frequency band (Legge & Foley, JOSA 70(12), 1980), which a
   256-pixel squash resolves; it also makes the mask the same in the search (phase 2, from the
   preview) and on the written photo (phase 3, from the full decode squashed the same way): equal
   for PNG and other formats Pillow does not decode at reduced scale; for a large JPEG the reduced-
   scale decode of the preview differs a little (measured on ``samples/retina.jpg``: 0.6 levels on
   average, mask difference 0.0015 on average). Near a strong edge the mask leaks about one mask
   pixel (size / 256 full-size pixels) into a flat neighbour.
2. *No edge suppression*: Yang et al.'s NAMM lowers texture masking on edges found by Canny and
   sums the two terms with an overlap factor 0.3; here Chou & Li's max(f1, f2) is kept as is
   (batched convolutions only, no edge detector).
3. *Chroma*: Chou & Li model luminance only. Chroma gets the luma mask times ``CHROMA``: the
   blotches seen on photos are chroma at low spatial frequency, where the eye's chromatic contrast
   sensitivity is highest (its CSF is low-pass, Mullen, J. Physiol. 359, 1985) and where flat
   regions offer no masking. Luma-heavy noise also keeps its energy under a grayscale conversion (a
   squeezing defense, Liu et al. 2023, arXiv 2301.13838), at the price of the chroma degrees of
   freedom. 0.25 is a design choice, not a fitted constant. A share of 1 (the JND mask alone) and a
   share per pixel that follows the photo's texture (none on flat areas) were measured too, at
   792fd89 and removed since: neither keeps the protection (README, "What less visible noise costs").
4. *Budget, not threshold*: m caps the noise at min(ε, JND) per pixel (ε stays the hard bound);
   where the JND exceeds ε (dark areas, strong texture) the noise keeps its full ε.

**In the search**: the mask enters the min-min search (``PerceptualProblem``), so the noise is
optimised for what will be written: every surrogate step, PGD step and stop test sees
x + n(δ) (Eq. 1 with the photo's mask averaged down to the work size) through the scraper view.
Where m is small the gradient is small but sign steps still move δ; only n(δ) is ever applied.

**Measured** (``benchmarks/perceptual.py``, 2-core x86_64 CPU shared with other jobs, one torch thread,
ε = 8/255, JSON in ``benchmarks/results/perceptual-*``): on the seven ``samples/`` photos (protect
defaults of that day: pretrained start, plain views) the written files' blotch figure
(``unlearnable.eval.blotch``) falls from 2.32 to 0.24 levels (luma 2.61 to 2.38), PSNR rises from 36.6
to 40.1 dB, SSIM from 0.969 to 0.974, the search converges alike (9 rounds). But on the verify-photos
setup (400 CIFAR-10 automobiles at 256 px, ResNet-18/4, 20 epochs) the protection is gone: the
held-out clean photos are recognised 67 % by the victim trained on the perceptually protected photos
against 69 % unprotected (written SSIM 0.980); with the defaults since 2026-11-30 (fresh start,
white-balanced views) 74 % against 81 % (12 % without the budget;
``benchmarks/results/photo-visibility-frontier.json``). That is why ``protect --perceptual`` is off by default.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.datasets import ImageTensors
from ..data.photos.decode import read_preview, to_rgb8
from ..data.photos.photo import PhotoError
from ..models import add_classes
from .minmin import MinMinConfig, RoundLog, minmin
from .problems import ReferenceBankProblem
from .upsample import bilinear_matrix
from .views import ViewConfig, scraper_view

MASK_SIZE = 256      # side of the squashed photo the JND profile is computed on (deviation 1)
CHROMA = 0.25        # chroma share of the noise relative to its luma (deviation 3)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights
MODEL = "chou-li-1995"

# Chou & Li 1995: background-luminance weights (sum 32) and the four directional gradient operators (/16).
_BG = ((1, 1, 1, 1, 1), (1, 2, 2, 2, 1), (1, 2, 0, 2, 1), (1, 2, 2, 2, 1), (1, 1, 1, 1, 1))
_GRAD = (((0, 0, 0, 0, 0), (1, 3, 8, 3, 1), (0, 0, 0, 0, 0), (-1, -3, -8, -3, -1), (0, 0, 0, 0, 0)),
         ((0, 0, 1, 0, 0), (0, 8, 3, 0, 0), (1, 3, 0, -3, -1), (0, 0, -3, -8, 0), (0, 0, -1, 0, 0)),
         ((0, 0, 1, 0, 0), (0, 0, 3, 8, 0), (-1, -3, 0, 3, 1), (0, -8, -3, 0, 0), (0, 0, -1, 0, 0)),
         ((0, 1, 0, -1, 0), (0, 3, 0, -3, 0), (0, 8, 0, -8, 0), (0, 3, 0, -3, 0), (0, 1, 0, -1, 0)))
T0, GAMMA, LAMBDA = 17.0, 3 / 128, 0.5


def settings() -> dict:
    """The perceptual budget's constants (recorded in a protect run's settings when it is on)."""
    return {"model": MODEL, "mask_size": MASK_SIZE, "chroma": CHROMA}


def jnd_levels(rgb: torch.Tensor) -> torch.Tensor:
    """Chou & Li's JND profile: rgb (B, 3, H, W) float in [0, 1] -> (B, 1, H, W) visibility threshold
    of a luminance change in 8-bit levels (≥ 3 everywhere; borders replicated)."""
    w = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device)
    y = torch.einsum("bchw,c->bhw", rgb, w)[:, None] * 255.0
    yp = F.pad(y, (2, 2, 2, 2), mode="replicate")
    bg = F.conv2d(yp, torch.tensor(_BG, dtype=y.dtype, device=y.device)[None, None] / 32)
    mg = F.conv2d(yp, torch.tensor(_GRAD, dtype=y.dtype, device=y.device)[:, None] / 16).abs().amax(1, keepdim=True)
    f1 = mg * (0.0001 * bg + 0.115) + (LAMBDA - 0.01 * bg)
    f2 = torch.where(bg <= 127, T0 * (1 - torch.sqrt(bg.clamp(min=0) / 127)) + 3, GAMMA * (bg - 127) + 3)
    return torch.maximum(f1, f2)


def jnd_mask(rgb: torch.Tensor, eps: float) -> torch.Tensor:
    """m = min(1, JND / (255 ε)): rgb (B, 3, H, W) float in [0, 1], ε in [0, 1] pixel units ->
    (B, 1, H, W) float in (0, 1], the share of ε each pixel may carry."""
    return (jnd_levels(rgb) / (255.0 * eps)).clamp_(max=1.0)


def shape_noise(delta: torch.Tensor, mask: torch.Tensor, chroma: float = CHROMA) -> torch.Tensor:
    """Eq. (1): δ (..., 3, H, W) and mask (..., 1, H, W) in [0, 1] -> m · (c δ + (1 − c) Y(δ)),
    same shape as δ, with |result| ≤ max over channels |δ| at every pixel. Linear in δ (differentiable)."""
    w = torch.tensor(LUMA, dtype=delta.dtype, device=delta.device).view(3, 1, 1)
    y = (delta * w).sum(-3, keepdim=True)
    return mask * (chroma * delta + (1 - chroma) * y)


def squash(pixels: np.ndarray, size: int = MASK_SIZE) -> torch.Tensor:
    """A decoded photo ((H, W, 1|3) uint8/uint16) squashed to (3, size, size) float in [0, 1] the way
    ``read_preview`` squashes it after decoding (8-bit RGB, Pillow Lanczos, reducing gap 3)."""
    im = Image.fromarray(np.ascontiguousarray(to_rgb8(pixels)))
    small = np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0))
    return torch.from_numpy(small.copy()).permute(2, 0, 1).float().div_(255.0)


def preview_masks(paths: Sequence[str | os.PathLike], work_size: int, eps: float,
                  max_pixels: int = 150_000_000) -> torch.Tensor:
    """The search's masks of the photos at ``paths``: each read as a ``MASK_SIZE`` preview, its JND
    mask averaged down to ``work_size`` -> (N, 1, work_size, work_size) float in (0, 1]. A photo that
    cannot be read now gets a mask of ones (it is reported when its output is written)."""
    masks = []
    for path in paths:
        try:
            arr = read_preview(path, MASK_SIZE, max_pixels)
        except PhotoError:
            masks.append(torch.ones(1, 1, work_size, work_size))
            continue
        rgb = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div_(255.0)
        masks.append(F.adaptive_avg_pool2d(jnd_mask(rgb, eps), work_size))
    return torch.cat(masks) if masks else torch.zeros(0, 1, work_size, work_size)


def noise_shaper(pixels: np.ndarray, eps: float, chroma: float = CHROMA,
                 size: int = MASK_SIZE) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """For ``apply_noise(..., shape=)``: Eq. (1) on full-size noise strips of the photo ``pixels``
    ((H, W, C) uint8/uint16). The returned function maps a strip (rows, W, C) of upsampled noise in
    levels, rows [r0, r1), to the shaped strip, clamped to ±ε · max level (float rounding only: the
    shaping never grows the noise). The JND mask is computed on the photo squashed to ``size``
    and upsampled bilinearly (a convex combination, so it stays in [0, 1]); grayscale photos
    (C = 1) get m times their (gray) noise."""
    h, w = pixels.shape[:2]
    bound = eps * float(np.iinfo(pixels.dtype).max)
    m = jnd_mask(squash(pixels, size)[None], eps)[0, 0]                     # (size, size)
    a_h = bilinear_matrix(h, size)
    right = m @ bilinear_matrix(w, size).t()                                 # (size, W)
    lw = torch.tensor(LUMA, dtype=torch.float32)

    def shape(noise: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        mm = (a_h[r0:r1] @ right)[..., None]                                 # (rows, W, 1)
        if noise.shape[-1] == 1:
            out = mm * noise
        else:
            out = mm * (chroma * noise + (1 - chroma) * (noise @ lw)[..., None])
        return out.clamp_(-bound, bound)

    return shape


class PerceptualProblem(ReferenceBankProblem):
    """The photo problem (``noise.problems.ReferenceBankProblem``) with the perceptual budget inside
    the search: every view of a photo is x + n(δ) (Eq. 1) with that photo's ``masks`` ((N, 1, S, S)
    in [0, 1], S the work size), so the surrogate steps, PGD steps and stop test see the noise as it
    will be written. PGD's transform receives x + δ; the engine asks ``clean(idx)`` for a batch and
    then ``view(gen)`` for its transform (``minmin._search``), so the view built next takes the
    masks of the batch ``clean`` last returned (a view without a preceding ``clean`` raises)."""

    def __init__(self, photos: torch.Tensor, labels: torch.Tensor, num_photo_classes: int,
                 reference: ImageTensors, device: torch.device, view: ViewConfig | None = None,
                 reference_batch: int = 64, photo_batch: int = 32, *, masks: torch.Tensor,
                 chroma: float = CHROMA) -> None:
        super().__init__(photos, labels, num_photo_classes, reference, device, view, reference_batch, photo_batch)
        n, _, s, t = self.x.shape
        if tuple(masks.shape) != (n, 1, s, t):
            raise ValueError(f"masks must be (N, 1, H, W) = {(n, 1, s, t)}, got {tuple(masks.shape)}")
        if masks.numel() and not (float(masks.min()) >= 0 and float(masks.max()) <= 1):
            raise ValueError("masks must lie in [0, 1]")
        self.masks = masks.to(device).float()
        self.chroma = chroma
        self._batch: torch.Tensor | None = None

    def fingerprint(self, h) -> None:
        super().fingerprint(h)
        h.update(f"perceptual {self.chroma}".encode())
        h.update(self.masks.cpu().numpy().tobytes())

    def _seen(self, idx: torch.Tensor, d: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return super()._seen(idx, shape_noise(d, self.masks[idx], self.chroma), gen)

    def clean(self, idx: torch.Tensor) -> torch.Tensor:
        self._batch = idx
        return self.x[idx]

    def view(self, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._batch is None:
            raise RuntimeError("PerceptualProblem.view needs the batch: call clean(idx) first")
        idx, self._batch = self._batch, None
        x, m, cfg, c = self.x[idx], self.masks[idx], self.viewcfg, self.chroma
        return lambda z: scraper_view((x + shape_noise(z - x, m, c)).clamp(0, 1), cfg, gen)


def perceptual_photo_noise(photos: torch.Tensor, labels: torch.Tensor, num_photo_classes: int,
                           surrogate: nn.Module, reference: ImageTensors, config: MinMinConfig | None = None,
                           on_round: Callable[[RoundLog], None] | None = None,
                           on_progress: Callable[[str, int, int], None] | None = None,
                           view: ViewConfig | None = None, reference_batch: int = 64, photo_batch: int = 32,
                           *, masks: torch.Tensor, chroma: float = CHROMA) -> tuple[torch.Tensor, list[RoundLog]]:
    """``noise.problems.photo_noise`` with the perceptual budget in the search (``PerceptualProblem``;
    ``masks`` (N, 1, S, S) in [0, 1], e.g. from ``preview_masks``). Returns δ (float32 CPU, in [-ε, ε],
    class-wise (K, 3, S, S) or sample-wise (N, 3, S, S)), *before* shaping: what is written is
    n(δ) (``noise_shaper``), and the round log."""
    cfg = config or MinMinConfig.for_photos()
    device = next(surrogate.parameters()).device
    model = add_classes(surrogate, num_photo_classes).train()
    problem = PerceptualProblem(photos, labels, num_photo_classes, reference, device, view, reference_batch,
                                photo_batch, masks=masks, chroma=chroma)
    res = minmin(model, problem, cfg, on_round=on_round, on_progress=on_progress)
    return res.delta, res.history
