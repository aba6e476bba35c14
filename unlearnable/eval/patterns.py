"""Class-wise predictive patterns (Zhao et al. 2021, "What Do Deep Nets Learn? Class-wise
Patterns Revealed in the Input Space", arXiv 2101.06898): what a trained model takes as the
evidence for each class, found in pixel space.

For target class t, a *canvas* image x_t of class t and a mask m ∈ [0, 1]^{H×W} (shared by the
channels) are combined with images x of the other classes,

    x' = m ⊙ x_t + (1 − m) ⊙ x,
    min_m  α CE(f(x'), t) + (1 − α) ‖m‖₁ / (H W / 2),

so m keeps the fewest canvas pixels that still make f say t. As in the authors' code: m starts
at 0.5, signed-gradient steps of 0.02 clipped to [0, 1], α = 0.2, batches of 4 other-class
images, 5 passes over the search images; the pattern is the canvas's pixels at the top-k mask
values (k = 50 of 1024 on CIFAR), shown on white. Its *predictive power* is the share of
other-class images classified as t once those k pixels are replaced by the pattern.

Here all K classes are searched at once (one batched forward per step). For a model trained on
protected data the canvas may be a protected training image: if the model learned the noise,
the pattern taken from it is far more predictive than one from a clean canvas, and for class-wise
noise adding δ_t alone to other-class images makes the model say t (``noise_predictive_power``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from ..errors import UnlearnableError


@dataclass
class PatternConfig:
    """Search settings; defaults are the authors' CIFAR-10 settings."""

    alpha: float = 0.2        # weight of the CE term; 1 − α weighs the mask's L1 size
    lr: float = 0.02          # signed-gradient step on the mask
    epochs: int = 5           # passes over the other-class search images (per class)
    batch_size: int = 4       # other-class images per class per step
    top_k: int = 50           # pattern pixels kept
    max_steps: int | None = None  # cap on steps (None: epochs × images / batch)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.top_k < 1:
            raise UnlearnableError("pattern search needs 0 < alpha <= 1, lr > 0, epochs, batch_size, top_k >= 1")


@dataclass
class ClassPatterns:
    """Result per class k: ``masks`` (K, H, W) in [0, 1], ``support`` (K, H, W) bool top-k pixels,
    ``canvases`` (K, C, H, W) in [0, 1], ``predictive_power`` (K,) in [0, 1]."""

    masks: torch.Tensor
    support: torch.Tensor
    canvases: torch.Tensor
    predictive_power: torch.Tensor

    def images(self) -> torch.Tensor:
        """(K, C, H, W) the patterns as the paper shows them: canvas pixels on a white background."""
        s = self.support[:, None].to(self.canvases.dtype)
        return self.canvases * s + (1 - s)


def _other_class_sampler(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, N) weights: 1 where sample n is not of class k."""
    return (labels[None, :] != torch.arange(num_classes, device=labels.device)[:, None]).float()


def search_masks(model: nn.Module, canvases: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                 config: PatternConfig | None = None) -> torch.Tensor:
    """Optimise one mask per class. ``canvases`` (K, C, H, W) with canvas k of class k; ``images``
    (N, C, H, W) in [0, 1] with ``labels`` (N,), the pool of search images. Returns masks (K, H, W)."""
    cfg = config or PatternConfig()
    k, c, h, w = canvases.shape
    device = next(model.parameters()).device
    canvases, images, labels = canvases.to(device), images.to(device), labels.to(device)
    weights = _other_class_sampler(labels, k)
    others = int(weights.sum(1).min())
    if others < 1:
        raise UnlearnableError("pattern search needs images of more than one class")
    steps = cfg.epochs * math.ceil(others / cfg.batch_size)
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    b = min(cfg.batch_size, others)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    target = torch.arange(k, device=device).repeat_interleave(b)
    mask = torch.full((k, 1, h, w), 0.5, device=device)
    was = model.training
    model.eval()
    try:
        for _ in range(steps):
            idx = torch.multinomial(weights.cpu(), b, replacement=False, generator=gen).to(device)   # (K, b)
            x = images[idx]                                                                     # (K, b, C, H, W)
            mask.requires_grad_(True)
            mixed = mask[:, None] * canvases[:, None] + (1 - mask[:, None]) * x
            with autocast(device):
                logits = model(mixed.reshape(k * b, c, h, w)).float()
            ce = F.cross_entropy(logits, target, reduction="none").view(k, b).mean(1)
            size = mask.sum(dim=(1, 2, 3)) / (h * w / 2)
            loss = (cfg.alpha * ce + (1 - cfg.alpha) * size).sum()
            (grad,) = torch.autograd.grad(loss, mask)
            mask = (mask.detach() - cfg.lr * grad.sign()).clamp_(0, 1)
    finally:
        model.train(was)
    return mask[:, 0].detach()


def top_k_support(masks: torch.Tensor, k: int) -> torch.Tensor:
    """(K, H, W) bool: the ``k`` largest mask values of each class."""
    flat = masks.flatten(1)
    idx = flat.topk(min(k, flat.shape[1]), dim=1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view_as(masks)


@torch.no_grad()
def _rate_as_target(model: nn.Module, make: callable, images: torch.Tensor, labels: torch.Tensor,
                    num_classes: int, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    hits = torch.zeros(num_classes)
    counts = torch.zeros(num_classes)
    try:
        for t in range(num_classes):
            pool = images[labels != t]
            for s in range(0, len(pool), batch_size):
                x = make(t, pool[s:s + batch_size].to(device))
                with autocast(device):
                    hits[t] += (model(x).float().argmax(1) == t).sum().item()
            counts[t] = len(pool)
    finally:
        model.train(was)
    return hits / counts.clamp_min(1)


def predictive_power(model: nn.Module, canvases: torch.Tensor, support: torch.Tensor, images: torch.Tensor,
                     labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(K,) share of other-class ``images`` that ``model`` assigns to class t once the pattern's
    pixels (``support`` (K, H, W)) are replaced by canvas t's."""
    device = next(model.parameters()).device
    canv, sup = canvases.to(device), support.to(device)[:, None].float()

    def stamp(t: int, x: torch.Tensor) -> torch.Tensor:
        return x * (1 - sup[t]) + canv[t] * sup[t]

    return _rate_as_target(model, stamp, images, labels, len(canvases), batch_size)


def noise_predictive_power(model: nn.Module, delta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                           batch_size: int = 1000) -> torch.Tensor:
    """(K,) share of other-class clean ``images`` that ``model`` assigns to class t once class t's
    noise ``delta`` (K, C, H, W) is added (clamped to [0, 1]): how far the model learned the
    class-wise noise itself as the class."""
    device = next(model.parameters()).device
    d = delta.to(device)
    return _rate_as_target(model, lambda t, x: (x + d[t]).clamp(0, 1), images, labels, len(delta), batch_size)


def classwise_patterns(model: nn.Module, canvases: torch.Tensor, search_images: torch.Tensor,
                       search_labels: torch.Tensor, eval_images: torch.Tensor | None = None,
                       eval_labels: torch.Tensor | None = None, config: PatternConfig | None = None
                       ) -> ClassPatterns:
    """Search the masks, keep the top-k pixels and measure predictive power on ``eval_images``
    (default: the search images, as the authors do)."""
    cfg = config or PatternConfig()
    masks = search_masks(model, canvases, search_images, search_labels, cfg)
    support = top_k_support(masks, cfg.top_k).cpu()
    ev_x = search_images if eval_images is None else eval_images
    ev_y = search_labels if eval_labels is None else eval_labels
    power = predictive_power(model, canvases, support, ev_x, ev_y)
    return ClassPatterns(masks.cpu(), support, canvases.cpu(), power)
