"""Error-minimising noise (Huang et al., "Unlearnable Examples", ICLR 2021, arXiv 2101.04898).

Bi-level min-min problem (Eq. 2 of the paper)::

    min_θ  E_(x,y) [ min_{‖δ‖∞ ≤ ε}  CE(f_θ(x + δ), y) ]

solved by alternation: train the surrogate θ for ``train_steps`` batches on (x + δ, y), then run
PGD that *decreases* the loss for every sample (sample-wise δ_i) or for every class (class-wise
δ_y: each sample of the batch takes its PGD steps from its class's δ, and δ_y becomes the mean of
those per-sample results, clipped to ±ε), and stop once the surrogate's accuracy on the perturbed
data reaches ``stop_accuracy``.

Defaults are the official code's (github.com/HanxunH/Unlearnable-Examples at f347155,
perturbation.py and scripts/cifar10/min-min-noise/*/exp_setting.sh): ε = 8/255, step size
0.8/255, 20 PGD steps (sample-wise) or 1 (class-wise), 10 surrogate train steps per round,
batch 512, zero initial noise, no augmentation while generating, surrogate SGD lr 0.1 /
momentum 0.9 / weight decay 5e-4 / grad clip 5.

- Sample-wise: the surrogate trains on, and PGD and the stop test run over, the whole set.
- Class-wise (perturbation.py ``universal_perturbation`` with ``--use_subset``): the surrogate
  trains on the *whole* training set, each image carrying its class's δ (the ``train_dataset``
  loader, perturbation.py l.162-187); a *stratified* subset of ``classwise_portion`` = 20 % of
  each class (``_split_validation_set``, dataset.py l.288-324, ``train_test_split(...,
  stratify=targets)``) is used only for the noise update (l.189-222) and the stop test (l.225).
- Stop test: error < 0.01 on the perturbed data, i.e. ``stop_accuracy`` 0.99, in *both* modes.
  For class-wise the repository disagrees with itself: its README command uses
  ``--universal_stop_error 0.1`` (README.md l.57) but the experiment script that produced the
  paper's class-wise CIFAR-10 results uses 0.01 (scripts/cifar10/min-min-noise/classwise-noise/
  exp_setting.sh l.15; also SVHN and CIFAR-100). We follow the experiment script, because its
  figures are the ones the paper reports; ``stop_accuracy=0.9`` gives the README's variant.

Precision: the whole search runs in fp32, also on CUDA where victims train under bf16 autocast.
bf16 keeps 8 significant bits, so in [0.5, 1) its spacing (2⁻⁸ ≈ 1/256) exceeds the 0.8/255 PGD
step: in bf16 a step on a bright pixel vanishes or is rounded up to 2⁻⁸, and the 99 % stop test
would be judged on rounded inputs. The surrogate's training steps are fp32 too, as in the
reference (which has no mixed precision): for sample-wise noise they are under 1 % of a round's
work (10 batches against 20 PGD steps over all the data), for class-wise about a third (10 batches
of 512 against one PGD step over 20 % of the data), a cost accepted to keep the surrogate the
reference's. (cuDNN may still use TF32 for fp32 convolutions where torch allows it; its spacing
in [0.5, 1), 2⁻¹¹, is about a sixth of a step.)

Deviations, on purpose: (1) a round cap ``max_rounds`` (the reference loops forever when the
threshold is out of reach); (2) the surrogate's batches are drawn from a seeded shuffle rather
than the reference's loader order, and class-wise noise updates visit the whole subset each round
(the reference's loader drops the last partial batch); (3) δ is kept feasible (x + δ ∈ [0, 1])
at every step; (4) checkpoint/resume after every round, bit-for-bit on CPU. The stopping
criteria (``max_rounds``, ``stop_accuracy``) are not part of a checkpoint's identity: a run
that hit its cap continues from its checkpoint when rerun with a higher cap or stricter target.
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
    stop_accuracy: float | None = None  # 0.99 (error 0.01) in both modes, the experiment scripts'
    max_rounds: int = 200
    classwise_portion: float = 0.2      # stratified share of each class that class-wise δ is updated and tested on
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
            self.stop_accuracy = 0.99
        if not 0 < self.stop_accuracy <= 1:
            raise UnlearnableError(f"stop accuracy must be in (0, 1] (0.99 = 99 %), got {self.stop_accuracy}")
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


def stratified_subset(labels: torch.Tensor, portion: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of a random ``portion`` of each class (at least one image per present class),
    like scikit-learn's ``train_test_split(..., stratify=labels)`` that the reference uses.
    ``labels``: (N,) int; returns int64 (M,) on CPU."""
    labels = labels.cpu().long()
    n = len(labels)
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.sort(labels[perm], stable=True).indices]   # grouped by class, random within
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    lab = labels[order]
    rank = torch.arange(n) - starts[lab]                          # position inside its class
    quota = (counts.double() * portion).round().long().clamp(min=1)
    return torch.sort(order[rank < quota[lab]]).values


# Stopping criteria are left out of a checkpoint's identity, so a capped run can be extended.
_STOPPING = ("max_rounds", "stop_accuracy")
CHECKPOINT_FORMAT = "unlearnable-minmin-checkpoint/2"


def _fingerprint(cfg: MinMinConfig, data: ImageTensors, model: nn.Module) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k not in _STOPPING}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(str(tuple(data.images.shape)).encode())
    h.update(data.labels.cpu().numpy().tobytes())
    h.update(data.images[:: max(1, len(data) // 64)].cpu().numpy().tobytes())
    h.update(type(model).__name__.encode())
    h.update(str(sum(p.numel() for p in model.parameters())).encode())
    return h.hexdigest()[:16]


def _atomic_save(obj: dict, path: Path) -> None:
    """Write ``obj`` to ``path`` through a flushed and fsynced temp file and a rename, so a crash or
    a full disk leaves the previous checkpoint (never a truncated one); the temp file has a fixed
    name, so a leftover from a killed run is overwritten by the next save."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_tensor(value: object, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != dtype:
        raise ValueError(f"{name} is not a {dtype} tensor of shape {tuple(shape)}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return value


def _validate_state(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, delta: torch.Tensor,
                    eps: float, n: int, gen_state: torch.Tensor) -> None:
    """Raise ValueError unless ``state`` (from :func:`torch.load` with ``weights_only=True``) fits
    this run: the surrogate's and optimizer's tensors, δ's shape and its budget ‖δ‖∞ ≤ ε, the
    generator, the batch stream over ``n`` images and the round log."""
    need = ("model", "optimizer", "delta", "generator", "stream", "history", "elapsed")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    own = model.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict) or set(saved) != set(own):
        raise ValueError("the surrogate's weights do not match the model")
    for k, v in own.items():
        _check_tensor(saved[k], f"weight {k}", v.shape, v.dtype)
    d = _check_tensor(state["delta"], "δ", delta.shape, torch.float32)
    if d.numel() and float(d.abs().max()) > eps + 1e-6:
        raise ValueError(f"δ exceeds the budget ε = {eps * 255:.3g}/255 (max {float(d.abs().max()) * 255:.3g}/255)")
    _check_tensor(state["generator"], "generator state", gen_state.shape, gen_state.dtype)
    stream = state["stream"]
    if not isinstance(stream, dict) or not isinstance(stream.get("cursor"), int) or not 0 <= stream["cursor"] <= n:
        raise ValueError("bad batch-stream position")
    perm = _check_tensor(stream.get("perm"), "batch order", (n,), torch.int64)
    if not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError("the batch order is not a permutation of the data")
    params = list(model.parameters())
    opt = state["optimizer"]
    try:
        groups = opt["param_groups"]
        ids = [i for g in groups for i in g["params"]]
        if len(groups) != len(optimizer.param_groups) or sorted(ids) != list(range(len(params))):
            raise ValueError("the optimizer's parameter groups do not match the model")
        for i, s in opt["state"].items():
            for key, v in s.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    _check_tensor(v, f"optimizer {key}", params[i].shape, params[i].dtype)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"malformed optimizer state ({e})") from None
    hist = state["history"]
    fields = {"round", "surrogate_acc", "surrogate_loss", "seconds"}
    try:
        ok = isinstance(hist, list) and all(isinstance(r, dict) and set(r) == fields and r["round"] == i + 1
                                            and 0 <= r["surrogate_acc"] <= 1 for i, r in enumerate(hist))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError("malformed round log")
    if not isinstance(state["elapsed"], float) or not state["elapsed"] >= 0:
        raise ValueError("malformed elapsed time")


def _read_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` loaded with ``weights_only=True``; None (with a warning, so the
    search starts over) if it cannot be read or is of another format version; raises if it is a
    valid checkpoint of a run with other settings or data."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a checkpoint of this version")
    except Exception as e:  # truncated, corrupt, foreign or old file: all mean "redo the work"
        logger.warning("%s cannot be used (%s: %s); starting the noise search over", path, type(e).__name__, e)
        return None
    if state.get("fingerprint") != fingerprint:
        raise UnlearnableError(f"{path} is a checkpoint of a run with other settings or data; "
                               "delete it or choose another output folder")
    return state


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
    the same settings and data is resumed (stopping criteria may differ: a run stopped by its cap
    continues); the result equals an uninterrupted run's, also after an interrupt in mid-round.
    A checkpoint that cannot be read or fails validation (including ‖δ‖∞ ≤ ε) is reported with a
    warning and the search starts over. ``on_progress(phase, done, total)`` reports batches of the
    'train' / 'search' phases."""
    cfg = config or MinMinConfig()
    device = next(surrogate.parameters()).device
    data = data.to(device)
    n, k = len(data), data.num_classes
    classwise = cfg.mode == "classwise"
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.SGD(surrogate.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if classwise:  # noise update and stop test on a stratified subset; the surrogate trains on all
        pool = stratified_subset(data.labels, cfg.classwise_portion, gen)
        delta = torch.zeros((k,) + tuple(data.images.shape[1:]), device=device)
    else:
        pool = torch.arange(n)
        delta = torch.zeros(data.images.shape, device=device)
    stream = _BatchStream(torch.arange(n), cfg.batch_size, gen)
    train_step = StandardStep(grad_clip=cfg.grad_clip, amp=False)   # fp32 throughout: see module doc
    history: list[RoundLog] = []
    elapsed = 0.0
    ckpt = Path(checkpoint) if checkpoint else None
    fp = _fingerprint(cfg, data, surrogate)
    state = _read_checkpoint(ckpt, fp) if ckpt is not None and ckpt.exists() else None
    if state is not None:
        try:
            _validate_state(state, surrogate, optimizer, delta, cfg.eps, n, gen.get_state())
        except ValueError as e:
            logger.warning("%s cannot be used (%s); starting the noise search over", ckpt, e)
        else:
            surrogate.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            delta = state["delta"].to(device)
            gen.set_state(state["generator"])
            stream.load(state["stream"])
            history = [RoundLog(**r) for r in state["history"]]
            elapsed = state["elapsed"]

    pgd = PGD(surrogate, eps=cfg.eps, alpha=cfg.step_size, steps=cfg.steps, minimize=True, amp=False)
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
        # 2) PGD that minimises the loss, over all samples (sample-wise) or the search subset
        if classwise:
            order = pool_dev[torch.randperm(len(pool), generator=gen).to(device)]
        else:
            order = pool_dev
        nb = (len(order) + cfg.batch_size - 1) // cfg.batch_size
        for b in range(nb):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = prepare_batch(data.images[idx]), data.labels[idx]
            if classwise:  # per-sample PGD from the class's δ, then δ_y = mean of the results
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
        # 3) stop condition: surrogate accuracy on the perturbed search data, in fp32
        if classwise:
            acc, loss_val = evaluate(surrogate, search_data, cfg.batch_size, delta=delta[search_data.labels],
                                     amp=False)
        else:
            acc, loss_val = evaluate(surrogate, data, cfg.batch_size, delta=delta, amp=False)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        log = RoundLog(len(history) + 1, acc, loss_val, seconds)
        history.append(log)
        logger.info("round %d: surrogate acc on perturbed data %.4f, loss %.4f (%.1fs)",
                    log.round, acc, loss_val, seconds)
        converged = acc >= cfg.stop_accuracy
        if ckpt is not None:
            _atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": fp, "model": surrogate.state_dict(),
                          "optimizer": optimizer.state_dict(), "delta": delta.cpu(),
                          "generator": gen.get_state(), "stream": stream.state(),
                          "history": [asdict(h) for h in history], "elapsed": elapsed}, ckpt)
        if on_round:
            on_round(log)
    return MinMinResult(delta.cpu(), cfg.mode, history, converged, elapsed)
