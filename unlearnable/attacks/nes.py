"""Query-only (black-box) attacks: the shared pieces, and the pixel-space baseline NES
(Ilyas et al., "Black-box Adversarial Attacks with Limited Queries and Information", arXiv 1804.08598,
Algorithm 1: the NES gradient estimate with antithetic Gaussian samples, used in
projected signed-gradient steps in the L∞ ball).

A victim is any function ``images (B, C, H, W) in [0, 1] -> scores (B, K)`` (logits, or
probabilities with ``probabilities=True``): the attacks never ask it for a gradient. Every image
passed to it is one query, charged to the image it is an attempt for; an image's attack stops at
its first misclassified query (that image is returned) or before a step would exceed
``max_queries``. The attack loss is the margin of the log-scores, log s_y − max_{j≠y} log s_j
(for logits: the logit margin), which is negative exactly when the victim is wrong; it is the
loss of NP-Attack (official code, ``CW_loss``) and is used for NES as well so that the two attacks
differ only in where they search.

Why NES as the baseline: NP-Attack uses the same NES estimator, in the NP's representation space
instead of pixel space, so the comparison isolates the search space (the NP-Attack paper compares
with NES as well). A random-search attack (e.g. Square Attack) is a stronger pixel-space baseline
but would change the estimator and the space at once.

NES defaults (Ilyas et al., query-limited ImageNet setting; official code labsix/limited-blackbox-
attacks, ``main.py``): σ = 0.001, 50 queries per gradient estimate (25 antithetic pairs), momentum
0.9 on the estimate, signed steps with learning rate 0.01 at ε = 0.05. Deviations: the learning
rate defaults to ε/5 (the paper's 0.01 at its ε = 0.05, scaled to other budgets); no plateau
annealing of the learning rate and no line search (the official code halves the rate while a step
fails, spending a query per try); untargeted with the margin loss above (the paper's
query-limited attack is targeted with cross-entropy). Each iteration first queries the current
image (the success check), then spends ``samples`` queries on the estimate; probes are clipped to
[0, 1] (every query is a valid image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UnlearnableError
from .base import project

Victim = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["BlackBoxResult", "NES", "QueryCounter", "Victim", "margin", "summarize"]


@dataclass
class BlackBoxResult:
    """What a query-only attack returns for a batch of B images.

    ``adv_images``: (B, C, H, W) in [0, 1], within ε of the inputs (the first misclassified query
    where the attack succeeded, else the last image queried); ``queries``: (B,) int64, the victim
    queries spent on each image (never above ``max_queries``); ``success``: (B,) bool."""

    adv_images: torch.Tensor
    queries: torch.Tensor
    success: torch.Tensor

    def summary(self) -> dict:
        """Success rate and the mean and median queries over the successes (None if none)."""
        return summarize(self.queries, self.success)


def summarize(queries: torch.Tensor, success: torch.Tensor) -> dict:
    """{'images', 'successes', 'success_rate', 'mean_queries', 'median_queries'} (queries over the
    successful images only; the median is the lower middle value for an even count)."""
    ok = queries[success.bool()].double()
    n = int(success.numel())
    return {"images": n, "successes": int(ok.numel()),
            "success_rate": ok.numel() / n if n else None,
            "mean_queries": ok.mean().item() if ok.numel() else None,
            "median_queries": ok.median().item() if ok.numel() else None}


def margin(scores: torch.Tensor, labels: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """log s_y − max_{j≠y} log s_j for scores (B, K) and labels (B,): (B,), < 0 iff misclassified
    (up to ties). ``probabilities``: the scores are probabilities (logs are taken), else logits."""
    s = scores.float()
    s = torch.log(s.clamp_min(1e-30)) if probabilities else s
    true = s.gather(1, labels.view(-1, 1)).squeeze(1)
    other = s.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)
    return true - other


class QueryCounter:
    """Wrap a victim and count the images it is given (``count``); with ``limit``, raise
    ``UnlearnableError`` on a call that would exceed it. For auditing an attack's own accounting."""

    def __init__(self, victim: Victim, limit: int | None = None) -> None:
        self.victim, self.limit, self.count = victim, limit, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.limit is not None and self.count + len(images) > self.limit:
            raise UnlearnableError(f"query limit {self.limit} exceeded")
        self.count += len(images)
        return self.victim(images)


class BlackBoxAttack:
    """Shared state of the query-only attacks: the victim, ε, the query limit and the seed."""

    def __init__(self, victim: Victim, eps: float, max_queries: int, probabilities: bool = False,
                 seed: int = 0, batch_size: int = 16) -> None:
        if not eps > 0:
            raise UnlearnableError(f"epsilon must be > 0, got {eps}")
        if max_queries < 1 or batch_size < 1:
            raise UnlearnableError("a black-box attack needs max_queries >= 1 and batch_size >= 1")
        self.victim, self.eps, self.max_queries = victim, eps, max_queries
        self.probabilities, self.seed, self.batch_size = probabilities, seed, batch_size

    @torch.no_grad()
    def query(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One query per image: (margin (B,), misclassified (B,) bool)."""
        scores = self.victim(images)
        return margin(scores, labels, self.probabilities), scores.argmax(1) != labels

    def attack_batch(self, images: torch.Tensor, labels: torch.Tensor,
                     generator: torch.Generator) -> BlackBoxResult:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> BlackBoxResult:
        """Attack float images (B, C, H, W) in [0, 1] with true labels (B,), ``batch_size`` images
        at a time (the images of a batch are searched together, each with its own query budget)."""
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise UnlearnableError("images must be (B, C, H, W) with labels (B,)")
        if images.min() < 0 or images.max() > 1:
            raise UnlearnableError("images must be in [0, 1]")
        gen = torch.Generator().manual_seed(self.seed)
        parts = [self.attack_batch(images[s:s + self.batch_size].detach(), labels[s:s + self.batch_size], gen)
                 for s in range(0, len(images), self.batch_size)]
        return BlackBoxResult(torch.cat([p.adv_images for p in parts]), torch.cat([p.queries for p in parts]),
                              torch.cat([p.success for p in parts]))


class NES(BlackBoxAttack):
    """Pixel-space NES (see the module docstring). ``samples``: queries per gradient estimate (an
    even number: samples/2 antithetic pairs); ``sigma``: the search distribution's std in pixel
    units; ``momentum``: β of the estimate's moving average g ← β·g + (1 − β)·ĝ; ``lr``: the
    signed step in pixel units (default ε/5)."""

    def __init__(self, victim: Victim, eps: float = 8 / 255, max_queries: int = 2000, samples: int = 50,
                 sigma: float = 0.001, momentum: float = 0.9, lr: float | None = None, probabilities: bool = False,
                 seed: int = 0, batch_size: int = 16) -> None:
        super().__init__(victim, eps, max_queries, probabilities, seed, batch_size)
        if samples < 2 or samples % 2 or not sigma > 0 or not 0 <= momentum < 1:
            raise UnlearnableError("NES needs an even samples >= 2, sigma > 0 and momentum in [0, 1)")
        self.samples, self.sigma, self.momentum = samples, sigma, momentum
        self.lr = eps / 5 if lr is None else lr

    @torch.no_grad()
    def attack_batch(self, images: torch.Tensor, labels: torch.Tensor,
                     generator: torch.Generator) -> BlackBoxResult:
        b, n = len(images), self.samples // 2
        delta = torch.zeros_like(images)
        grad = torch.zeros_like(images)
        queries = torch.zeros(b, dtype=torch.long)
        success = torch.zeros(b, dtype=torch.bool)
        adv = images.clone()
        active = torch.ones(b, dtype=torch.bool)
        while True:
            # the success check of the current image (one query each)
            idx = torch.nonzero(active & (queries + 1 <= self.max_queries)).flatten()
            if len(idx) == 0:
                break
            x = (images[idx] + delta[idx]).clamp(0, 1)
            _, wrong = self.query(x, labels[idx])
            queries[idx] += 1
            adv[idx] = x
            success[idx] = wrong.cpu()
            # go on with the images still correct that can pay for an estimate and the next check
            active &= ~success & (queries + 2 * n + 1 <= self.max_queries)
            idx = torch.nonzero(active).flatten()
            if len(idx) == 0:
                break
            k = len(idx)
            u = torch.randn((k, n) + images.shape[1:], generator=generator).to(images.device)
            u = torch.cat([u, -u], 1)                                   # antithetic pairs
            x = (images[idx] + delta[idx]).clamp(0, 1)
            probes = (x.unsqueeze(1) + self.sigma * u).clamp(0, 1).flatten(0, 1)   # (k·2n, C, H, W)
            loss, _ = self.query(probes, labels[idx].repeat_interleave(2 * n))
            queries[idx] += 2 * n
            loss = loss.view(k, 2 * n, *([1] * (images.dim() - 1)))
            estimate = (loss * u).mean(1) / self.sigma
            grad[idx] = self.momentum * grad[idx] + (1 - self.momentum) * estimate
            step = delta[idx] - self.lr * grad[idx].sign()             # descend the margin
            delta[idx] = project(step, images[idx], self.eps)
        return BlackBoxResult(adv, queries, success)
