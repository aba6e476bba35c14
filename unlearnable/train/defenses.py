"""Defenses as training recipes: each name builds the ``StepFn`` (and the recipe changes) a
victim uses, so ``verify --defenses`` can stress a protection with every known way of training
through it. All of them run on the one training loop (``unlearnable.train.loop.train``).

========= ================================================================================
standard  empirical risk minimisation, cross-entropy
at        PGD adversarial training (Madry et al.), ε 8/255, step 2/255, 10 steps
awp       AT + Adversarial Weight Perturbation (arXiv 2004.05884), γ = 1e-2 (AT-AWP's)
cas       AT + Channel-wise Activation Suppressing (arXiv 2103.08307), β = 2, official placement;
          its training attack and its robust readout maximise CE + β·aux CE (``step.attack_loss``)
apl       Active Passive Loss NCE+RCE (arXiv 2006.13554), the paper's α, β for the dataset
tcr       Temporal Calibrated Regularization (arXiv 2007.00240), β = 0.1, γ = 1.1
jpeg      JPEG compression of every training batch, quality 10 (arXiv 2301.13838)
jpeg-iss  JPEG quality 10 on each stored training image once, before the crop and flip (ISS's own order)
grayscale training on grayscale images (arXiv 2301.13838)
grayworld gray-world white balance of each stored training image once (Buchsbaum 1980): a uniform
          colour cast removed, as a scraper's automatic white balance would
cutout    one 16 × 16 hole per image (arXiv 1708.04552)
mixup     mixup, α = 1 (arXiv 1710.09412)
cutmix    cutmix, α = 1 (arXiv 1905.04899)
========= ================================================================================

Data-side transforms run after the loop's crop + flip, on the device, in one batched op; the two
that squeeze the stored images (``jpeg-iss``, ``grayworld``: ``Defense.squeeze``) run once before it.

Deviation, named: Image Shortcut Squeezing's own training transform (the official repository's
``augmentations.aug_train``) applies grayscale or JPEG to each stored image *before* its random crop
(zero padding 4) and flip; here they follow the crop and flip. For grayscale the order does not matter
(it commutes with a crop, a flip and the zero padding). For JPEG it does: ISS compresses the image on
its own 8 × 8 grid, while ``jpeg`` here compresses the shifted, padded crop, so a pattern meets JPEG's
grid at a random shift of up to 4 pixels and the padding's edge enters the border blocks. Every JPEG-10
figure in the README was measured in this order. ``jpeg-iss`` is ISS's order: the stored images are
compressed once (``Defense.squeeze``, rounded to 8-bit levels as a decoded file is) and the victim then
trains on them with the usual crop and flip; only the figures that name it were measured so.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from ..data.augment import cutmix, cutout, gray_world, grayscale, mixed_cross_entropy, mixup, to_float, to_uint8
from ..data.jpeg import jpeg
from ..errors import UnlearnableError
from .adversarial import AdversarialStep, AWPStep
from .apl import apl_loss
from .cas import CASStep, attach_cas
from .loop import StandardStep, StepFn
from .tcr import TCRStep


class TransformStep:
    """Apply a batched input transform x -> x' (B, C, H, W) in [0, 1], then a standard update."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], grad_clip: float | None = 5.0) -> None:
        self.transform = transform
        self.update = StandardStep(grad_clip=grad_clip)

    def __call__(self, model, optimizer, x, y):
        return self.update(model, optimizer, self.transform(x), y)


class MixStep:
    """mixup / cutmix: mix the batch with a permutation of itself, loss λ CE(y_a) + (1 − λ) CE(y_b)."""

    def __init__(self, mix: Callable, alpha: float = 1.0, generator: torch.Generator | None = None,
                 grad_clip: float | None = 5.0) -> None:
        self.mix, self.alpha, self.generator = mix, alpha, generator
        self.grad_clip = grad_clip

    def __call__(self, model, optimizer, x, y):
        xm, ya, yb, lam = self.mix(x, y, self.alpha, self.generator)
        update = StandardStep(lambda logits, _: mixed_cross_entropy(logits, ya, yb, lam), self.grad_clip)
        return update(model, optimizer, xm, y)


@dataclass
class DefenseContext:
    """What a defense may need to build its step: the model, data size and the run's settings."""

    model: nn.Module
    num_samples: int
    num_classes: int
    dataset: str = "cifar10"
    epochs: int = 60
    grad_clip: float | None = 5.0
    seed: int = 0
    eps: float = 8 / 255          # PGD radius of the adversarial defenses (ε in [0, 1] units)
    pgd_steps: int = 10
    pgd_alpha: float = 2 / 255
    tcr_warmup_epochs: int = 1    # label-only epochs before TCR calibrates (paper: 1)
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    awp_gamma: float = 1e-2       # AWP's relative weight-perturbation size (AT-AWP: 1e-2; TRADES-AWP: 5e-3)
    input_shape: tuple[int, int, int] = (3, 32, 32)   # (C, H, W) of one training image (CAS probes the model with it)


@dataclass(frozen=True)
class Defense:
    name: str
    summary: str
    build: Callable[[DefenseContext], StepFn]
    adversarial: bool = False   # trains on PGD examples (slower by about pgd_steps + 1 times)
    squeeze: Callable[[torch.Tensor], torch.Tensor] | None = None   # applied once to the stored training images


def squeeze_images(images: torch.Tensor, squeeze: Callable[[torch.Tensor], torch.Tensor],
                   batch: int = 1024) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, H, W): each stored image through ``squeeze`` (float in [0, 1] -> float
    in [0, 1]) and rounded back to 8-bit levels, as writing and decoding the squeezed file would give."""
    out = torch.empty_like(images)
    for i in range(0, len(images), batch):
        out[i:i + batch] = to_uint8(squeeze(to_float(images[i:i + batch])))
    return out


def squeezed(data, name: str):
    """``data`` (an ``ImageTensors``) as defense ``name`` stores it: its images through the defense's
    ``squeeze`` (``jpeg-iss``, ``grayworld``) once, before any crop or flip; unchanged for the others."""
    squeeze = DEFENSES[parse_defenses([name])[0]].squeeze
    return data if squeeze is None else replace(data, images=squeeze_images(data.images, squeeze))


def _at(c: DefenseContext) -> StepFn:
    return AdversarialStep(c.eps, c.pgd_alpha, c.pgd_steps, c.grad_clip, c.generator)


def _awp(c: DefenseContext) -> StepFn:
    return AWPStep(c.eps, c.pgd_alpha, c.pgd_steps, c.awp_gamma, grad_clip=c.grad_clip, generator=c.generator)


def _cas(c: DefenseContext) -> StepFn:
    return CASStep(attach_cas(c.model, input_shape=c.input_shape), _at(c), grad_clip=c.grad_clip)


def _apl(c: DefenseContext) -> StepFn:
    ds = c.dataset if c.dataset in ("cifar10", "cifar100", "mnist") else "cifar10"
    return StandardStep(apl_loss("nce+rce", dataset=ds), c.grad_clip)


def _tcr(c: DefenseContext) -> StepFn:
    return TCRStep(c.num_samples, c.num_classes, squeeze_from=max(2, c.epochs // 2), grad_clip=c.grad_clip,
                   warmup_epochs=c.tcr_warmup_epochs)


DEFENSES: dict[str, Defense] = {d.name: d for d in [
    Defense("standard", "cross-entropy (no defense)", lambda c: StandardStep(grad_clip=c.grad_clip)),
    Defense("at", "PGD adversarial training", _at, adversarial=True),
    Defense("awp", "adversarial training + AWP", _awp, adversarial=True),
    Defense("cas", "adversarial training + CAS", _cas, adversarial=True),
    Defense("apl", "APL loss NCE+RCE", _apl),
    Defense("tcr", "temporal calibrated regularization", _tcr),
    Defense("jpeg", "JPEG quality 10 on every batch",
            lambda c: TransformStep(lambda x: jpeg(x, 10), c.grad_clip)),
    Defense("jpeg-iss", "JPEG quality 10 on each stored image, before crop and flip (ISS's order)",
            lambda c: StandardStep(grad_clip=c.grad_clip), squeeze=lambda x: jpeg(x, 10)),
    Defense("grayscale", "grayscale images", lambda c: TransformStep(grayscale, c.grad_clip)),
    Defense("grayworld", "gray-world white balance of each stored image (a uniform colour cast removed)",
            lambda c: StandardStep(grad_clip=c.grad_clip), squeeze=gray_world),
    Defense("cutout", "cutout 16 px", lambda c: TransformStep(lambda x: cutout(x, 16, c.generator), c.grad_clip)),
    Defense("mixup", "mixup α = 1", lambda c: MixStep(mixup, 1.0, c.generator, c.grad_clip)),
    Defense("cutmix", "cutmix α = 1", lambda c: MixStep(cutmix, 1.0, c.generator, c.grad_clip)),
]}


def parse_defenses(spec: str | list[str]) -> list[str]:
    """'standard,at,jpeg' or 'all' -> validated, de-duplicated names in the given order."""
    names = spec if isinstance(spec, list) else [s.strip().lower() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return list(DEFENSES)
    unknown = [n for n in names if n not in DEFENSES]
    if unknown:
        raise UnlearnableError(f"unknown defense(s) {', '.join(unknown)}; choose from {', '.join(DEFENSES)} or 'all'")
    if not names:
        raise UnlearnableError("give at least one defense")
    return list(dict.fromkeys(names))


def build_step(name: str, context: DefenseContext) -> StepFn:
    """The ``StepFn`` of defense ``name`` for ``context.model`` (CAS attaches its module to it)."""
    return DEFENSES[parse_defenses([name])[0]].build(context)
