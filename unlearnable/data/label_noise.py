"""Label-noise injection for the robust-loss experiments (APL, arXiv 2006.13554, Sec. 5).

- *symmetric* noise of rate η: exactly round(η · N) samples, drawn at random, get a label drawn
  uniformly from the *other* K − 1 classes (so the realised noise rate is η exactly);
- *asymmetric* CIFAR-10 noise (the class flips used by the APL paper and by Patrini et al.
  2017): truck → automobile, bird → airplane, deer → horse, cat ↔ dog, each with probability η.
"""
from __future__ import annotations

import torch

from ..errors import UnlearnableError

CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def symmetric_noise(labels: torch.Tensor, num_classes: int, rate: float, seed: int = 0) -> torch.Tensor:
    """Labels (N,) with round(rate · N) of them flipped to a uniformly drawn different class."""
    if not 0 <= rate <= 1:
        raise UnlearnableError(f"noise rate must be in [0, 1], got {rate}")
    g = torch.Generator().manual_seed(seed)
    y = labels.clone().cpu()
    idx = torch.randperm(len(y), generator=g)[: round(rate * len(y))]
    shift = torch.randint(1, num_classes, (len(idx),), generator=g)  # 1..K-1: never the same class
    y[idx] = (y[idx] + shift) % num_classes
    return y.to(labels.device)


def asymmetric_noise_cifar10(labels: torch.Tensor, rate: float, seed: int = 0) -> torch.Tensor:
    """CIFAR-10 class-dependent flips (see module docstring), each with probability ``rate``."""
    if not 0 <= rate <= 1:
        raise UnlearnableError(f"noise rate must be in [0, 1], got {rate}")
    g = torch.Generator().manual_seed(seed)
    y = labels.clone().cpu()
    flip = torch.rand(len(y), generator=g) < rate
    src = torch.tensor(list(CIFAR10_ASYMMETRIC))
    dst = torch.tensor(list(CIFAR10_ASYMMETRIC.values()))
    hit = flip & torch.isin(y, src)
    mapping = torch.arange(10)
    mapping[src] = dst
    y[hit] = mapping[y[hit]]
    return y.to(labels.device)
