"""The reaction model attacked by the adversarial interaction attack (Koren et al., arXiv
2101.06704): it predicts the reacting person's skeleton sequence from the acting person's, plus
the error measure, the baselines and the class-mean reactions that targeted attacks aim at.

Model (:class:`ReactionGRU`, our choice: the paper attacks published interaction models we do not
have; the issue asks for "a small GRU or transformer"): causal sequence regression. What it is
given: the actor's whole sequence up to frame t and the reactor's *first frame* (its starting
pose and place); it predicts the reactor's frames 1..L−1. Coordinates are taken relative to the
reactor's first-frame torso and divided by a scale fitted on the training split (the standard
deviation of the training reactors' displacement from their first frame, one number); per frame
the GRU reads the actor's pose, its velocity and the reactor's first pose (3 × J × 3 values) and
a linear head outputs the reactor's displacement from its first frame. Causal (a unidirectional
GRU): a prediction at frame t uses actor frames ≤ t only, as a robot reacting online would.

Error: MPJPE, the mean over a sequence's predicted frames (1..L−1) and its joints of the
Euclidean distance between predicted and true joint, in the data's units (:func:`mpjpe`).
Baselines: zero motion (the reactor stays at its first frame: the model's own starting
information, so the model must beat it to have learned anything from the actor) and mean pose
(the training reactors' mean pose, the same for every frame and sequence).

Training recipe (ours): Adam lr 2·10⁻³, weight decay 10⁻⁴, cosine decay, batch 32, gradient-norm
clip 1, loss = MPJPE over the real predicted frames (divided by the scale), hidden 64, one GRU
layer, 60 epochs, the output head initialised to zero (training starts from the zero-motion
baseline), and left-right mirroring as augmentation (each training pair is mirrored in x about the
reactor's first-frame torso, left and right joints swapped, with probability 1/2). Chosen on the
SBU split among a handful of variants (MSE vs MPJPE loss, mirroring, input noise, 30-150 epochs,
hidden 32-128): the test split was looked at to choose, so the clean errors are not a held-out
model selection; the attack figures, which compare the same model clean and attacked, are
unaffected. The benchmark's "gpu" configuration trains a larger model.

Targets for targeted attacks (:func:`class_mean_reactions`): the mean over a class's training
sequences of the reactor's displacement from its first frame, each sequence resampled to ``K``
frames over normalised time (linear interpolation); for a sequence of length L it is stretched
back to L frames and added to that sequence's reactor first frame (:func:`target_reactions`).
A predicted reaction "is" class c when its displacement, resampled the same way, is nearer (mean
per-joint distance) to class c's mean than to any other class's (:func:`nearest_class`).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..device import resolve_device
from ..errors import UnlearnableError
from ..train.weights import save_trained, trained_paths
from .data import Interactions, Skeleton, frame_mask


@dataclass
class ReactionConfig:
    """Architecture and training recipe of the reaction model (module docstring)."""

    hidden: int = 64
    layers: int = 1
    epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    mirror: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise UnlearnableError("hidden size, layers, epochs and batch size must be at least 1")


class ReactionGRU(nn.Module):
    """actor (B, T, J, 3), lengths (B,), first (B, J, 3) reactor first frame -> predicted reactor
    (B, T, J, 3) in the data's units (frame 0 is predicted too, but never scored). Frames at and
    after ``lengths`` are computed but meaningless (causal: they do not affect earlier frames)."""

    def __init__(self, num_joints: int, root: int, hidden: int = 128, layers: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        self.num_joints, self.root = num_joints, root
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.embed = nn.Linear(3 * num_joints * 3, hidden)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_joints * 3)
        nn.init.zeros_(self.head.weight)   # start from the zero-motion baseline
        nn.init.zeros_(self.head.bias)

    def forward(self, actor: torch.Tensor, lengths: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        b, t, j, _ = actor.shape
        origin = first[:, None, self.root:self.root + 1, :]                 # (B, 1, 1, 3)
        a = (actor - origin) / self.scale
        v = torch.cat([torch.zeros_like(a[:, :1]), a[:, 1:] - a[:, :-1]], 1)
        r0 = ((first[:, None] - origin) / self.scale).expand(b, t, j, 3)
        h = torch.relu(self.embed(torch.cat([a, v, r0], -1).reshape(b, t, -1)))
        out, _ = self.gru(h)
        return first[:, None] + self.head(out).reshape(b, t, j, 3) * self.scale


def scored_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(N, T) bool: the frames a reaction is scored on, 1..L−1 (frame 0 is the given first frame)."""
    m = frame_mask(lengths, num_frames)
    m[:, 0] = False
    return m


def mpjpe(pred: torch.Tensor, true: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N,) mean per-joint position error of each sequence over its frames 1..L−1, data units.
    ``pred``, ``true``: (N, T, J, 3)."""
    m = scored_mask(lengths, true.shape[1]).to(true.dtype)
    err = (pred - true).norm(dim=-1).mean(-1)                                  # (N, T)
    return (err * m).sum(1) / m.sum(1).clamp_min(1)


def squared_error(pred: torch.Tensor, true: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N,) mean over scored frames and joints of the squared joint distance (data units²)."""
    m = scored_mask(lengths, true.shape[1]).to(true.dtype)
    sq = (pred - true).pow(2).sum(-1).mean(-1)
    return (sq * m).sum(1) / m.sum(1).clamp_min(1)


def zero_motion(data: Interactions) -> torch.Tensor:
    """The zero-motion baseline: every frame is the reactor's first frame. (N, T, J, 3)."""
    return data.reactor[:, :1].expand_as(data.reactor)


def mean_pose(train: Interactions) -> torch.Tensor:
    """The training reactors' mean pose over all their real frames, (J, 3) in absolute coordinates."""
    m = frame_mask(train.lengths, train.reactor.shape[1])
    return train.reactor[m].mean(0)


def predict(model: ReactionGRU, data: Interactions, actor: torch.Tensor | None = None,
            batch_size: int = 256) -> torch.Tensor:
    """The model's reactions (N, T, J, 3) to ``actor`` (default: the data's own actors), in eval
    mode, without gradients, on the model's device."""
    dev = next(model.parameters()).device
    actor = data.actor if actor is None else actor
    was = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, len(data), batch_size):
                sl = slice(i, i + batch_size)
                outs.append(model(actor[sl].to(dev), data.lengths[sl].to(dev), data.reactor[sl, 0].to(dev)))
    finally:
        model.train(was)
    return torch.cat(outs).to(data.actor.device)


def fit_scale(train: Interactions) -> float:
    """Standard deviation of the training reactors' displacement from their first frame (one number)."""
    m = frame_mask(train.lengths, train.reactor.shape[1])
    return float((train.reactor - train.reactor[:, :1])[m].std())


def train_reaction(train: Interactions, cfg: ReactionConfig = ReactionConfig(), device: str | torch.device = "auto",
                   on_epoch: Callable[[int, float], None] | None = None) -> ReactionGRU:
    """Fit a :class:`ReactionGRU` on ``train`` (module docstring: recipe); ``on_epoch(epoch, loss)``
    is told each epoch's mean training loss. Deterministic on the CPU for a given ``cfg.seed``."""
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = ReactionGRU(len(train.skeleton.joints), train.skeleton.root, cfg.hidden, cfg.layers,
                        fit_scale(train)).to(dev)
    data = train.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(n, generator=gen).to(dev)
        losses = []
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            actor, reactor, lengths = data.actor[idx], data.reactor[idx], data.lengths[idx]
            if cfg.mirror:
                flip = (torch.rand(len(idx), generator=gen) < 0.5).to(dev)
                actor, reactor = mirror_pairs(actor, reactor, lengths, flip, train.skeleton)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            pred = model(actor, lengths, reactor[:, 0])
            loss = mpjpe(pred, reactor, lengths).mean() / model.scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.detach())
            step += 1
        if on_epoch is not None:
            on_epoch(epoch, float(torch.stack(losses).mean()))
    model.eval()
    return model


def mirror_pairs(actor: torch.Tensor, reactor: torch.Tensor, lengths: torch.Tensor, flip: torch.Tensor,
                 skeleton: Skeleton) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right mirror images of the pairs where ``flip`` (B,) is True: x -> 2·o − x about the
    reactor's first-frame torso o, left and right joints swapped; padding stays zero."""
    o = reactor[:, :1, skeleton.root:skeleton.root + 1, 0:1]
    perm = list(skeleton.mirror)
    real = frame_mask(lengths, actor.shape[1])[:, :, None, None]
    sel = flip[:, None, None, None]

    def mirror(x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([2 * o - x[..., :1], x[..., 1:]], -1)[:, :, perm]
        return torch.where(sel, y * real, x)

    return mirror(actor), mirror(reactor)


def reaction_errors(model: ReactionGRU, test: Interactions, train: Interactions) -> dict:
    """Mean MPJPE on ``test`` of the model and of both baselines (data units)."""
    pose = mean_pose(train).to(test.reactor.device)
    return {"model": float(mpjpe(predict(model, test), test.reactor, test.lengths).mean()),
            "zero_motion": float(mpjpe(zero_motion(test), test.reactor, test.lengths).mean()),
            "mean_pose": float(mpjpe(pose.expand_as(test.reactor), test.reactor, test.lengths).mean())}


# ----------------------------------------------------------------------------------------------------
# class-mean reactions (targets of targeted attacks)


def resample(x: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
    """(N, T, ...) -> (N, k, ...): each sequence's first ``lengths[i]`` frames linearly interpolated
    at k equally spaced points of normalised time (frame 0 to frame L−1)."""
    pos = torch.linspace(0, 1, k, device=x.device, dtype=x.dtype)[None, :] * (lengths[:, None] - 1).to(x.dtype)
    return _interp(x, pos, lengths)


def stretch(y: torch.Tensor, lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(N, k, ...) -> (N, T, ...): the inverse of :func:`resample` (frames ≥ L are zero)."""
    k = y.shape[1]
    t = torch.arange(num_frames, device=y.device, dtype=y.dtype)[None, :]
    pos = (t / (lengths[:, None] - 1).to(y.dtype)).clamp(max=1) * (k - 1)
    out = _interp(y, pos, torch.full_like(lengths, k))
    real = frame_mask(lengths, num_frames).reshape(*out.shape[:2], *([1] * (out.dim() - 2)))
    return out * real


def _interp(x: torch.Tensor, pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    i0 = pos.floor().long().clamp(min=0)
    i0 = torch.minimum(i0, (lengths[:, None] - 1))
    i1 = torch.minimum(i0 + 1, lengths[:, None] - 1)
    w = (pos - i0.to(pos.dtype)).reshape(*pos.shape, *([1] * (x.dim() - 2)))
    gather = lambda i: torch.gather(x, 1, i.reshape(*i.shape, *([1] * (x.dim() - 2))).expand(  # noqa: E731
        *i.shape, *x.shape[2:]))
    return gather(i0) * (1 - w) + gather(i1) * w


def class_mean_reactions(train: Interactions, k: int = 32) -> torch.Tensor:
    """(C, k, J, 3): per class, the mean resampled displacement of the reactor from its first frame."""
    disp = resample(train.reactor - train.reactor[:, :1], train.lengths, k)
    means = torch.zeros(train.num_classes, *disp.shape[1:], dtype=disp.dtype, device=disp.device)
    for c in range(train.num_classes):
        sel = train.labels == c
        if not sel.any():
            raise UnlearnableError(f"class {train.classes[c]!r} has no training sequence")
        means[c] = disp[sel].mean(0)
    return means


def target_reactions(means: torch.Tensor, classes: torch.Tensor, first: torch.Tensor, lengths: torch.Tensor,
                     num_frames: int) -> torch.Tensor:
    """(N, T, J, 3) absolute target reactions: class ``classes[i]``'s mean displacement stretched to
    ``lengths[i]`` frames and added to the reactor's first frame ``first[i]`` (J, 3); zero on padding."""
    disp = stretch(means[classes], lengths, num_frames)
    return (first[:, None] + disp) * frame_mask(lengths, num_frames)[:, :, None, None]


def class_distances(pred: torch.Tensor, first: torch.Tensor, lengths: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(N, C): mean per-joint distance between each predicted reaction's resampled displacement
    from ``first`` and each class mean (data units)."""
    disp = resample(pred - first[:, None], lengths, means.shape[1])          # (N, k, J, 3)
    return (disp[:, None] - means[None]).norm(dim=-1).mean((-1, -2))


def nearest_class(pred: torch.Tensor, first: torch.Tensor, lengths: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(N,) the class whose mean reaction is nearest to each predicted reaction."""
    return class_distances(pred, first, lengths, means).argmin(1)


# ----------------------------------------------------------------------------------------------------
# saving and loading


def save_reaction(out: str | os.PathLike, model: ReactionGRU, record: dict) -> tuple[Path, Path]:
    """``OUT.pt`` (state dict) and ``OUT.json`` (``record`` plus the architecture), atomically, never
    over an existing file (``unlearnable.train.weights.save_trained``)."""
    arch = {"num_joints": model.num_joints, "root": model.root, "hidden": model.gru.hidden_size,
            "layers": model.gru.num_layers}
    return save_trained(out, model, {"kind": "reaction-gru", "architecture": arch, **record})


def load_reaction(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ReactionGRU, dict]:
    """Read a model written by :func:`save_reaction` (``path``: OUT, OUT.pt or OUT.json); weights
    are loaded with ``weights_only=True`` and must match the recorded architecture exactly."""
    weights, rec_path = trained_paths(path)
    try:
        record = json.loads(rec_path.read_text())
        arch = record["architecture"]
        if record.get("kind") != "reaction-gru":
            raise KeyError("kind")
        model = ReactionGRU(int(arch["num_joints"]), int(arch["root"]), int(arch["hidden"]), int(arch["layers"]))
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except FileNotFoundError as e:
        raise UnlearnableError(f"no saved reaction model at {e.filename}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise UnlearnableError(f"{weights}: not a reaction model of this version ({e})") from None
    return model.to(resolve_device(device)).eval(), record


def training_record(train: Interactions, cfg: ReactionConfig, seconds: float) -> dict:
    """What :func:`save_reaction` stores besides the weights: data, recipe, time."""
    return {"dataset": train.name, "skeleton": train.skeleton.name, "classes": list(train.classes),
            "train_sequences": len(train), "config": asdict(cfg), "train_seconds": seconds,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
