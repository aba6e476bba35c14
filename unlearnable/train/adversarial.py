"""Adversarial training steps: PGD-AT (Madry et al., arXiv 1706.06083) and AT with Adversarial
Weight Perturbation (AWP, Wu et al., NeurIPS 2020, arXiv 2004.05884). Both are ``StepFn``s of
the one training loop (``unlearnable.train.loop.train(..., step=AdversarialStep())``).

PGD-AT: min_θ E max_{‖δ‖∞ ≤ ε} CE(f_θ(x + δ), y), inner max by PGD with random start;
defaults ε = 8/255, step 2/255, 10 steps.

AWP (Eq. 7 of the paper): min_w max_{v ∈ V} E max_δ CE(f_{w+v}(x + δ), y), with the weight
perturbation layer-wise and relative to the weights, ‖v_l‖ ≤ γ ‖w_l‖. Per batch, as in the
official code: copy w into a proxy, take one SGD step (lr 0.01) *ascending* the adversarial loss
on the proxy, set v_l = γ ‖w_l‖ · d_l / ‖d_l‖ with d the proxy's change (multi-dimensional
weights only; BN and biases untouched), update the model at w + v, then subtract v again.
γ = 1e-2 with no warm-up is the AT-AWP setting (``--awp-gamma=0.01 --awp-warmup=0`` in public
reruns of the authors' AT-AWP script, which is not in our reference index); TRADES-AWP uses
γ = 5e-3 (the official TRADES-AWP script's default) and waits 10 epochs: ``gamma``, ``warmup_steps``.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import PGD
from ..device import autocast
from .loop import StandardStep

EPS = 1e-20


class AdversarialStep:
    """PGD adversarial training: craft x + δ against the current model, then one SGD step on it."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 grad_clip: float | None = None, generator: torch.Generator | None = None) -> None:
        self.eps, self.alpha, self.steps, self.generator = eps, alpha, steps, generator
        self.update = StandardStep(grad_clip=grad_clip)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """PGD examples (B, C, H, W) in [0, 1] maximising ``loss_fn`` (default cross-entropy)."""
        return PGD(model, self.eps, self.alpha, self.steps, random_start=True, loss_fn=loss_fn or F.cross_entropy,
                   generator=self.generator)(x, y)

    def __call__(self, model, optimizer, x, y):
        return self.update(model, optimizer, self.adversarial(model, x, y), y)


def weight_perturbation(model: nn.Module, proxy: nn.Module, gamma: float) -> dict[str, torch.Tensor]:
    """v_l = γ ‖w_l‖ (w'_l − w_l) / ‖w'_l − w_l‖ for every multi-dimensional weight (w' = proxy's)."""
    new = dict(proxy.named_parameters())
    v = {}
    for name, w in model.named_parameters():
        if w.dim() <= 1 or not name.endswith("weight"):
            continue
        d = new[name].detach() - w.detach()
        v[name] = gamma * w.detach().norm() / (d.norm() + EPS) * d
    return v


@torch.no_grad()
def add_weights(model: nn.Module, v: dict[str, torch.Tensor], sign: float = 1.0) -> None:
    """w ← w + sign · v (sign −1 restores)."""
    for name, w in model.named_parameters():
        if name in v:
            w.add_(v[name], alpha=sign)


class AWPStep(AdversarialStep):
    """AT-AWP: PGD examples, then the update taken at adversarially perturbed weights w + v."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, gamma: float = 1e-2,
                 proxy_lr: float = 0.01, warmup_steps: int = 0, grad_clip: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(eps, alpha, steps, grad_clip, generator)
        self.gamma, self.proxy_lr, self.warmup_steps = gamma, proxy_lr, warmup_steps
        self.calls = 0
        self.proxy: nn.Module | None = None

    def __call__(self, model, optimizer, x, y):
        x_adv = self.adversarial(model, x, y)
        self.calls += 1
        if self.calls <= self.warmup_steps or self.gamma <= 0:
            return self.update(model, optimizer, x_adv, y)
        if self.proxy is None:
            self.proxy = copy.deepcopy(model)
        self.proxy.load_state_dict(model.state_dict())
        self.proxy.train()
        proxy_opt = torch.optim.SGD(self.proxy.parameters(), lr=self.proxy_lr)
        with autocast(x.device):
            loss = -F.cross_entropy(self.proxy(x_adv).float(), y)
        proxy_opt.zero_grad(set_to_none=True)
        loss.backward()
        proxy_opt.step()
        v = weight_perturbation(model, self.proxy, self.gamma)
        add_weights(model, v, 1.0)
        try:
            out = self.update(model, optimizer, x_adv, y)
        finally:
            add_weights(model, v, -1.0)
        return out
