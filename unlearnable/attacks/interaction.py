"""The interaction-reduced transfer attack (IR; Wang, Ren, Lin, Zhu, Wang and Zhang, "A Unified
Approach to Interpreting and Boosting Adversarial Transferability", ICLR 2021, arXiv 2010.04055),
its interaction estimator, and a transfer evaluation (surrogate → victims, PGD vs IR).

The paper shows that adversarial perturbations whose units interact less transfer better to other
networks, and attacks with an interaction penalty (the paper's interaction-reduced loss)::

    max_δ  ℓ(h(x + δ), y) − λ · E_{i,j}[ I_ij(δ) ],     ‖δ‖∞ ≤ ε,

where I_ij is the Shapley interaction between perturbation units i and j of the game
v(S) = max_{c≠y} h_c(x + δ_S) − h_y(x + δ_S) (δ_S: δ on the units of S, zero elsewhere). The
paper uses E_{i,j}[I_ij] = 1/(n−1) · E_i[ v(Ω) − v(Ω∖{i}) − v({i}) + v(∅) ]; the official code
(github.com/xherdan76/A-Unified-Approach-to-Interpreting-and-Boosting-Adversarial-Transferability,
codes/basic_functions/ouradvertorch/attacks/interaction_loss.py and projected_attack.py) estimates
it by sampling: the image is cut into a ``grid`` × ``grid`` lattice of units, and for each of
``samples`` draws a random set S of ``cells`` units takes the role of {i}::

    Î(δ) = mean over S of  v(δ) − v(δ ⊙ (1 − m_S)) − v(δ ⊙ m_S) + v(0)

(the constant 1/(n−1) is folded into λ). As in the official code the signed Î is penalised, not
|Î|: the penalty may push it below zero. The class c is the strongest wrong class at x + δ,
re-chosen (without gradient) at every step. :func:`interaction_terms` is this estimator (per
image, differentiable in δ), :func:`measure_interaction` measures it for given perturbations, and
:class:`InteractionReducedPGD` is PGD (``unlearnable.attacks.pgd``) with λ·Î as its ``penalty``.

Official defaults (main_interaction_loss.py, get_attacker.py): L∞ ε = 16/255 on ImageNet at
224 px, step 2/255, 100 steps, λ = 1, a 16 × 16 grid (14-pixel units), 32 units per sampled set,
32 sets per step, cross-entropy summed over a batch of one image, zero start for IR (the PGD
baseline there starts from uniform noise), no momentum.

Deviations, on purpose:
- *Grid at 32 × 32.* The grid is kept at 16 × 16 units for every input size, so on CIFAR a unit
  is 2 × 2 pixels and the game keeps its 256 players and its 32-unit sets (1/8 of the image); an
  image side not divisible by ``grid`` gets units of nearest-neighbour widths.
- *Sets without replacement.* The official code draws the 32 units with replacement (about 30
  distinct on average); here each set has exactly ``cells`` distinct units.
- *Batches.* The objective is the batch mean of CE_i − λ·Î_i, which for sign steps equals the
  official per-image CE_i − λ·Î_i; sets are drawn independently per image.
- *Default ε 8/255* (the project's and torchattacks' convention for CIFAR); the benchmarks state
  the ε they use. ``amp`` defaults to False: Î is a difference of four margins, which bf16
  (8 significant bits) would swamp.
- The official evaluation keeps all 100 steps and reports, per image, the step that transfers best
  on the *other* images (leave-one-out); here the result is the last step, as any PGD's.

The same penalty serves the noise search (``MinMinConfig.interaction``): error-minimising noise
*raises* the true-class margin, so there the game is v(S) = h_y − max_{c≠y} h_c and the penalty
again drives the interaction of the pursued margin down (see ``unlearnable.noise.minmin``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnlearnableError
from .pgd import PGD

GRID, CELLS, SAMPLES, LAMBDA = 16, 32, 32, 1.0   # the official code's grid, set size, sets per step, λ

Forward = Callable[[torch.Tensor], torch.Tensor]


def _check(lam: float, grid: int, cells: int, samples: int) -> None:
    if not lam >= 0:
        raise UnlearnableError(f"the interaction weight λ must be >= 0, got {lam}")
    if grid < 1 or not 1 <= cells <= grid * grid or samples < 1:
        raise UnlearnableError(f"need grid >= 1, 1 <= cells <= grid² and samples >= 1 "
                               f"(got grid {grid}, cells {cells}, samples {samples})")


def unit_masks(batch: int, size: tuple[int, int], grid: int = GRID, cells: int = CELLS, samples: int = SAMPLES,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Random sets of perturbation units: float {0, 1} masks (batch, samples, 1, H, W), each the
    union of ``cells`` distinct cells of a ``grid`` × ``grid`` lattice over the (H, W) image,
    drawn independently per image and sample (on CPU from ``generator``, then moved)."""
    _check(0.0, grid, cells, samples)
    n = batch * samples
    chosen = torch.rand(n, grid * grid, generator=generator).argsort(dim=1)[:, :cells]
    m = torch.zeros(n, grid * grid).scatter_(1, chosen, 1.0).view(n, 1, grid, grid)
    m = F.interpolate(m, size=tuple(size), mode="nearest")
    return m.view(batch, samples, 1, *size).to(device)


def _margin(logits: torch.Tensor, labels: torch.Tensor, other: torch.Tensor, toward_label: bool) -> torch.Tensor:
    """v = h_other − h_y (an attack's game), or h_y − h_other with ``toward_label``; (...,) per row."""
    v = logits.gather(-1, other.unsqueeze(-1)).squeeze(-1) - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return -v if toward_label else v


def interaction_terms(forward: Forward, images: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor,
                      masks: torch.Tensor, logits: torch.Tensor | None = None,
                      toward_label: bool = False) -> torch.Tensor:
    """Î per image, (B,): the mean over the sampled sets S (``masks`` (B, T, 1, H, W) in {0, 1}) of
    v(δ) − v(δ on Ω∖S) − v(δ on S) + v(0), differentiable in ``delta`` (B, C, H, W).

    ``forward(z)``: the model's float logits (N, K) on images z in [0, 1]; ``images`` (B, C, H, W)
    in [0, 1]; ``logits``: those of ``images + delta`` if already computed (PGD's). The game v is
    max_{c≠y} h_c − h_y (``toward_label`` flips it to the true-class margin), c chosen at x + δ."""
    b, t = masks.shape[:2]
    if logits is None:
        logits = forward(images + delta)
    with torch.no_grad():
        other = logits.detach().clone()
        other[torch.arange(b, device=other.device), labels] = float("-inf")
        other = other.argmax(1)
        v_zero = _margin(forward(images), labels, other, toward_label)
    d = delta.unsqueeze(1)
    inside = d * masks                                    # δ on S
    z = torch.cat([inside, d - inside], 1) + images.unsqueeze(1)     # (B, 2T, C, H, W): δ_S, δ_Ω∖S
    out = forward(z.flatten(0, 1)).view(b, 2 * t, -1)
    rep = lambda u: u.unsqueeze(1).expand(b, 2 * t)       # noqa: E731
    v = _margin(out, rep(labels), rep(other), toward_label)
    v_full = _margin(logits, labels, other, toward_label)
    return (v_full[:, None] - v[:, t:] - v[:, :t] + v_zero[:, None]).mean(1)


@dataclass(frozen=True)
class InteractionSettings:
    """The penalty's settings as a config value (``MinMinConfig.interaction``): λ, the unit grid,
    units per sampled set and sets per PGD step; the official code's by default."""

    lam: float = LAMBDA
    grid: int = GRID
    cells: int = CELLS
    samples: int = SAMPLES

    def __post_init__(self) -> None:
        _check(self.lam, self.grid, self.cells, self.samples)


class InteractionPenalty:
    """λ · mean over the batch of Î (a PGD ``penalty``), with fresh unit sets at every call. For the
    batch-mean cross-entropy PGD descends or ascends, each image's objective is CE_i ∓ λ·Î_i, the
    official per-image objective. ``toward_label``: the game of error-minimising noise."""

    def __init__(self, lam: float = LAMBDA, grid: int = GRID, cells: int = CELLS, samples: int = SAMPLES,
                 toward_label: bool = False, generator: torch.Generator | None = None) -> None:
        _check(lam, grid, cells, samples)
        self.lam, self.grid, self.cells, self.samples = lam, grid, cells, samples
        self.toward_label = toward_label
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __call__(self, forward: Forward, images: torch.Tensor, delta: torch.Tensor, logits: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        masks = unit_masks(len(images), tuple(images.shape[-2:]), self.grid, self.cells, self.samples,
                           self.generator, images.device)
        return self.lam * interaction_terms(forward, images, delta, labels, masks, logits, self.toward_label).mean()


class InteractionReducedPGD(PGD):
    """IR attack: L∞ PGD ascending CE − λ·Î (see the module doc), torchattacks-style:
    ``InteractionReducedPGD(model, eps=8/255, alpha=2/255, steps=100, lam=1)(images, labels)`` ->
    adversarial images (B, C, H, W) in [0, 1] with ‖x_adv − x‖∞ ≤ ε. ``lam=0`` is plain PGD (no
    penalty is evaluated). ``batch_size`` splits the images into chunks (the penalty runs 2·samples
    forward passes per image and step); None attacks them in one batch. ``generator`` (default: seeded
    0) draws the random start, if any, then the unit sets. Extra keywords go to PGD
    (``random_start``, ``loss_fn``, ...)."""

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 100,
                 lam: float = LAMBDA, grid: int = GRID, cells: int = CELLS, samples: int = SAMPLES,
                 generator: torch.Generator | None = None, batch_size: int | None = None, amp: bool = False,
                 **pgd_kwargs) -> None:
        _check(lam, grid, cells, samples)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        penalty = InteractionPenalty(lam, grid, cells, samples, False, generator) if lam > 0 else None
        super().__init__(model, eps, alpha, steps, amp=amp, penalty=penalty, generator=generator, **pgd_kwargs)
        if batch_size is not None and batch_size < 1:
            raise UnlearnableError(f"batch size must be >= 1, got {batch_size}")
        self.lam, self.batch_size = lam, batch_size

    def perturb(self, images: torch.Tensor, labels: torch.Tensor,
                delta: torch.Tensor | None = None) -> torch.Tensor:
        """δ (B, C, H, W), chunk by chunk of ``batch_size`` images."""
        bs = self.batch_size or max(len(images), 1)
        if len(images) <= bs:
            return super().perturb(images, labels, delta)
        return torch.cat([super(InteractionReducedPGD, self).perturb(
            images[s:s + bs], labels[s:s + bs], None if delta is None else delta[s:s + bs])
            for s in range(0, len(images), bs)])


@torch.no_grad()
def measure_interaction(model: nn.Module, images: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor,
                        grid: int = GRID, cells: int = CELLS, samples: int = SAMPLES, seed: int = 0,
                        toward_label: bool = False, batch_size: int = 32) -> torch.Tensor:
    """Î of given perturbations, (B,) float on CPU: ``images`` (B, C, H, W) in [0, 1], ``delta``
    the perturbation (x_adv − x), ``labels`` (B,). The model runs in eval mode and fp32; the unit
    sets come from ``seed``, so two perturbations of the same images are measured on the same sets."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    forward = lambda z: model(z).float()     # noqa: E731
    out = []
    try:
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size].to(device)
            d = delta[s:s + batch_size].to(device, x.dtype)
            y = labels[s:s + batch_size].to(device)
            m = unit_masks(len(x), tuple(x.shape[-2:]), grid, cells, samples, gen, device)
            out.append(interaction_terms(forward, x, d, y, m, toward_label=toward_label).cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0)


# ----------------------------------------------------------------------------------------------------
# transfer evaluation: adversarial examples made on a surrogate, scored on victims of other families


@dataclass
class TransferConfig:
    """Settings of a transfer run: ε, step and steps shared by PGD and IR (both start from zero,
    as the official IR does), IR's λ / grid / cells / samples, how many test images (the first ones
    every model classifies correctly), the attack chunk, and the sets used to measure Î."""

    eps: float = 16 / 255
    alpha: float = 2 / 255
    steps: int = 100
    lam: float = LAMBDA
    grid: int = GRID
    cells: int = CELLS
    samples: int = SAMPLES
    images: int = 500
    batch_size: int = 50
    measure_samples: int = SAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.eps > 0 or not self.alpha > 0 or self.steps < 1 or self.images < 1 or self.batch_size < 1:
            raise UnlearnableError("eps, alpha, steps, images and batch size must be positive")
        if not self.lam > 0:
            raise UnlearnableError(f"IR needs λ > 0 (λ = 0 is the PGD baseline), got {self.lam}")


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat([model(x[s:s + batch_size].to(device)).float().argmax(1).cpu()
                          for s in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def transfer_attack(surrogate: nn.Module, victims: Mapping[str, nn.Module], images: torch.Tensor,
                    labels: torch.Tensor, config: TransferConfig | None = None,
                    on_phase: Callable[[str], None] | None = None) -> dict:
    """Craft PGD and IR examples on ``surrogate`` and score them on it (white-box) and on each victim
    (transfer). ``images`` float (N, C, H, W) in [0, 1], ``labels`` (N,): the first
    ``config.images`` of them that the surrogate and every victim classify correctly are attacked,
    so a success rate is the share of attacked images a model then misclassifies. Returns a dict
    (JSON-ready): settings, images used, per method the success rates, mean |δ|, max ‖δ‖∞ and the
    mean measured interaction Î on the surrogate (same unit sets for both methods), and seconds."""
    cfg = config or TransferConfig()
    device = next(surrogate.parameters()).device
    say = on_phase or (lambda phase: None)
    ok = _predict(surrogate, images) == labels.cpu()
    for v in victims.values():
        ok &= _predict(v, images) == labels.cpu()
    idx = torch.nonzero(ok).flatten()[:cfg.images]
    if len(idx) == 0:
        raise UnlearnableError("no image is classified correctly by the surrogate and every victim")
    x, y = images[idx].to(device), labels[idx].to(device)
    result: dict = {"config": asdict(cfg), "eps_255": cfg.eps * 255, "alpha_255": cfg.alpha * 255,
                    "candidates": len(images), "correct_by_all": int(ok.sum()), "attacked": len(idx),
                    "victims": list(victims), "methods": {}}
    common = dict(eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, amp=False, batch_size=cfg.batch_size)
    attacks = {"pgd": InteractionReducedPGD(surrogate, lam=0.0, **common),
               "ir": InteractionReducedPGD(surrogate, lam=cfg.lam, grid=cfg.grid, cells=cfg.cells,
                                           samples=cfg.samples, generator=torch.Generator().manual_seed(cfg.seed),
                                           **common)}
    for name, atk in attacks.items():
        say(name)
        t0 = time.perf_counter()
        delta = atk.perturb(x, y)
        seconds = time.perf_counter() - t0
        adv = (x + delta).clamp(0, 1)
        rec = {"seconds": seconds, "linf_255": float((adv - x).abs().max()) * 255,
               "mean_abs_255": float((adv - x).abs().mean()) * 255,
               "white_box_success": float((_predict(surrogate, adv) != y.cpu()).float().mean()),
               "transfer_success": {k: float((_predict(v, adv) != y.cpu()).float().mean())
                                    for k, v in victims.items()}}
        say(f"{name}: interaction")
        inter = measure_interaction(surrogate, x, adv - x, y, cfg.grid, cfg.cells, cfg.measure_samples, cfg.seed,
                                    batch_size=max(1, 2048 // (2 * cfg.measure_samples)))
        rec["interaction_mean"] = float(inter.mean())
        rec["interaction_std"] = float(inter.std()) if len(inter) > 1 else 0.0
        result["methods"][name] = rec
    return result


__all__ = ["GRID", "CELLS", "SAMPLES", "LAMBDA", "unit_masks", "interaction_terms", "InteractionSettings",
           "InteractionPenalty",
           "InteractionReducedPGD", "measure_interaction", "TransferConfig", "transfer_attack"]
