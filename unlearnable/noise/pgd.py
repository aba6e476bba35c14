"""Projected gradient descent in an L-infinity ball (Madry et al., arXiv 1706.06083), the one
inner solver shared by error-minimising noise (minimise the loss, arXiv 2101.04898 Eq. 2)
and adversarial attacks / adversarial training (maximise it).

Calling convention follows torchattacks: ``PGD(model, eps=8/255, alpha=2/255, steps=10)``,
``adv = atk(images, labels)``; images float (B, C, H, W) in [0, 1]; ε and α in [0, 1] pixel
units; the device is the model's.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from ..errors import UnlearnableError


def project(delta: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``delta`` onto {‖δ‖∞ ≤ eps} ∩ {0 ≤ images + δ ≤ 1}."""
    delta = delta.clamp(-eps, eps)
    return (images + delta).clamp_(0, 1) - images


class PGD:
    """L∞ PGD: ``steps`` signed-gradient steps of size ``alpha``, each followed by projection.

    ``minimize=True`` descends the loss (error-minimising noise, the min-min inner problem);
    ``minimize=False`` ascends it (adversarial examples). The model is run in eval mode
    (BatchNorm statistics frozen, as in both reference codes) and restored afterwards;
    only the input gradient is computed, never the weights'. ``amp=True`` runs the forward
    under bf16 autocast on CUDA (attacks, adversarial training); ``amp=False`` keeps it fp32,
    as the noise search needs: near 1 a bf16 input's spacing (2⁻⁸) exceeds a 0.8/255 step.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = False, minimize: bool = False,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 generator: torch.Generator | None = None, amp: bool = True) -> None:
        if eps <= 0:
            raise UnlearnableError(f"epsilon must be > 0, got {eps}")
        if alpha <= 0 or steps < 1:
            raise UnlearnableError("PGD needs a positive step size and at least one step")
        self.model, self.eps, self.alpha, self.steps = model, eps, alpha, steps
        self.random_start, self.minimize, self.loss_fn, self.generator = random_start, minimize, loss_fn, generator
        self.amp = amp

    def perturb(self, images: torch.Tensor, labels: torch.Tensor,
                delta: torch.Tensor | None = None) -> torch.Tensor:
        """Return the optimised δ (same shape as ``images``), starting from ``delta`` if given,
        else from uniform noise in the ball (``random_start``) or zero."""
        images = images.detach()
        if delta is None:
            if self.random_start:
                u = torch.rand(images.shape, generator=self.generator).to(images.device)
                delta = (u * 2 - 1) * self.eps
            else:
                delta = torch.zeros_like(images)
        delta = project(delta.detach().to(images.device, images.dtype), images, self.eps)
        direction = -1.0 if self.minimize else 1.0
        was_training = self.model.training
        self.model.eval()
        try:
            for _ in range(self.steps):
                delta.requires_grad_(True)
                with autocast(images.device) if self.amp else nullcontext():
                    logits = self.model(images + delta)
                loss = self.loss_fn(logits.float(), labels)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = project(delta.detach() + direction * self.alpha * grad.sign(), images, self.eps)
        finally:
            self.model.train(was_training)
        return delta.detach()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Perturbed images x + δ in [0, 1] (torchattacks convention)."""
        return (images + self.perturb(images, labels)).clamp(0, 1)
