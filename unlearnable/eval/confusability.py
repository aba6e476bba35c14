"""How far the trainer's crop and flip bring one class's noise pattern onto another's.

Class-wise noise works when a victim can tell the classes' patterns apart faster than it learns the
images. The min-min search scores that on un-augmented images (the reference generates without
augmentation), but the victim trains through random crops (4-pixel zero padding) and horizontal
flips, which shift and mirror each pattern. Two patterns that one of those views maps onto each other
are one shortcut for two labels. A periodic pattern (``noise.structure.tile``) is exposed most: a
crop only changes its phase, and a row-only stripe pattern does not change under a flip at all.

    confusability(a, b) = max over views T of  cos(δ_a, T δ_b),

δ centred per channel (a uniform shift of a channel is a brightness or colour cast, not a pattern a
victim can key on), T over every crop shift within the padding, with and without the flip. 1: some
view of b's pattern *is* a's; near 0: no view of it resembles a's. Measured on the class-wise
CIFAR-10 kinds of ``benchmarks/noise_kinds.py`` (README, "What JPEG-10 keeps").
"""
from __future__ import annotations

import torch

from ..data.augment import crop_shift
from ..errors import UnlearnableError


def crop_flip_views(delta: torch.Tensor, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Every view of patterns (K, C, H, W) that a random crop with ``pad`` zero padding (and, with
    ``flip``, a horizontal flip) can give: (K, V, C, H, W), V = (2 if flip else 1) · (2 pad + 1)²;
    view index ``f · (2 pad + 1)² + (dy + pad) · (2 pad + 1) + (dx + pad)``, f = 1 flipped."""
    if delta.dim() != 4:
        raise UnlearnableError(f"patterns must be (K, C, H, W), got {tuple(delta.shape)}")
    return torch.stack([crop_shift(z, dx, dy, pad) for z in ((delta, delta.flip(-1)) if flip else (delta,))
                        for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)], 1)


def confusability(delta: torch.Tensor, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """(K, K) matrix: entry (a, b) is the largest cosine between class a's pattern and any crop / flip
    view of class b's (module doc); the diagonal is 1. ``delta`` (K, C, H, W), one pattern per class."""
    d = delta.float()
    d = d - d.mean(dim=(-2, -1), keepdim=True)
    flat = d.flatten(1)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    views = crop_flip_views(d, pad, flip).flatten(2)
    views = views / views.norm(dim=2, keepdim=True).clamp_min(1e-12)
    cos = torch.einsum("ad,bvd->abv", flat, views).amax(-1)
    return cos.fill_diagonal_(1.0)


def confusability_summary(delta: torch.Tensor, pad: int = 4, flip: bool = True) -> dict:
    """The largest and the mean off-diagonal confusability, and the pair that has the largest."""
    c = confusability(delta, pad, flip)
    k = len(c)
    if k < 2:
        raise UnlearnableError("confusability needs at least two class patterns")
    off = c.masked_fill(torch.eye(k, dtype=torch.bool), float("-inf"))
    i = int(off.argmax())
    return {"max": round(float(off.max()), 4), "mean": round(float(c[~torch.eye(k, dtype=torch.bool)].mean()), 4),
            "max_pair": [i // k, i % k], "pad": pad, "flip": flip}


__all__ = ["confusability", "confusability_summary", "crop_flip_views"]
