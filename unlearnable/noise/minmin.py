"""The min-min engine: error-minimising noise (Huang et al., "Unlearnable Examples", ICLR 2021,
arXiv 2101.04898), one loop for every input kind. What differs between datasets, photos and (next)
faces is a small *problem* object (``unlearnable.noise.problems``): the surrogate's training batches,
the view of the data the surrogate and PGD see (identity for a dataset, the scraper view for
photos), the stop test's data, and what a feasible δ is. The loop, the class-wise update rule, the
stopping rule, checkpoint/resume and the round log live here once.

Bi-level min-min problem (Eq. 2 of the paper)::

    min_θ  E_(x,y) [ min_{‖δ‖∞ ≤ ε}  CE(f_θ(x + δ), y) ]

solved by alternation: train the surrogate θ for ``train_steps`` batches on (x + δ, y), then run
``steps`` PGD steps (``unlearnable.attacks.pgd``) that *decrease* the loss, for every sample
(sample-wise δ_i) or for every class (class-wise δ_y: at each step each sample of a batch steps
from its class's δ, and δ_y becomes the mean of those per-sample results, clipped to ±ε), and stop
once the surrogate's accuracy on the perturbed data reaches ``stop_accuracy`` (and, where set, its
loss is below ``stop_loss`` after at least ``min_rounds`` rounds). Steps are the outer loop and
batches the inner one, so with more than one step every class-wise step averages over the batch.

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

Photos (``MinMinConfig.for_photos``) fine-tune a pretrained surrogate (lr 0.01), take 10 PGD
steps per round through random scraper views, stop at 99 % view accuracy *and* view loss ≤ 0.05
after at least 5 rounds, and cap the search at 20 rounds: sized for a laptop CPU (see
``unlearnable.noise.problems.ReferenceBankProblem``).

Deviations, on purpose: (1) a round cap ``max_rounds`` (the reference loops forever when the
threshold is out of reach); (2) the surrogate's batches are drawn from a seeded shuffle rather
than the reference's loader order, and class-wise noise updates visit the whole subset each round
(the reference's loader drops the last partial batch); (3) δ is kept feasible (x + δ ∈ [0, 1])
at every step; (4) checkpoint/resume after every round, bit-for-bit on CPU. The stopping
criteria (``max_rounds``, ``stop_accuracy``) are not part of a checkpoint's identity: a run
that hit its cap continues from its checkpoint when rerun with a higher cap or stricter target.

Under torchrun the same loop runs on every rank, sharing the surrogate's batches (DDP), sample-wise δ
(by rows) and class-wise updates (all-reduced); ``unlearnable.distributed`` says how, and within which
tolerance of one process's result.

Option, off by default (``interaction=None``: not an op, not a draw of the generator more):
``MinMinConfig.interaction`` adds the interaction penalty of the IR transfer attack (Wang et al.,
arXiv 2010.04055; ``unlearnable.attacks.interaction``) to every PGD step, so that the noise should
hold on victims of other families than the surrogate. Sign and game: the paper finds that
perturbations whose units *cooperate* (positive Shapley interaction of the game the perturbation
pursues) are specific to the network they were made on, and penalises that interaction. Here the
pursued game is the true-class margin v(S) = h_y − max_{c≠y} h_c on x + δ_S (the noise lowers the
loss), so the penalty is +λ·Î of that margin, added to the loss the search descends: each unit's
noise is pushed to raise the margin on its own, an additive pattern (the linearly separable kind
of shortcut that makes such noise work, Yu et al. arXiv 2111.00898) rather than a combination
this surrogate happens to respond to. Needs the identity view (datasets; not photos). Sets of
units are drawn from the engine's generator, so a checkpointed run still resumes bit for bit.

Option, off by default (``robust=None``: not an op, not a draw more): ``MinMinConfig.robust``
makes the search robust error-minimising noise (REM, Fu et al., arXiv 2203.14533;
``unlearnable.noise.robust``): the surrogate trains adversarially at radius ρ_a, each noise step's
loss is taken at the worst case within ρ_a under sampled crops and flips, and the stop test scores
that worst case. Same rounds, same sample-wise / class-wise rules; needs the identity view.

Option, off by default (``structure=None``: not an op, not a draw more): ``MinMinConfig.structure``
('luminance', 'lowpass', 'luminance+lowpass', ...) projects every stepped δ by a linear projection P
that keeps the ε-ball (the noise in luminance only, or block-constant), then back onto the pixel
range: noise that grayscale and JPEG keep (``unlearnable.noise.structure``); 'balanced' takes out the
colour cast that gray-world white balance would (not linear: an offset per channel, then the clip).
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..attacks.interaction import InteractionPenalty, InteractionSettings
from ..attacks.pgd import PGD
from ..data.storage import settings_sha256, write_atomic
from ..errors import UnlearnableError
from ..train.loop import StandardStep
from .robust import AdversarialSurrogateStep, RobustSettings, robust_noise_step, robust_score
from .structure import parse_structure, structure_projection, structured_step

MODES = ("samplewise", "classwise")
logger = logging.getLogger(__name__)


@dataclass
class MinMinConfig:
    """Settings of the min-min search; ``None`` fields take the paper's default for the mode.
    ``for_photos`` gives the photo defaults."""

    mode: str = "samplewise"
    eps: float = 8 / 255
    step_size: float = 0.8 / 255
    steps: int | None = None            # PGD steps per round: 20 sample-wise, 1 class-wise
    train_steps: int = 10               # surrogate SGD steps per round
    batch_size: int = 512               # PGD and stop-test batch
    stop_accuracy: float | None = None  # 0.99 (error 0.01) in both modes, the experiment scripts'
    max_rounds: int = 200
    classwise_portion: float = 0.2      # stratified share of each class that class-wise δ is updated and tested on
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float | None = 5.0
    seed: int = 0
    min_rounds: int = 1                 # do not stop before this many rounds
    stop_loss: float | None = None      # also require the stop test's mean loss to be at most this
    interaction: InteractionSettings | None = None   # IR penalty on the noise's unit interactions (module doc)
    robust: RobustSettings | None = None              # REM: adversarial surrogate and worst-case noise (module doc)
    structure: str | None = None                      # P of every stepped δ: 'luminance', 'balanced', ... (module doc)

    def settings(self) -> dict:
        """The settings as a plain dict (manifests, fingerprints); an option that is off (``interaction``,
        ``robust`` None) is left out, so runs without it keep the identity they had before it existed."""
        s = asdict(self)
        for option in ("interaction", "robust", "structure"):
            if s[option] is None:
                del s[option]
        return s

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
        if self.max_rounds < 1 or self.steps < 1 or self.train_steps < 0 or self.batch_size < 1:
            raise UnlearnableError("max_rounds, steps and batch_size must be >= 1, train_steps >= 0")
        if not 0 < self.classwise_portion <= 1:
            raise UnlearnableError("classwise_portion must be in (0, 1]")
        if self.structure is not None:
            self.structure = parse_structure(self.structure)

    @classmethod
    def for_photos(cls, **overrides) -> "MinMinConfig":
        """The photo search's defaults: class-wise (measured stronger on photos), 10 PGD steps per
        round through random scraper views, the pretrained surrogate fine-tuned at lr 0.01, all
        photos in every update, at least 5 and at most 20 rounds, stop at 99 % view accuracy with
        view loss ≤ 0.05; PGD batches of 256."""
        base = dict(mode="classwise", steps=10, max_rounds=20, min_rounds=5, stop_loss=0.05, batch_size=256,
                    lr=0.01, classwise_portion=1.0)
        return cls(**{**base, **overrides})

    def stops(self, log: "RoundLog") -> bool:
        """Whether the search is done after ``log`` (the cap aside)."""
        return (log.round >= self.min_rounds and log.surrogate_acc >= self.stop_accuracy
                and (self.stop_loss is None or log.surrogate_loss <= self.stop_loss))


@dataclass
class RoundLog:
    round: int
    surrogate_acc: float   # accuracy of the surrogate on the perturbed data as the problem scores it
    surrogate_loss: float  # its mean cross-entropy there
    seconds: float


@dataclass
class MinMinResult:
    """``delta``: float32 on CPU, (N, C, H, W) sample-wise or (K, C, H, W) class-wise, in [-ε, ε]."""

    delta: torch.Tensor
    mode: str
    history: list[RoundLog] = field(default_factory=list)
    converged: bool = False
    seconds: float = 0.0
    views_from: int | None = None   # defense-aware warm start: the first round through the views

    @property
    def rounds(self) -> int:
        return len(self.history)

    def per_sample(self, labels: torch.Tensor) -> torch.Tensor:
        """δ for each sample, (N, C, H, W): itself (sample-wise) or its class's δ (class-wise)."""
        return self.delta[labels.cpu()] if self.mode == "classwise" else self.delta


class Problem(Protocol):
    """What the engine needs from an input kind (``unlearnable.noise.problems`` has the two today).

    ``groups`` (N,) on the device: the class index of each sample, which selects its class-wise δ;
    ``num_groups``: how many class-wise δ; ``shape``: (C, H, W) of one δ.
    ``clip_patterns``: whether a class-wise δ, stepped from one sample, is projected onto that
    sample's pixel range before the class mean (the reference's rule for datasets) or only onto the
    ε-ball (a pattern shared by photos that differ, each clipped when it is applied).
    ``loss_fn``: the loss PGD descends. Optional ``shardable`` (absent: False): whether the search may be
    shared by torchrun's ranks (``unlearnable.distributed``). Optional ``advance(log, stops) -> bool``
    (absent: never): called after every round's stop test (and on resume with the last round), True when
    the problem moves on to its next phase after round ``log.round``, so the search goes on although
    ``stops`` (the stop test passed); it must answer the same when asked again about that round."""

    groups: torch.Tensor
    num_groups: int
    shape: tuple[int, int, int]
    clip_patterns: bool
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __len__(self) -> int: ...

    def fingerprint(self, h) -> None:
        """Feed what identifies the data into ``h`` (hashlib), for a checkpoint's identity."""

    def search_pool(self, classwise: bool, portion: float, gen: torch.Generator) -> torch.Tensor:
        """Sorted indices (CPU int64) whose δ the PGD updates and the stop test scores."""

    def round_order(self, pool: torch.Tensor, classwise: bool, gen: torch.Generator) -> torch.Tensor:
        """The order the PGD visits ``pool`` in this round (on the device)."""

    def train_batch(self, delta_of: Callable[[torch.Tensor], torch.Tensor],
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One surrogate training batch (inputs, targets) on the currently perturbed data."""

    def clean(self, idx: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] of ``idx`` (the PGD's x)."""

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """The surrogate's labels for ``idx``."""

    def view(self, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The transform PGD takes each step's gradient through (None: identity)."""

    def score(self, model: nn.Module, delta_of: Callable[[torch.Tensor], torch.Tensor], pool: torch.Tensor,
              batch_size: int, gen: torch.Generator) -> tuple[float, float]:
        """(accuracy, mean loss) of ``model`` on the perturbed ``pool``: the stop test."""

    def state(self) -> dict:
        """What must be saved to resume the batch stream; ``load_state`` validates and restores it
        (raising ValueError when it does not fit)."""

    def load_state(self, state: dict) -> None: ...


# Stopping criteria are left out of a checkpoint's identity, so a capped run can be extended.
_STOPPING = ("max_rounds", "stop_accuracy", "min_rounds", "stop_loss")
CHECKPOINT_FORMAT = "unlearnable-minmin-checkpoint/2"


def _fingerprint(cfg: MinMinConfig, problem: Problem, model: nn.Module) -> str:
    settings = {k: v for k, v in cfg.settings().items() if k not in _STOPPING}
    h = settings_sha256(settings)
    problem.fingerprint(h)
    h.update(type(model).__name__.encode())
    h.update(str(sum(p.numel() for p in model.parameters())).encode())
    return h.hexdigest()[:16]


def _atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` streamed through the one atomic writer (``data.storage.write_atomic``: unique
    temp file, fsync, rename), so a crash or a full disk leaves the previous checkpoint, never a
    truncated one. Not read back (``verify=False``): it is large, and validated when loaded."""
    write_atomic(path, lambda f: torch.save(obj, f), verify=False)


def check_tensor(value: object, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """``value`` if it is a finite ``dtype`` tensor of ``shape``; else ValueError (loaded state)."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != dtype:
        raise ValueError(f"{name} is not a {dtype} tensor of shape {tuple(shape)}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return value


def _validate_state(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, delta: torch.Tensor,
                    eps: float, gen_state: torch.Tensor) -> None:
    """Raise ValueError unless ``state`` (from :func:`torch.load` with ``weights_only=True``) fits
    this run: the surrogate's and optimizer's tensors, δ's shape and its budget ‖δ‖∞ ≤ ε, the
    generator and the round log (the batch stream is the problem's to check)."""
    need = ("model", "optimizer", "delta", "generator", "stream", "history", "elapsed")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    own = model.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict) or set(saved) != set(own):
        raise ValueError("the surrogate's weights do not match the model")
    for k, v in own.items():
        check_tensor(saved[k], f"weight {k}", v.shape, v.dtype)
    d = check_tensor(state["delta"], "δ", delta.shape, torch.float32)
    if d.numel() and float(d.abs().max()) > eps + 1e-6:
        raise ValueError(f"δ exceeds the budget ε = {eps * 255:.3g}/255 (max {float(d.abs().max()) * 255:.3g}/255)")
    check_tensor(state["generator"], "generator state", gen_state.shape, gen_state.dtype)
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
                    check_tensor(v, f"optimizer {key}", params[i].shape, params[i].dtype)
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


def minmin(surrogate: nn.Module, problem: Problem, config: MinMinConfig | None = None,
           checkpoint: str | os.PathLike | None = None,
           on_round: Callable[[RoundLog], None] | None = None,
           on_progress: Callable[[str, int, int], None] | None = None) -> MinMinResult:
    """Search error-minimising noise for ``problem`` with ``surrogate`` (trained in place; its device
    is the search's). With ``checkpoint``, state is saved after every round and an existing
    checkpoint from the same settings and data is resumed (stopping criteria may differ: a run
    stopped by its cap continues); the result equals an uninterrupted run's, also after an
    interrupt in mid-round. A checkpoint that cannot be read or fails validation (including
    ‖δ‖∞ ≤ ε) is reported with a warning and the search starts over. ``on_progress(phase, done,
    total)`` reports the batches of the 'train' and 'search' phases."""
    cfg = config or MinMinConfig()
    device = next(surrogate.parameters()).device
    classwise = cfg.mode == "classwise"
    dctx = distributed.current()        # under torchrun: this rank's share (``unlearnable.distributed``)
    if dctx.active:
        distributed.check_search(dctx, cfg, problem, cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.SGD(surrogate.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    pool = problem.search_pool(classwise, cfg.classwise_portion, gen)
    # sample-wise: the rows of δ this rank holds and searches (one process: all of them)
    ranges = dctx.row_ranges(len(problem), cfg.batch_size)
    lo, hi = (0, len(problem)) if classwise else ranges[dctx.rank]
    delta = torch.zeros(((problem.num_groups if classwise else hi - lo),) + tuple(problem.shape), device=device)
    train_step = (StandardStep(grad_clip=cfg.grad_clip, amp=False) if cfg.robust is None   # fp32: see module doc
                  else AdversarialSurrogateStep(cfg.robust, cfg.grad_clip, gen))
    if dctx.active:
        train_step = distributed.SurrogateStep(dctx, surrogate, cfg.grad_clip)
    history: list[RoundLog] = []
    elapsed = 0.0
    ckpt = Path(checkpoint) if checkpoint else None
    fp = _fingerprint(cfg, problem, surrogate)
    state = _read_checkpoint(ckpt, fp) if ckpt is not None and ckpt.exists() else None
    sharded = state is not None and "delta_shards" in state
    if state is not None and not classwise and (dctx.active or sharded):
        state = distributed.load_rows(dctx, state, ckpt, (lo, hi), tuple(delta.shape), cfg.eps)
    if state is not None:
        try:
            _validate_state(state, surrogate, optimizer, delta, cfg.eps, gen.get_state())
            problem.load_state(state["stream"])
        except ValueError as e:
            logger.warning("%s cannot be used (%s); starting the noise search over", ckpt, e)
        else:
            surrogate.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            delta = state["delta"].to(device)
            gen.set_state(state["generator"])
            history = [RoundLog(**r) for r in state["history"]]
            elapsed = state["elapsed"]

    def delta_of(idx: torch.Tensor) -> torch.Tensor:
        return delta[problem.groups[idx]] if classwise else delta[idx if lo == 0 else idx - lo]

    def train_delta(idx: torch.Tensor) -> torch.Tensor:   # sharded: the batch's rows come from their ranks
        return delta_of(idx) if classwise or not dctx.active else dctx.take_rows(delta, idx, lo)

    pool_dev = pool.to(device)
    search_pool = score_pool = pool_dev
    if dctx.active:                     # this rank's share of the search and of the stop test
        search_pool = pool_dev if classwise else pool_dev[lo:hi]
        a, b = dctx.row_ranges(len(pool_dev), cfg.batch_size)[dctx.rank]
        score_pool = pool_dev[a:b]
    advance = getattr(problem, "advance", None)

    def done(log: RoundLog) -> bool:      # the stop test passed, and the problem has no next phase to start
        stops = cfg.stops(log)
        moves_on = advance is not None and advance(log, stops)   # asked every round: a phase may end at a cap
        return stops and not moves_on

    converged = bool(history) and done(history[-1])
    while not converged and len(history) < cfg.max_rounds:
        t0 = time.perf_counter()
        # 1) a few SGD steps of the surrogate on the currently perturbed data
        surrogate.train()
        for j in range(cfg.train_steps):
            x, y = problem.train_batch(train_delta, gen)
            train_step(surrogate, optimizer, x, y)
            if on_progress:
                on_progress("train", j + 1, cfg.train_steps)
        # 2) PGD that minimises the loss, steps outer and batches inner, the surrogate frozen
        delta = _search(surrogate, problem, cfg, delta, search_pool, classwise, gen, on_progress, dctx, lo)
        # 3) stop test: the surrogate on the perturbed search data, in fp32
        if dctx.active:
            acc, loss_val = distributed.shared_score(dctx, problem, surrogate, delta_of, score_pool, cfg.batch_size,
                                                     gen)
        elif cfg.robust is None:
            acc, loss_val = problem.score(surrogate, delta_of, pool_dev, cfg.batch_size, gen)
        else:
            acc, loss_val = robust_score(surrogate, problem, delta_of, pool_dev, cfg.batch_size, cfg.robust, gen)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        log = RoundLog(len(history) + 1, acc, loss_val, seconds)
        history.append(log)
        logger.info("round %d: surrogate acc on perturbed data %.4f, loss %.4f (%.1fs)",
                    log.round, acc, loss_val, seconds)
        converged = done(log)
        if ckpt is not None:
            state = {"format": CHECKPOINT_FORMAT, "fingerprint": fp, "model": surrogate.state_dict(),
                     "optimizer": optimizer.state_dict(), "delta": delta.cpu(),
                     "generator": gen.get_state(), "stream": problem.state(),
                     "history": [asdict(h) for h in history], "elapsed": elapsed}
            if dctx.active or sharded:   # rows as shards, the rest by rank 0 (``distributed.save_checkpoint``)
                distributed.save_checkpoint(dctx, state, ckpt, None if classwise or not dctx.active else ranges,
                                            _atomic_save)
            else:
                _atomic_save(state, ckpt)
        if on_round:
            on_round(log)
    if dctx.active and not classwise:   # δ gathered once, on rank 0; the others keep no δ (0 rows)
        delta = dctx.gather_rows(delta, ranges)
    return MinMinResult(delta.detach().cpu(), cfg.mode, history, converged, elapsed)


def _search(model: nn.Module, problem: Problem, cfg: MinMinConfig, delta: torch.Tensor, pool: torch.Tensor,
            classwise: bool, gen: torch.Generator, on_progress, dctx: distributed.Context = distributed.SINGLE,
            offset: int = 0) -> torch.Tensor:
    """One round of the noise update: ``cfg.steps`` PGD steps over ``pool`` in batches. Each
    batch's δ is projected onto its feasible set before the first step (as PGD starts). Class-wise,
    at every step each sample steps from its class's δ and δ_y becomes the mean of the stepped
    copies in the batch, clipped to ±ε (perturbation.py ``universal_perturbation``).
    Under torchrun (``dctx``): sample-wise, ``delta`` holds rows [offset, offset + len(delta)) and
    ``pool`` is this rank's; class-wise, each rank steps its slice of every batch and the class sums
    and counts are summed over the ranks."""
    order = problem.round_order(pool, classwise, gen)
    it = cfg.interaction
    penalty = None if it is None else InteractionPenalty(it.lam, it.grid, it.cells, it.samples, True, gen)
    pgd = PGD(model, eps=cfg.eps, alpha=cfg.step_size, steps=1, minimize=True, loss_fn=problem.loss_fn,
              amp=False, clip_images=problem.clip_patterns or not classwise, penalty=penalty,
              grad_projection=None if cfg.structure is None else structure_projection(cfg.structure))
    step = pgd.step if cfg.robust is None else functools.partial(robust_noise_step, pgd, settings=cfg.robust,
                                                                   generator=gen)
    if cfg.structure is not None:
        step = structured_step(step, cfg.structure, pgd)
    bs = cfg.batch_size
    batches = [order[b:b + bs] for b in range(0, len(order), bs)]
    total = cfg.steps * len(batches)
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    k = len(delta)
    try:
        for s in range(cfg.steps):
            for b, idx in enumerate(batches):
                if classwise and dctx.active:    # this rank's slice of the batch
                    lo, hi = dctx.split(len(idx))
                    idx = idx[lo:hi]
                x, y = problem.clean(idx), problem.targets(idx)
                pgd.transform = problem.view(gen)
                if classwise:
                    g = problem.groups[idx]
                    d = delta[g]
                    if s == 0:
                        d = pgd.project(d, x)
                    new = step(x, y, d)
                    onehot = F.one_hot(g, k).float()                  # (B, K)
                    sums = dctx.all_reduce_sum(onehot.t() @ new.flatten(1))   # (K, CHW)
                    counts = dctx.all_reduce_sum(onehot.sum(0))
                    present = counts > 0
                    mean = sums[present] / counts[present, None]
                    delta[present] = mean.view(-1, *delta.shape[1:]).clamp(-cfg.eps, cfg.eps)
                else:
                    rows = idx if offset == 0 else idx - offset
                    d = delta[rows]
                    if s == 0:
                        d = pgd.project(d, x)
                    delta[rows] = step(x, y, d)
                if on_progress:
                    on_progress("search", s * len(batches) + b + 1, total)
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return delta


def error_minimizing_noise(surrogate: nn.Module, data, config: MinMinConfig | None = None,
                           checkpoint: str | os.PathLike | None = None,
                           on_round: Callable[[RoundLog], None] | None = None,
                           on_progress: Callable[[str, int, int], None] | None = None) -> MinMinResult:
    """Error-minimising noise for a labelled dataset (``ImageTensors`` of uint8 images): the engine on
    a ``DatasetProblem`` (identity view, the reference's rules); see :func:`minmin`."""
    from .problems import DatasetProblem

    cfg = config or MinMinConfig()
    device = next(surrogate.parameters()).device
    return minmin(surrogate, DatasetProblem(data.to(device), cfg.batch_size), cfg, checkpoint, on_round, on_progress)


__all__ = ["MinMinConfig", "MinMinResult", "RoundLog", "Problem", "minmin", "error_minimizing_noise"]
