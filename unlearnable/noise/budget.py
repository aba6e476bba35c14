"""The L∞ budget as a scraper sees it: protected images are stored as uint8, so the noise
is applied as round(255·(x + δ)) clipped to [0, 255] and to ±⌊255·ε⌋ levels around the
clean pixel, which keeps ‖x_protected − x‖∞ ≤ ε exactly after rounding.

(The reference repository's poisoned-set builder clamps negative noise to 0 and truncates
instead of rounding; that loses half of the noise and is not reproduced here.)
"""
from __future__ import annotations

import math

import torch

from ..errors import UnlearnableError


def epsilon_levels(eps: float) -> int:
    """Largest whole number of uint8 levels inside the budget: ⌊255·ε⌋ (8 for ε = 8/255)."""
    return int(math.floor(255 * eps + 1e-6))


def parse_epsilon(value: float) -> float:
    """CLI convention: a value ≥ 1 is in 1/255 units (8 means 8/255); a value < 1 is already in
    [0, 1] pixel units. Must be > 0."""
    if not value > 0:
        raise UnlearnableError(f"epsilon must be > 0 (got {value}); e.g. 8 for 8/255")
    eps = value / 255 if value >= 1 else value
    if eps > 1:
        raise UnlearnableError(f"epsilon {value} is larger than the pixel range")
    return eps


def apply_noise_uint8(images: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """uint8 (N, C, H, W) clean images + float δ (broadcastable, [0, 1] units) -> uint8 protected
    images, rounded to nearest and clipped to the budget and the pixel range."""
    m = epsilon_levels(eps)
    x = images.to(torch.int16)
    d = torch.round(delta.float() * 255).to(torch.int16).clamp_(-m, m)
    return (x + d).clamp_(0, 255).to(torch.uint8)


def linf_levels(original: torch.Tensor, protected: torch.Tensor) -> int:
    """‖protected − original‖∞ in uint8 levels."""
    if original.shape != protected.shape:
        raise UnlearnableError("original and protected shapes differ")
    if original.numel() == 0:
        return 0
    return int((protected.to(torch.int16) - original.to(torch.int16)).abs().max())
