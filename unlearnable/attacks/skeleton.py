"""The adversarial interaction attack on skeleton reaction models (Koren, Ke, Wang, Bailey & Ma,
"Adversarial Interaction Attack: Fooling AI to Misinterpret Human Intentions", arXiv 2101.06704).

A reaction model f predicts the reactor's skeleton sequence from the actor's (here
``unlearnable.skeleton.reaction.ReactionGRU``, which is also given the reactor's first frame).
The attack perturbs the actor's joints, x' = x + δ, so that the predicted reaction goes wrong:

- untargeted: maximise E(f(x'), r) − λ·S(δ), with r the true reaction when given, else the clean
  prediction f(x);
- targeted:   minimise E(f(x'), r*) + λ·S(δ), with r* a target reaction (e.g. another class's
  mean reaction, ``unlearnable.skeleton.reaction.target_reactions``);

E = mean over scored frames (1..L−1) and joints of the squared joint distance, S = the
smoothness penalty (mean ‖Δ²δ‖², the change of acceleration), subject to the constraints of
``unlearnable.skeleton.constraints``: every real joint within ε (Euclidean, data units) of its
clean place, every bone at its clean length, padding frames untouched. Solver: projected gradient
steps: each step moves every joint by ``alpha`` along its own normalised gradient (the L2
analogue, per joint, of PGD's signed step, Madry et al. arXiv 1706.06083), then
``project_skeleton`` restores both hard constraints exactly; the iterate with the best objective
is returned.

The paper has no official code and the copies we could read stop before its method section, so
these are our choices: the squared-error objectives above; the per-joint Euclidean bound (a
coordinate-wise L∞ bound would favour diagonal moves); smoothness as a penalty with weight
λ = ``smooth_weight`` (a hard bound is not compatible with a one-sweep exact projection); the
sequential tree projection (constraints module); untargeted without the true reaction starts
from a random point in the ε-ball (at δ = 0 the gradient of E(f(x + δ), f(x)) vanishes).
Defaults (ours, data units of the normalised Kinect coordinates, where a forearm is about 0.1 and
a joint moves 0.01-0.02 per frame): ε = 0.02, α = ε/4, 50 steps, λ = 1.

Calling convention, as the other attacks: ``atk = SkeletonInteractionAttack(model, skeleton,
eps=0.02, alpha=0.005, steps=50)``, ``adv = atk(actor, lengths, target=None, first=reactor[:, 0])``
with actor (B, T, J, 3) zero-padded after ``lengths`` (B,) frames; the device is the model's.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ..errors import UnlearnableError
from ..skeleton.constraints import project_skeleton, random_perturbation, smoothness_penalty
from ..skeleton.data import Skeleton, frame_mask
from ..skeleton.reaction import squared_error


class SkeletonInteractionAttack:
    """Constrained projected-gradient attack on a reaction model (module docstring).

    ``model(actor, lengths, first) -> reaction`` (B, T, J, 3); ``skeleton`` the joint order and
    tree; ``eps`` the per-joint displacement bound and ``alpha`` the per-joint step (data units);
    ``smooth_weight`` λ; ``random_start`` starts every attack from a random point of the ε-ball
    (drawn from ``generator`` on the CPU). The model is run in eval mode, restored afterwards;
    only the input gradient is computed."""

    def __init__(self, model: nn.Module, skeleton: Skeleton, eps: float = 0.02, alpha: float | None = None,
                 steps: int = 50, smooth_weight: float = 1.0, random_start: bool = False,
                 generator: torch.Generator | None = None) -> None:
        alpha = eps / 4 if alpha is None else alpha
        if not eps > 0:
            raise UnlearnableError(f"epsilon must be > 0, got {eps}")
        if not alpha > 0 or steps < 1:
            raise UnlearnableError("an attack needs a positive step size and at least one step")
        if smooth_weight < 0:
            raise UnlearnableError(f"the smoothness weight must be ≥ 0, got {smooth_weight}")
        self.model, self.skeleton, self.eps, self.alpha, self.steps = model, skeleton, eps, alpha, steps
        self.smooth_weight, self.random_start, self.generator = smooth_weight, random_start, generator

    def objective(self, adv: torch.Tensor, clean: torch.Tensor, lengths: torch.Tensor, first: torch.Tensor,
                  reference: torch.Tensor, targeted: bool) -> torch.Tensor:
        """(B,) the quantity each step increases: E − λS (untargeted) or −(E + λS) (targeted)."""
        err = squared_error(self.model(adv, lengths, first), reference, lengths)
        pen = self.smooth_weight * smoothness_penalty(adv - clean, lengths) if self.smooth_weight else 0.0
        return -(err + pen) if targeted else err - pen

    def __call__(self, actor: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor | None = None, *,
                 first: torch.Tensor, reaction: torch.Tensor | None = None) -> torch.Tensor:
        """The perturbed actor (B, T, J, 3), on the input's device and dtype, meeting the constraints.
        ``target`` (B, T, J, 3): the reaction to steer towards (targeted), or None (untargeted);
        ``first`` (B, J, 3): the reactor's first frame, which the model is given; ``reaction``
        (B, T, J, 3): the true reaction, maximised away from when untargeted (default: the clean
        prediction)."""
        if actor.dim() != 4 or actor.shape[-1] != 3 or lengths.shape != actor.shape[:1]:
            raise UnlearnableError(f"expected actor (B, T, J, 3) and lengths (B,), got {tuple(actor.shape)} "
                                   f"and {tuple(lengths.shape)}")
        dev = next(self.model.parameters()).device
        clean = actor.detach().to(dev, torch.float32)
        lengths, first = lengths.to(dev), first.detach().to(dev, torch.float32)
        was_training = self.model.training
        self.model.eval()
        # cuDNN's RNN backward refuses eval mode: use the native kernels for the input gradient
        flags = torch.backends.cudnn.flags(enabled=False) if dev.type == "cuda" else nullcontext()
        try:
            with flags:
                adv = self._run(clean, lengths, first, target, reaction)
        finally:
            self.model.train(was_training)
        return adv.to(actor.device, actor.dtype)

    def perturb(self, actor: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor | None = None, *,
                first: torch.Tensor, reaction: torch.Tensor | None = None) -> torch.Tensor:
        """δ = adversarial actor − actor (zero on padding frames)."""
        return self(actor, lengths, target, first=first, reaction=reaction) - actor

    def _run(self, clean: torch.Tensor, lengths: torch.Tensor, first: torch.Tensor,
             target: torch.Tensor | None, reaction: torch.Tensor | None) -> torch.Tensor:
        targeted = target is not None
        if targeted:
            reference = target.detach().to(clean.device, torch.float32)
        elif reaction is not None:
            reference = reaction.detach().to(clean.device, torch.float32)
        else:
            with torch.no_grad():
                reference = self.model(clean, lengths, first)
        if self.random_start or (not targeted and reaction is None):
            adv = random_perturbation(clean, lengths, self.eps, self.skeleton, self.generator)
        else:
            adv = clean.clone()
        real = frame_mask(lengths, clean.shape[1])[:, :, None, None]
        best, best_obj = adv.clone(), torch.full((clean.shape[0],), -float("inf"), device=clean.device)
        for step in range(self.steps + 1):
            adv = adv.detach().requires_grad_(step < self.steps)
            with torch.enable_grad() if step < self.steps else torch.no_grad():
                obj = self.objective(adv, clean, lengths, first, reference, targeted)
            better = obj.detach() > best_obj
            best = torch.where(better[:, None, None, None], adv.detach(), best)
            best_obj = torch.where(better, obj.detach(), best_obj)
            if step == self.steps:
                break
            (grad,) = torch.autograd.grad(obj.sum(), adv)
            direction = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-20)
            proposed = adv.detach() + self.alpha * direction * real
            adv = project_skeleton(proposed, clean, self.eps, self.skeleton, lengths)
        return best
