"""Batched on-device augmentation (airbench style): no per-sample Python, no PIL. The training
augmentations (random crop + flip) and the data-side defenses against unlearnable examples.

All functions take float images (B, C, H, W) in [0, 1] on any device (and labels where they mix
them); random draws come from a CPU ``torch.Generator`` so runs are reproducible whatever the device.

Data-side defenses:
- ``grayscale``: ITU-R BT.601 luma replicated to C channels (colour noise loses most of its
  energy; "Image shortcut squeezing", Liu et al. 2023, arXiv 2301.13838).
- JPEG compression (quality 10 in that paper): ``unlearnable.data.jpeg.jpeg``.
- ``gray_world``: the gray-world white balance (Buchsbaum, J. Franklin Inst. 310(1), 1980): each
  channel shifted so that its image mean equals the mean over channels, which removes a uniform
  colour cast exactly (its brightness part stays). The trainer's answer to noise that is, in the main,
  a class-wide tint (measured on the photo search, README); an additive shift rather than the usual
  gain (von Kries) because an additive tint is what it undoes.
- ``cutout`` (DeVries & Taylor 2017, arXiv 1708.04552): one zeroed square per image, its centre
  uniform over the image (so it may be clipped at the border), side 16 px on CIFAR.
- ``mixup`` (Zhang et al. 2018, arXiv 1710.09412): x̃ = λ x_i + (1 − λ) x_j, λ ~ Beta(α, α), α = 1.
- ``cutmix`` (Yun et al. 2019, arXiv 1905.04899): a box of area 1 − λ pasted from x_j,
  λ ~ Beta(α, α), α = 1, then λ recomputed from the clipped box.

``mixup`` and ``cutmix`` return (x̃, y_i, y_j, λ); train with ``mixed_cross_entropy``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 in [0, 1] on the same device."""
    return images.float().div_(255.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8 in [0, 255], rounded to the nearest level (values outside clamped): the inverse
    of :func:`to_float` up to rounding, what writing and decoding an 8-bit image gives."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of the zero-padded batch back to (H, W): the standard CIFAR 'RandomCrop(32, 4)',
    one offset per image, done with one gather."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def crop_shift(x: torch.Tensor, dx: int, dy: int, padding: int = 4) -> torch.Tensor:
    """The crop of :func:`random_crop` at one fixed offset: x (..., H, W) zero-padded by ``padding``
    and moved by (dx, dy), |dx|, |dy| <= padding (dx = dy = 0: x itself)."""
    h, w = x.shape[-2:]
    return F.pad(x, (padding,) * 4)[..., padding + dy:padding + dy + h, padding + dx:padding + dx + w]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Horizontal flip of a random half of the batch."""
    mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomCrop(pad=``padding``) then RandomHorizontalFlip, batched."""
    return random_flip(random_crop(x, padding, generator), generator)


LUMA = (0.299, 0.587, 0.114)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W) with every channel the luma; 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x).contiguous()


def gray_world(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): every channel shifted by (mean over channels − its own mean), image
    by image, clamped to [0, 1]; so x + c (a tint c constant over the image, no pixel clipped) gives
    the result of x plus the tint's mean over channels. 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    m = x.mean((2, 3), keepdim=True)                                   # (B, C, 1, 1)
    return (x + m.mean(1, keepdim=True) - m).clamp(0, 1)


def cutout(x: torch.Tensor, size: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one size × size square per image (centre uniform in the image, clipped at borders)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (b,), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_y = (rows >= (cy - size // 2)[:, None]) & (rows < (cy - size // 2 + size)[:, None])   # (B, H)
    in_x = (cols >= (cx - size // 2)[:, None]) & (cols < (cx - size // 2 + size)[:, None])   # (B, W)
    hole = (in_y[:, :, None] & in_x[:, None, :])[:, None]                                      # (B, 1, H, W)
    return x.masked_fill(hole, 0.0)


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """λ ~ Beta(α, α), seeded from ``generator`` without touching the global RNG."""
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(torch.distributions.Beta(alpha, alpha).sample())


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One λ per batch, partners by a random permutation: (λ x + (1 − λ) x[perm], y, y[perm], λ)."""
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Paste one random box (same for the batch) from x[perm]; λ = 1 − box area / image area."""
    b, _, h, w = x.shape
    lam = _beta(alpha, generator)
    perm = torch.randperm(b, generator=generator).to(x.device)
    cut = (1 - lam) ** 0.5
    bh, bw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return out, y, y[perm], lam


def mixed_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """λ CE(logits, y_a) + (1 − λ) CE(logits, y_b), the loss of mixup and cutmix."""
    return lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
