"""The attack interface and the L∞ ball every attack here works in.

Calling convention as torchattacks: ``atk = Attack(model, eps=8/255, alpha=2/255, steps=10)``,
``adv = atk(images, labels)``; images float (B, C, H, W) in [0, 1]; ε and α in [0, 1] pixel
units; the device is the model's. ``perturb`` returns the perturbation δ instead, which is what
error-minimising noise stores.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnlearnableError


def project(delta: torch.Tensor, images: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Project ``delta`` onto {‖δ‖∞ ≤ eps} ∩ {0 ≤ images + δ ≤ 1}; with ``images=None`` onto the
    ball alone (a pattern shared by several images, each clipped to the pixel range when applied)."""
    delta = delta.clamp(-eps, eps)
    if images is None:
        return delta
    return (images + delta).clamp_(0, 1) - images


class Attack:
    """Base of the attacks: holds the model and the L∞ budget, and maps ``perturb`` to
    ``__call__`` (perturbed images x + δ in [0, 1])."""

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10) -> None:
        if not eps > 0:
            raise UnlearnableError(f"epsilon must be > 0, got {eps}")
        if not alpha > 0 or steps < 1:
            raise UnlearnableError("an attack needs a positive step size and at least one step")
        self.model, self.eps, self.alpha, self.steps = model, eps, alpha, steps

    def perturb(self, images: torch.Tensor, labels: torch.Tensor,
                delta: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (images + self.perturb(images, labels)).clamp(0, 1)
