"""Error-minimising noise (Huang et al., "Unlearnable Examples", ICLR 2021, arXiv 2101.04898).

Bi-level min-min problem (Eq. 2 of the paper)::

    min_θ  E_(x,y) [ min_{‖δ‖∞ ≤ ε}  CE(f_θ(x + δ), y) ]

solved by alternation: train the surrogate θ for ``train_steps`` batches on (x + δ, y), then run
PGD that *decreases* the loss for every sample (sample-wise δ_i) or for every class (class-wise
δ_y, updated with the mean of the per-sample steps of each batch), and stop once the surrogate's
accuracy on the perturbed data reaches ``stop_accuracy``.

Defaults are the official code's (github.com/HanxunH/Unlearnable-Examples, README commands and
perturbation.py): ε = 8/255, step size 0.8/255, 20 PGD steps (sample-wise) or 1 (class-wise),
10 surrogate train steps per round, batch 512, zero initial noise, no augmentation while
generating, surrogate SGD lr 0.1 / momentum 0.9 / weight decay 5e-4 / grad clip 5, stop when
the error on the perturbed data is below 0.01 (sample-wise, i.e. accuracy ≥ 99 %) or 0.1
(class-wise, measured on a random 20 % subset that is also the data class-wise noise is
optimised on).

Deviations, on purpose: (1) a round cap ``max_rounds`` (the reference loops forever when the
threshold is out of reach); (2) the surrogate's batches are drawn from a seeded shuffle rather
than the reference's fixed order; (3) δ is kept feasible (x + δ ∈ [0, 1]) at every step;
(4) checkpoint/resume after every round, bit-for-bit on CPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import ImageTensors
from ..errors import UnlearnableError
from ..train.loop import StandardStep, evaluate, prepare_batch
from .pgd import PGD

MODES = ("samplewise", "classwise")
logger = logging.getLogger(__name__)


@dataclass
class MinMinConfig:
    """Settings of the min-min search; ``None`` fields take the paper's default for the mode."""

    mode: str = "samplewise"
    eps: float = 8 / 255
    step_size: float = 0.8 / 255
    steps: int | None = None            # PGD steps per round: 20 sample-wise, 1 class-wise
    train_steps: int = 10               # surrogate SGD steps per round
    batch_size: int = 512
    stop_accuracy: float | None = None  # 0.99 sample-wise, 0.90 class-wise
    max_rounds: int = 200
    classwise_portion: float = 0.2      # share of the data class-wise noise is searched on
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float | None = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UnlearnableError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not self.eps > 0:
            raise UnlearnableError(f"epsilon must be > 0, got {self.eps}")
        if self.steps is None:
            self.steps = 20 if self.mode == "samplewise" else 1
        if self.stop_accuracy is None:
            self.stop_accuracy = 0.99 if self.mode == "samplewise" else 0.90
        if self.max_rounds < 1 or self.train_steps < 0 or self.batch_size < 1:
            raise UnlearnableError("max_rounds and batch_size must be >= 1, train_steps >= 0")
        if not 0 < self.classwise_portion <= 1:
            raise UnlearnableError("classwise_portion must be in (0, 1]")


@dataclass
class RoundLog:
    round: int
    surrogate_acc: float   # accuracy of the surrogate on the perturbed (search) data
    surrogate_loss: float
    seconds: float


@dataclass
class MinMinResult:
    """``delta``: float32 on CPU, (N, C, H, W) sample-wise or (K, C, H, W) class-wise, in [-ε, ε]."""

    delta: torch.Tensor
    mode: str
    history: list[RoundLog] = field(default_factory=list)
    converged: bool = False
    seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.history)

    def per_sample(self, labels: torch.Tensor) -> torch.Tensor:
        """δ for each sample, (N, C, H, W): itself (sample-wise) or its class's δ (class-wise)."""
        return self.delta[labels.cpu()] if self.mode == "classwise" else self.delta


def _fingerprint(cfg: MinMinConfig, data: ImageTensors, model: nn.Module) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(str(tuple(data.images.shape)).encode())
    h.update(data.labels.cpu().numpy().tobytes())
    h.update(data.images[:: max(1, len(data) // 64)].cpu().numpy().tobytes())
    h.update(type(model).__name__.encode())
    h.update(str(sum(p.numel() for p in model.parameters())).encode())
    return h.hexdigest()[:16]


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _BatchStream:
    """Endless seeded stream of batch indices over ``pool`` (drop-last, reshuffled each pass)."""

    def __init__(self, pool: torch.Tensor, batch_size: int, gen: torch.Generator) -> None:
        self.pool, self.bs, self.gen = pool, min(batch_size, len(pool)), gen
        self.perm = self.pool[torch.randperm(len(pool), generator=gen)]
        self.cursor = 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.bs > len(self.perm):
            self.perm = self.pool[torch.randperm(len(self.pool), generator=self.gen)]
            self.cursor = 0
        idx = self.perm[self.cursor:self.cursor + self.bs]
        self.cursor += self.bs
        return idx

    def state(self) -> dict:
        return {"perm": self.perm, "cursor": self.cursor}

    def load(self, s: dict) -> None:
        self.perm, self.cursor = s["perm"], s["cursor"]


def error_minimizing_noise(
    surrogate: nn.Module,
    data: ImageTensors,
    config: MinMinConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    on_round: Callable[[RoundLog], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> MinMinResult:
    """Search error-minimising noise for ``data`` (uint8 images) with ``surrogate`` (trained in
    place). With ``checkpoint``, state is saved after every round and an existing checkpoint from
    the same settings and data is resumed; the result equals an uninterrupted run's.
    ``on_progress(phase, done, total)`` reports batches of the 'train' / 'search' / 'eval' phases."""
    cfg = config or MinMinConfig()
    device = next(surrogate.parameters()).device
    data = data.to(device)
    n, k = len(data), data.num_classes
    classwise = cfg.mode == "classwise"
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.SGD(surrogate.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if classwise:
        m = max(k, int(round(n * cfg.classwise_portion)))
        pool = torch.sort(torch.randperm(n, generator=gen)[:m]).values
        delta = torch.zeros((k,) + tuple(data.images.shape[1:]), device=device)
    else:
        pool = torch.arange(n)
        delta = torch.zeros(data.images.shape, device=device)
    stream = _BatchStream(pool, cfg.batch_size, gen)
    train_step = StandardStep(grad_clip=cfg.grad_clip)
    history: list[RoundLog] = []
    elapsed = 0.0
    ckpt = Path(checkpoint) if checkpoint else None
    fp = _fingerprint(cfg, data, surrogate)
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != fp:
            raise UnlearnableError(f"{ckpt} is a checkpoint of a run with other settings or data; "
                                   "delete it or choose another output folder")
        surrogate.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        delta = state["delta"].to(device)
        gen.set_state(state["generator"])
        stream.load(state["stream"])
        history = [RoundLog(**r) for r in state["history"]]
        elapsed = state["elapsed"]
        if state.get("done"):
            return MinMinResult(delta.cpu(), cfg.mode, history, state["converged"], elapsed)

    pgd = PGD(surrogate, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps, minimize=True)
    pool_dev = pool.to(device)
    search_data = data.subset(pool_dev) if classwise else data
    converged = bool(history) and history[-1].surrogate_acc >= cfg.stop_accuracy
    while not converged and len(history) < cfg.max_rounds:
        t0 = time.perf_counter()
        # 1) a few SGD steps of the surrogate on the currently perturbed data (no augmentation)
        surrogate.train()
        for j in range(cfg.train_steps):
            idx = stream.next().to(device)
            x, y = prepare_batch(data.images[idx]), data.labels[idx]
            d = delta[y] if classwise else delta[idx]
            train_step(surrogate, optimizer, (x + d).clamp_(0, 1), y)
            if on_progress:
                on_progress("train", j + 1, cfg.train_steps)
        # 2) PGD that minimises the loss, over all samples (sample-wise) or the search pool
        if classwise:
            order = pool_dev[torch.randperm(len(pool), generator=gen).to(device)]
        else:
            order = pool_dev
        nb = (len(order) + cfg.batch_size - 1) // cfg.batch_size
        for b in range(nb):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = prepare_batch(data.images[idx]), data.labels[idx]
            if classwise:
                new = pgd.perturb(x, y, delta[y])
                onehot = F.one_hot(y, k).float()                      # (B, K)
                sums = onehot.t() @ new.flatten(1)                    # (K, CHW)
                counts = onehot.sum(0)
                present = counts > 0
                mean = sums[present] / counts[present, None]
                delta[present] = mean.view(-1, *delta.shape[1:]).clamp(-cfg.eps, cfg.eps)
            else:
                delta[idx] = pgd.perturb(x, y, delta[idx])
            if on_progress:
                on_progress("search", b + 1, nb)
        # 3) stop condition: surrogate accuracy on the perturbed search data
        if classwise:
            acc, loss_val = evaluate(surrogate, search_data, cfg.batch_size, delta=delta[search_data.labels])
        else:
            acc, loss_val = evaluate(surrogate, data, cfg.batch_size, delta=delta)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        log = RoundLog(len(history) + 1, acc, loss_val, seconds)
        history.append(log)
        logger.info("round %d: surrogate acc on perturbed data %.4f, loss %.4f (%.1fs)",
                    log.round, acc, loss_val, seconds)
        converged = acc >= cfg.stop_accuracy
        if ckpt is not None:
            _atomic_save({"fingerprint": fp, "model": surrogate.state_dict(),
                          "optimizer": optimizer.state_dict(), "delta": delta.cpu(),
                          "generator": gen.get_state(), "stream": stream.state(),
                          "history": [asdict(h) for h in history], "elapsed": elapsed,
                          "done": converged or len(history) >= cfg.max_rounds,
                          "converged": converged}, ckpt)
        if on_round:
            on_round(log)
    return MinMinResult(delta.cpu(), cfg.mode, history, converged, elapsed)
