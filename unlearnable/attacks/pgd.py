"""Projected gradient descent in an L∞ ball (Madry et al., arXiv 1706.06083), the one inner
solver shared by error-minimising noise (minimise the loss, arXiv 2101.04898 Eq. 2) and
adversarial attacks / adversarial training (maximise it).

``transform`` makes it expectation-over-transformation PGD (Athalye et al., arXiv 1707.07397;
torchattacks' EOTPGD with one draw per step): every step's gradient is taken through a fresh
random transformation of x + δ (the scraper view of a photo), so δ works on what a scraper's
training sees, not on one fixed image.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from ..errors import UnlearnableError
from .base import Attack, project

__all__ = ["PGD", "project"]


class PGD(Attack):
    """L∞ PGD: ``steps`` signed-gradient steps of size ``alpha``, each followed by projection.

    ``minimize=True`` descends the loss (error-minimising noise, the min-min inner problem);
    ``minimize=False`` ascends it (adversarial examples). The model is run in eval mode
    (BatchNorm statistics frozen, as in both reference codes) and restored afterwards;
    only the input gradient is computed, never the weights'. ``amp=True`` runs the forward
    under bf16 autocast on CUDA (attacks, adversarial training); ``amp=False`` keeps it fp32,
    as the noise search needs: near 1 a bf16 input's spacing (2⁻⁸) exceeds a 0.8/255 step.
    ``clip_images=False`` projects onto the ε-ball only (a class-wise pattern shared by images:
    the pixel range is then enforced by ``transform`` or when the pattern is applied).
    ``penalty`` (None: off, no extra op) is a term every step drives *down*, whichever way it moves
    the loss: ``penalty(forward, images, delta, logits, labels)`` -> scalar, with ``forward(z)`` the
    model's float logits under this attack's precision and ``logits`` those of x + δ (e.g. the
    interaction penalty of ``unlearnable.attacks.interaction``); it needs the identity view.
    ``grad_projection`` (None: off) is a linear projection P applied to the gradient before its sign:
    sign(P∇) is the L∞-steepest step *within* P's subspace, so a δ in that subspace stays there with a
    full step of ``alpha`` (``unlearnable.noise.structure``; the signed step of the raw gradient,
    projected afterwards, would shrink to the block mean of random signs).
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = False, minimize: bool = False,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 generator: torch.Generator | None = None, amp: bool = True,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, clip_images: bool = True,
                 penalty: Callable[..., torch.Tensor] | None = None,
                 grad_projection: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__(model, eps, alpha, steps)
        self.grad_projection = grad_projection
        self.random_start, self.minimize, self.loss_fn, self.generator = random_start, minimize, loss_fn, generator
        self.amp, self.transform, self.clip_images, self.penalty = amp, transform, clip_images, penalty

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The model's float logits (B, K) on ``z`` under this attack's precision (``amp``)."""
        with autocast(z.device) if self.amp else nullcontext():
            return self.model(z).float()

    def project(self, delta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """δ onto this attack's feasible set (see ``clip_images``)."""
        return project(delta, images if self.clip_images else None, self.eps)

    def step(self, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """One signed-gradient step from a feasible ``delta``, projected; the model's mode is the caller's."""
        delta = delta.detach().requires_grad_(True)
        z = images + delta
        if self.transform is not None:
            z = self.transform(z)
        with autocast(images.device) if self.amp else nullcontext():
            logits = self.model(z)
        loss = self.loss_fn(logits.float(), labels)
        if self.penalty is not None:
            if self.transform is not None:
                raise UnlearnableError("the attack's penalty is defined on the model's own input (no transform)")
            pen = self.penalty(self.logits, images, delta, logits.float(), labels)
            loss = loss + pen if self.minimize else loss - pen
        (grad,) = torch.autograd.grad(loss, delta)
        direction = -1.0 if self.minimize else 1.0
        return self.project(delta.detach() + direction * self.alpha * self.signed(grad), images)

    def signed(self, grad: torch.Tensor) -> torch.Tensor:
        """The step's direction: sign(P∇) with ``grad_projection`` P, else sign(∇)."""
        return (grad if self.grad_projection is None else self.grad_projection(grad)).sign()

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
        delta = self.project(delta.detach().to(images.device, images.dtype), images)
        was_training = self.model.training
        self.model.eval()
        try:
            for _ in range(self.steps):
                delta = self.step(images, labels, delta)
        finally:
            self.model.train(was_training)
        return delta.detach()
