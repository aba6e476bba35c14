"""Robust error-minimising noise (REM; Fu, He, Liu, Shen and Tao, "Robust Unlearnable Examples:
Protecting Data Against Adversarial Learning", ICLR 2022, arXiv 2203.14533): what REM adds to the
one min-min engine (``unlearnable.noise.minmin``, option ``MinMinConfig.robust``).

Error-minimising noise (EM) makes data unlearnable for standard training, but adversarial training
at radius ρ_a learns through it: EM does not lower the *adversarial* training loss. REM's
objective, the paper's robust min-min problem with the expectation over transformations::

    min_θ  1/n Σ_i  min_{‖δ_u,i‖∞ ≤ ρ_u}  E_{t ~ T}  max_{‖δ_a,i‖∞ ≤ ρ_a}  ℓ(f_θ(t(x_i + δ_u,i) + δ_a,i), y_i)

with T the training augmentations (crop with 4-pixel zero padding + horizontal flip on CIFAR).
On the engine this is the same rounds and the same sample-wise / class-wise rules as EM with:

(a) an adversarial surrogate step (:class:`AdversarialSurrogateStep`): each training batch of
    perturbed images x + δ_u is augmented by t ~ T, δ_a is found by PGD *maximising* the loss within
    ρ_a (random start), and θ takes one SGD step on t(x + δ_u) + δ_a;
(b) a noise step (:func:`robust_noise_step`) whose loss is taken at t(x + δ_u) + δ_a*: for each of
    ``samples`` draws t ~ T (the expectation by sampling, EOT), δ_a* is found by an inner PGD
    maximisation (:func:`worst_case`), and the gradient of ℓ(f(t(x + δ_u) + δ_a*)) with respect to
    δ_u (δ_a* held fixed: Danskin's theorem, as in the official code) is summed over the draws;
    δ_u then takes one signed step *down* that sum and is projected as in EM;
(c) the stop test scores what the noise minimises: the surrogate's accuracy and loss on the worst
    case x + δ_u + δ_a* within ρ_a (:func:`robust_score`; no augmentation, a fresh PGD per round).

Official defaults (github.com/fshp971/robust-unlearnable-examples, scripts/cifar10/gen_rem.sh,
attacks/robust_workers.py), taken by :func:`rem_config` and :class:`RobustSettings`: ρ_u = 8/255;
noise PGD 10 steps of 1.6/255 from a uniform random start; ρ_a = 4/255, its PGD 10 steps of 0.8/255
from a uniform random start; 5 EOT samples of crop + flip; ResNet-18 surrogate, SGD lr 0.1, momentum
0.9, weight decay 5e-4, batch 128, 5,000 surrogate steps with lr × 0.1 every 2,000; the noise of a
batch is recomputed before every surrogate step, and all noise once more with the final surrogate.

Deviations, on purpose (the engine's rules, so that EM and REM differ only in (a)-(c)):
- *Rounds instead of one schedule.* The engine alternates ``train_steps`` surrogate steps (10) with
  ``steps`` noise steps over the whole search pool, and stops on the test of (c) or at
  ``max_rounds``; the official code interleaves one surrogate step with one batch's noise for a
  fixed 5,000 steps, lr decayed, and has no stop test. Here the lr is constant (the engine's).
- *Warm start.* δ_u is carried from round to round from zero (EM's rule); the official code
  restarts each batch's noise from uniform noise every time it is recomputed. The inner δ_a does
  start from uniform noise (as official), drawn from the engine's generator.
- *Feasibility.* δ_u keeps x + δ_u in [0, 1] (EM's projection); the inner δ_a keeps the augmented
  image in [0, 1] (official: the same clip).
- *Precision.* Everything in fp32 (the engine's rule; see ``unlearnable.noise.minmin``).
- Class-wise REM (the engine's class-wise mean of per-sample steps) is not in the paper, which is
  sample-wise only; it is offered because the engine offers it.
- CPU benchmarks shrink the settings (fewer inner steps and EOT samples, a small surrogate); each
  benchmark states what it ran (``benchmarks/rem.py``).

Needs the identity view (labelled datasets, not photos: the photo problem has its own scraper
views) and no interaction penalty. Random draws (crops, flips, random starts) come from the
engine's generator, so a checkpointed search resumes bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import PGD
from ..data.augment import random_crop_flip
from ..errors import UnlearnableError
from ..train.loop import StandardStep, score_batches

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RobustSettings:
    """REM's adversary and expectation (the official CIFAR-10 defaults): ``radius`` ρ_a, its PGD
    ``steps`` of ``step_size`` (ε units, [0, 1]), ``samples`` EOT draws of crop (``padding`` px) + flip
    per noise step."""

    radius: float = 4 / 255
    steps: int = 10
    step_size: float = 0.8 / 255
    samples: int = 5
    padding: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.radius <= 1:
            raise UnlearnableError(f"the robust radius ρ_a must be in (0, 1], got {self.radius}")
        if self.steps < 1 or not self.step_size > 0 or self.samples < 1 or self.padding < 0:
            raise UnlearnableError("REM needs ≥ 1 inner PGD step of positive size, ≥ 1 EOT sample and padding ≥ 0")


def rem_config(**overrides):
    """A ``MinMinConfig`` with the official REM settings on the engine (sample-wise, ρ_u = 8/255,
    noise PGD 10 steps of 1.6/255 per round, batch 128, ``robust=RobustSettings()``); ``overrides``
    replace any of them."""
    from .minmin import MinMinConfig

    base = dict(mode="samplewise", eps=8 / 255, steps=10, step_size=1.6 / 255, batch_size=128,
                robust=RobustSettings())
    return MinMinConfig(**{**base, **overrides})


def augment(x: torch.Tensor, settings: RobustSettings, generator: torch.Generator) -> torch.Tensor:
    """t ~ T: random crop (zero padding ``settings.padding``) + flip of (B, C, H, W) images; differentiable."""
    return random_crop_flip(x, settings.padding, generator)


def worst_case(model: nn.Module, z: torch.Tensor, y: torch.Tensor, settings: RobustSettings,
               generator: torch.Generator, loss_fn: Loss = F.cross_entropy) -> torch.Tensor:
    """δ_a (B, C, H, W), ‖δ_a‖∞ ≤ ρ_a with z + δ_a in [0, 1]: PGD from a uniform random start that
    *raises* ``loss_fn`` at z (images in [0, 1], detached), in fp32; the model's mode is restored."""
    pgd = PGD(model, eps=settings.radius, alpha=settings.step_size, steps=settings.steps, random_start=True,
              minimize=False, loss_fn=loss_fn, generator=generator, amp=False)
    return pgd.perturb(z.detach(), y)


class AdversarialSurrogateStep:
    """REM's surrogate step (a): augment the perturbed batch, PGD at ρ_a against the current
    surrogate, one fp32 SGD step on the adversarial batch (a ``StepFn`` of the training loop)."""

    def __init__(self, settings: RobustSettings, grad_clip: float | None, generator: torch.Generator) -> None:
        self.settings, self.generator = settings, generator
        self.update = StandardStep(grad_clip=grad_clip, amp=False)

    def __call__(self, model, optimizer, x, y):
        z = augment(x, self.settings, self.generator)
        return self.update(model, optimizer, z + worst_case(model, z, y, self.settings, self.generator), y)


def robust_noise_step(pgd: PGD, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor,
                      settings: RobustSettings, generator: torch.Generator) -> torch.Tensor:
    """REM's noise step (b) from a feasible ``delta`` (B, C, H, W): the signed step (``pgd.signed``) of size
    ``pgd.alpha`` down Σ_t ∇_δ ℓ(f(t(x + δ) + δ_a*(t)), y) over ``settings.samples`` draws, projected
    by ``pgd`` (its ε and pixel-range rule). ``pgd`` is the engine's minimising PGD (identity view,
    no penalty); the model is the caller's, frozen and in eval mode."""
    if pgd.transform is not None or pgd.penalty is not None:
        raise UnlearnableError("robust (REM) noise needs the identity view and no interaction penalty")
    delta = delta.detach().requires_grad_(True)
    grad = torch.zeros_like(delta)
    for _ in range(settings.samples):
        z = augment((images + delta).clamp(0, 1), settings, generator)
        adv = worst_case(pgd.model, z, labels, settings, generator, pgd.loss_fn)
        loss = pgd.loss_fn(pgd.logits(z + adv), labels)
        (g,) = torch.autograd.grad(loss, delta)
        grad += g
    return pgd.project(delta.detach() - pgd.alpha * pgd.signed(grad), images)


def robust_score(model: nn.Module, problem, delta_of: Callable[[torch.Tensor], torch.Tensor], pool: torch.Tensor,
                 batch_size: int, settings: RobustSettings, generator: torch.Generator) -> tuple[float, float]:
    """REM's stop test (c): (accuracy, mean cross-entropy) of ``model`` on x + δ_u + δ_a* for the
    ``pool`` indices (on the device) of ``problem``, δ_a* by :func:`worst_case`; eval mode, fp32."""
    def batch(idx: torch.Tensor) -> tuple[int, float]:
        y = problem.targets(idx)
        z = (problem.clean(idx) + delta_of(idx)).clamp(0, 1)
        adv = z + worst_case(model, z, y, settings, generator)
        with torch.no_grad():
            logits = model(adv)
        return int((logits.argmax(1) == y).sum()), float(F.cross_entropy(logits, y, reduction="sum"))

    return score_batches(model, pool, batch_size, batch)


__all__ = ["RobustSettings", "rem_config", "augment", "worst_case", "AdversarialSurrogateStep",
           "robust_noise_step", "robust_score"]
