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

    def fingerprint(self, h) -> None:
        super().fingerprint(h)
        h.update(b"defense-views")
        h.update(json.dumps(self.views.settings(), sort_keys=True).encode())

    def view(self, gen: torch.Generator) -> DefenseView:
        """A fresh random defense view; the next ``loss_fn`` call scores through it."""
        self._view = DefenseView(self.views, gen)
        return self._view

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the view the engine's PGD step just took (its mixed loss where it mixed)."""
        if self._view is None:
            raise UnlearnableError("the defense-aware loss needs a view drawn first")
        return self._view.loss(logits, labels)

    def train_batch(self, delta_of, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """The next perturbed batch of the stream through a fresh view: (views (B, C, H, W) in [0, 1],
        soft targets (B, K))."""
        x, y = super().train_batch(delta_of, gen)
        view = DefenseView(self.views, gen)
        return view(x), view.soft_targets(y, self.num_groups)

    @torch.no_grad()
    def score(self, model, delta_of, pool, batch_size, gen) -> tuple[float, float]:
        """Accuracy (the larger share's label) and mean loss on a fresh view of every perturbed image
        of ``pool``, fp32, eval mode."""
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
    device = next(surrogate.parameters()).device
    problem = DefenseAwareProblem(data.to(device), cfg.batch_size, views)
    return minmin(surrogate, problem, cfg, checkpoint, on_round, on_progress)


__all__ = ["DefenseAwareProblem", "defense_aware_noise"]
