"""Batched on-device augmentation (airbench style): no per-sample Python, no PIL.

All functions take float images (B, C, H, W) in [0, 1] on any device; random draws come
from a CPU ``torch.Generator`` so runs are reproducible whatever the device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 in [0, 1] on the same device."""
    return images.float().div_(255.0)


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


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Horizontal flip of a random half of the batch."""
    mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomCrop(pad=``padding``) then RandomHorizontalFlip, batched."""
    return random_flip(random_crop(x, padding, generator), generator)
