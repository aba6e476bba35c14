"""Defense-aware error-minimising noise for a labelled dataset: the one min-min engine
(``unlearnable.noise.minmin``, Huang et al., arXiv 2101.04898, Eq. 2) on a problem whose view is
the trainer's likely defenses (``unlearnable.noise.defense_views``). Issue 13, item 2.

Objective (Eq. 2 with the expectation over the defense views T, EOT, arXiv 1707.07397)::

    min_θ  E_(x,y) [ min_{‖δ‖∞ ≤ ε}  E_{t ~ T}  ℓ_t(f_θ(t(x + δ)), y) ]

with ℓ_t the defense's own loss (cross-entropy; the mixed cross-entropy for mixup and cutmix).
:class:`DefenseAwareProblem` is ``DatasetProblem`` (same batches, same pools, same δ feasibility,
same checkpoint stream) with three changes, and nothing else in the engine differs:

- ``view``: every PGD step takes its gradient through a fresh random defense view of the batch;
  ``loss_fn`` is that view's loss (mixed where it mixed);
- ``train_batch``: every surrogate batch is the perturbed images through a fresh defense view,
  with soft targets where the view mixed (so the surrogate is the victim the noise must fool:
  one trained through crop, flip, grayscale, JPEG, cutout, resize, mixup and cutmix);
- ``score`` (the stop test): accuracy and loss of the surrogate on a fresh view of every perturbed
  image of the pool, a mixed image counted right when the prediction is the label of its larger
  share.

Warm start (``DefenseViewConfig.warm_start`` = R > 0; off by default): the search first runs as plain
EM (``DatasetProblem``'s identity view, batches, loss and stop test, draw for draw, so those rounds
equal ``error_minimizing_noise``'s) until that passes its stop test or R rounds are done, then goes on
from that δ and that surrogate through the views, in the same call, checkpoint and round log
(``advance``; the state records the round the views began, ``views_from``). ``max_rounds`` caps both
phases together and must exceed R. The idea: from scratch the search spends its steps on views that
destroy the noise (JPEG-10); EM first finds a shortcut for the views to make robust. Measured at CPU
scale (``benchmarks/noise_kinds.py --kinds em+defense-aware``, README): it does not work there; the
converged EM noise scores 16 % through the views, and the view rounds trade EM's strength under
standard training (17.8 → 30.9 % protected accuracy) for a little under grayscale, with JPEG-10 and
adversarial training unmoved. Off by default; kept so that the GPU configuration can measure it.

Deviations from the paper's search, on purpose: the surrogate trains with augmentation (the views;
the official code trains it on un-augmented images), and the stop test scores views. Under views
as hard as JPEG-10 the surrogate may never reach the 99 % stop accuracy: the search then runs to
``max_rounds`` (say so when reporting). Not combinable with REM (``MinMinConfig.robust``) or the
interaction penalty: both need the identity view. Combinable with ``MinMinConfig.structure``.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import torch
from torch import nn

from ..data.datasets import ImageTensors
from ..errors import UnlearnableError
from ..train.loop import score_batches
from .defense_views import DefenseView, DefenseViewConfig
from .minmin import MinMinConfig, MinMinResult, RoundLog, minmin
from .problems import DatasetProblem


class DefenseAwareProblem(DatasetProblem):
    """A labelled dataset (uint8 ``ImageTensors`` on the search's device) seen through random defense
    views (``views``): see the module doc."""

    def __init__(self, data: ImageTensors, batch_size: int, views: DefenseViewConfig | None = None) -> None:
        super().__init__(data, batch_size)
        self.views = views or DefenseViewConfig()
        self._view: DefenseView | None = None
        self.views_from: int | None = None if self.views.warm_start else 1   # first round through the views

    @property
    def warming(self) -> bool:
        """Whether the search is still in its plain-EM warm start (module doc)."""
        return self.views_from is None

    def advance(self, log: RoundLog, stops: bool) -> bool:
        """The engine's phase hook: True for the round that ends the warm start (its stop test passed or
        ``warm_start`` rounds done), from which on every step sees the views; the same answer when asked
        again about that round (resume)."""
        if self.warming and (stops or log.round >= self.views.warm_start):
            self.views_from = log.round + 1
        return self.views_from == log.round + 1

    def fingerprint(self, h) -> None:
        super().fingerprint(h)
        h.update(b"defense-views")
        h.update(json.dumps(self.views.settings(), sort_keys=True).encode())

    def view(self, gen: torch.Generator) -> DefenseView | None:
        """A fresh random defense view (None while warming); the next ``loss_fn`` call scores through it."""
        self._view = None if self.warming else DefenseView(self.views, gen)
        return self._view

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the view the engine's PGD step just took (its mixed loss where it mixed; plain
        cross-entropy while warming)."""
        if self.warming:
            return super().loss_fn(logits, labels)
        if self._view is None:
            raise UnlearnableError("the defense-aware loss needs a view drawn first")
        return self._view.loss(logits, labels)

    def train_batch(self, delta_of, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """The next perturbed batch of the stream through a fresh view: (views (B, C, H, W) in [0, 1],
        soft targets (B, K)); while warming, the plain batch and its labels."""
        x, y = super().train_batch(delta_of, gen)
        if self.warming:
            return x, y
        view = DefenseView(self.views, gen)
        return view(x), view.soft_targets(y, self.num_groups)

    def state(self) -> dict:
        s = super().state()
        return s if not self.views.warm_start else {**s, "views_from": self.views_from}

    def load_state(self, s: dict) -> None:
        if self.views.warm_start:
            if not isinstance(s, dict) or "views_from" not in s:
                raise ValueError("the warm start's phase is missing")
            v = s["views_from"]
            if v is not None and (not isinstance(v, int) or v < 2):
                raise ValueError(f"bad first round of the views: {v!r}")
            s = {k: x for k, x in s.items() if k != "views_from"}
            self.views_from = v
        super().load_state(s)

    @torch.no_grad()
    def score(self, model, delta_of, pool, batch_size, gen) -> tuple[float, float]:
        """Accuracy (the larger share's label) and mean loss on a fresh view of every perturbed image
        of ``pool``, fp32, eval mode (while warming, ``DatasetProblem``'s plain stop test)."""
        if self.warming:
            return super().score(model, delta_of, pool, batch_size, gen)

        def batch(idx: torch.Tensor) -> tuple[int, float]:
            y = self.targets(idx)
            view = DefenseView(self.views, gen)
            logits = model(view((self.clean(idx) + delta_of(idx)).clamp(0, 1))).float()
            return int((logits.argmax(1) == view.dominant(y)).sum()), float(view.loss(logits, y)) * len(idx)

        return score_batches(model, pool, batch_size, batch)


def defense_aware_noise(surrogate: nn.Module, data: ImageTensors, config: MinMinConfig | None = None,
                        checkpoint: str | os.PathLike | None = None,
                        on_round: Callable[[RoundLog], None] | None = None,
                        on_progress: Callable[[str, int, int], None] | None = None,
                        views: DefenseViewConfig | None = None) -> MinMinResult:
    """Defense-aware error-minimising noise for a labelled dataset (``ImageTensors`` of uint8 images):
    the engine (``noise.minmin.minmin``) on a :class:`DefenseAwareProblem` with ``views`` (default:
    every defense view). Same arguments and result as ``error_minimizing_noise``; δ float32 on CPU,
    (N, C, H, W) sample-wise or (K, C, H, W) class-wise, in [-ε, ε]."""
    cfg = config or MinMinConfig()
    if cfg.robust is not None or cfg.interaction is not None:
        raise UnlearnableError("the defense-aware search cannot be combined with robust (REM) noise or the "
                               "interaction penalty: both need the identity view")
    if views is not None and views.warm_start and views.warm_start >= cfg.max_rounds:
        raise UnlearnableError(f"the warm start ({views.warm_start} rounds) must leave rounds for the views: "
                               f"raise the round cap ({cfg.max_rounds}) above it")
    device = next(surrogate.parameters()).device
    problem = DefenseAwareProblem(data.to(device), cfg.batch_size, views)
    result = minmin(surrogate, problem, cfg, checkpoint, on_round, on_progress)
    if problem.views.warm_start:
        result.views_from = problem.views_from
    return result


__all__ = ["DefenseAwareProblem", "defense_aware_noise"]
