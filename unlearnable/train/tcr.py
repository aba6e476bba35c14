"""Temporal Calibrated Regularization (TCR, Wu et al. 2020, arXiv 2007.00240) for noisy labels.

Each sample's training target mixes its (possibly wrong) label with the model's own prediction
on it from the previous epoch (Eq. 7 / Algorithm 1):

    y*_i = β ỹ_i + (1 − β) z_i,     L = −(1/B) Σ_i y*_iᵀ log f(x_i; θ_t)

so the loss is β CE(f, ỹ) + (1 − β) CE(f, z): the second term's logit gradient is f_t − f_{t−1},
which damps fitting a label the model did not already lean towards. In epoch 1 the target is the
label alone (``warmup_epochs`` = 1 in the paper: one epoch over 50k CIFAR images, 391 updates;
on a small subset more epochs give the model the same number of label-only updates). From epoch ``squeeze_from`` on, z is sharpened, Squeeze(p) = p^γ / Σ p^γ (Eq. 13),
because once the learning rate falls f_t − f_{t−1} shrinks and the regulariser fades.

Paper defaults: β = 0.1, γ = 1.1 for every dataset and architecture. The paper's epoch for the
squeeze is not recoverable here; we start it halfway through training (where a step schedule
first drops the learning rate) and say so. z_i is the softmax of the training forward pass
(augmented, train mode), detached, recorded as each batch is seen and used one epoch later.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .loop import StandardStep


def squeeze(p: torch.Tensor, gamma: float = 1.1) -> torch.Tensor:
    """Sharpen probabilities (B, K): p^γ / Σ_k p^γ (Eq. 13); γ = 1 is the identity."""
    q = p.clamp_min(1e-12) ** gamma
    return q / q.sum(1, keepdim=True)


def tcr_targets(y: torch.Tensor, previous: torch.Tensor | None, num_classes: int, beta: float = 0.1
                ) -> torch.Tensor:
    """Calibrated soft targets (B, K): β onehot(ỹ) + (1 − β) z, or onehot(ỹ) when ``previous`` is None."""
    onehot = F.one_hot(y, num_classes).float()
    if previous is None:
        return onehot
    return beta * onehot + (1 - beta) * previous


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−mean_i Σ_k t_ik log softmax(logits)_ik for soft targets (B, K)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


class TCRStep:
    """TCR as a ``StepFn``: per-sample targets calibrated by the previous epoch's predictions.
    Needs each batch's training-set positions, so the loop passes ``index=`` (``uses_index``)."""

    uses_index = True

    def __init__(self, num_samples: int, num_classes: int, beta: float = 0.1, gamma: float = 1.1,
                 squeeze_from: int | None = None, grad_clip: float | None = 5.0, warmup_epochs: int = 1) -> None:
        if not 0 < beta <= 1:
            raise ValueError("TCR beta must be in (0, 1]")
        self.n, self.k, self.beta, self.gamma = num_samples, num_classes, beta, gamma
        self.squeeze_from, self.grad_clip, self.warmup_epochs = squeeze_from, grad_clip, max(1, warmup_epochs)
        self.epoch = 1
        self.previous: torch.Tensor | None = None   # (N, K) predictions of the last finished epoch
        self.current: torch.Tensor | None = None    # (N, K) being recorded this epoch

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            raise ValueError("TCRStep needs the batch's sample positions (index=)")
        if self.current is None:
            self.current = torch.full((self.n, self.k), 1.0 / self.k, device=x.device)
        prev = None
        if self.previous is not None and self.epoch > self.warmup_epochs:
            prev = self.previous[index]
            if self.squeeze_from is not None and self.epoch >= self.squeeze_from:
                prev = squeeze(prev, self.gamma)
        targets = tcr_targets(y, prev, self.k, self.beta)
        update = StandardStep(lambda logits, _: soft_cross_entropy(logits, targets), self.grad_clip)
        loss, logits = update(model, optimizer, x, y)
        self.current[index] = logits.float().softmax(1)
        return loss, logits

    def end_epoch(self, epoch: int) -> None:
        """The predictions recorded this epoch become next epoch's calibration."""
        if self.current is not None:
            self.previous, self.current = self.current, self.current.clone()
        self.epoch = epoch + 1
