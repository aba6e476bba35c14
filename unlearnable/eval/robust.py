"""Robust accuracy: the standard white-box readout of a model's robustness, accuracy under
PGD-20 with random start in the L∞ ball (ε 8/255, step 2/255: the AWP paper's tables,
arXiv 2004.05884), with the attacked objective replaceable for adaptive attacks (CAS)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import PGD
from ..device import autocast


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float = 8 / 255,
                    alpha: float = 2 / 255, steps: int = 20, batch_size: int = 500, seed: int = 0,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float:
    """Accuracy in [0, 1] under PGD-``steps`` (L∞ ``eps``, random start) on float images (N, C, H, W)
    in [0, 1]; the standard white-box robustness readout (PGD-20 as in the AWP paper's tables).
    ``loss_fn(logits, y)`` is the objective PGD maximises (default cross-entropy); a defense that
    trains with its own objective must be attacked with it (adaptive attack): for CAS pass the
    step's ``attack_loss``, CE + β · mean auxiliary CE."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    try:
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size].to(device)
            y = labels[s:s + batch_size].to(device)
            adv = PGD(model, eps, alpha, steps, random_start=True, loss_fn=loss_fn or F.cross_entropy,
                      generator=gen)(x, y)
            with torch.no_grad(), autocast(device):
                correct += (model(adv).float().argmax(1) == y).sum().item()
    finally:
        model.train(was)
    return correct / max(len(images), 1)
