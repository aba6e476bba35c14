"""Active Passive Losses (Ma et al., ICML 2020, arXiv 2006.13554): losses robust to noisy labels.

A loss is *normalized* by dividing it by its sum over all possible labels (Eq. 3,
L_norm(f(x), y) = L(f(x), y) / Σ_k L(f(x), k)); normalized losses are robust to symmetric
label noise but underfit. APL pairs one *active* loss (which only pushes up p_y: normalized
cross-entropy NCE, normalized focal loss NFL) with one *passive* loss (which also pushes down
the other classes: MAE, reverse cross-entropy RCE):  L_APL = α · L_active + β · L_passive (Eq. 4).

Conventions follow the official code (github.com/HanxunH/Active-Passive-Losses): MAE is
1 − p_y (the paper's Σ|p − q| is twice that; the factor is absorbed by β), RCE clips the one-hot
target to [1e-4, 1] and p to [1e-7, 1], so log 0 := ln 1e-4 ≈ −9.21 and RCE = 9.21 (1 − p_y)
(the SCE paper writes A = −4, i.e. log₁₀; the tuned α, β go with the code), focal γ = 0.5.
(α, β) per dataset come from the official configs: CIFAR-10 (1, 1), CIFAR-100 (10, 0.1),
MNIST-like (1, 10).

All functions take logits (B, K) and integer labels (B,) and return the batch mean.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import UnlearnableError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def nce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Normalized cross-entropy: log p_y / Σ_k log p_k (in [0, 1])."""
    logp = F.log_softmax(logits.float(), dim=1)
    return (logp.gather(1, y[:, None]).squeeze(1) / logp.sum(1)).mean()


def nfl(logits: torch.Tensor, y: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """Normalized focal loss: FL(y) / Σ_k FL(k) with FL(k) = −(1 − p_k)^γ log p_k."""
    logp = F.log_softmax(logits.float(), dim=1)
    fl = -(1 - logp.exp()).pow(gamma) * logp
    return (fl.gather(1, y[:, None]).squeeze(1) / fl.sum(1)).mean()


def mae(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error on the probability of the label: 1 − p_y."""
    p = F.softmax(logits.float(), dim=1)
    return (1 - p.gather(1, y[:, None]).squeeze(1)).mean()


def rce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reverse cross-entropy −Σ_k p_k log q_k with q the one-hot label clipped to [1e-4, 1]."""
    p = F.softmax(logits.float(), dim=1).clamp(1e-7, 1.0)
    log_q = torch.full_like(p, torch.log(torch.tensor(1e-4)).item())
    log_q.scatter_(1, y[:, None], 0.0)
    return (-(p * log_q).sum(1)).mean()


ACTIVE: dict[str, Loss] = {"nce": nce, "nfl": nfl}
PASSIVE: dict[str, Loss] = {"mae": mae, "rce": rce}
PAPER_ALPHA_BETA = {"cifar10": (1.0, 1.0), "cifar100": (10.0, 0.1), "mnist": (1.0, 10.0),
                    "fashion-mnist": (1.0, 10.0)}


def apl_loss(name: str = "nce+rce", alpha: float | None = None, beta: float | None = None,
             dataset: str = "cifar10") -> Loss:
    """α · active + β · passive, e.g. ``apl_loss("nce+rce", dataset="cifar100")`` (α = 10, β = 0.1).
    A single name (``"nce"``, ``"rce"``, ...) gives that loss alone. Missing α, β take the paper's
    values for ``dataset`` (CIFAR-10's for unknown datasets)."""
    parts = name.lower().replace(" ", "").split("+")
    known = {**ACTIVE, **PASSIVE}
    if any(p not in known for p in parts) or len(parts) > 2 or (len(parts) == 2 and not (
            parts[0] in ACTIVE and parts[1] in PASSIVE)):
        raise UnlearnableError(f"unknown APL loss {name!r}: use one of {sorted(known)} or ACTIVE+PASSIVE "
                               f"(active: {sorted(ACTIVE)}, passive: {sorted(PASSIVE)}), e.g. nce+rce")
    if len(parts) == 1:
        return known[parts[0]]
    a0, b0 = PAPER_ALPHA_BETA.get(dataset, PAPER_ALPHA_BETA["cifar10"])
    a = a0 if alpha is None else alpha
    b = b0 if beta is None else beta
    active, passive = ACTIVE[parts[0]], PASSIVE[parts[1]]

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return a * active(logits, y) + b * passive(logits, y)

    loss.__name__ = f"{parts[0]}+{parts[1]}(alpha={a}, beta={b})"
    return loss
