"""The training loop: the whole dataset sits on the device as one uint8 tensor, batches are
drawn by a seeded permutation, augmented in one batched op (random crop pad 4 + flip), and
fed to a small replaceable ``step`` function that does the update.

Recipe defaults follow the Unlearnable Examples code (arXiv 2101.04898, configs/cifar10):
SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine annealing to 0 over the epochs,
gradient-norm clip 5.0, batch 128. bf16 autocast and channels_last on CUDA.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import random_crop_flip, to_float
from ..data.datasets import ImageTensors
from ..device import autocast, resolve_device
from ..errors import UnlearnableError


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the victim's or surrogate's recipe)."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" (per epoch, to 0), "multistep" (x0.1 at 50% and 75%), "constant"
    grad_clip: float | None = 5.0
    augment: bool = True  # random crop (pad 4) + horizontal flip
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UnlearnableError("epochs and batch size must be at least 1")
        if self.schedule not in ("cosine", "multistep", "constant"):
            raise UnlearnableError(f"unknown schedule {self.schedule!r}")


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float | None
    test_acc: float | None
    seconds: float
    val_loss: float | None = None   # on the held-out validation split of the training data, if given
    val_acc: float | None = None


class StepFn(Protocol):
    """Does one update on a float batch x (B, C, H, W) in [0, 1] with labels y (B,);
    returns the (detached) mean loss and logits used for the train-accuracy readout.

    Optional protocol: a step with ``uses_index = True`` is also given ``index=`` (B,), the
    batch's positions in the training set (per-sample state such as TCR's targets), and a step
    with an ``end_epoch(epoch)`` method is told when each epoch (1-based) ends."""

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class StandardStep:
    """Empirical risk minimisation: forward, ``loss_fn``, backward, optional grad-norm clip, SGD step.
    ``amp=False`` keeps the forward in fp32 on CUDA too (the noise search's surrogate)."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 grad_clip: float | None = 5.0, amp: bool = True) -> None:
        self.loss_fn = loss_fn
        self.grad_clip = grad_clip
        self.amp = amp

    def __call__(self, model, optimizer, x, y):
        with autocast(x.device) if self.amp else nullcontext():
            logits = model(x)
        loss = self.loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        optimizer.step()
        return loss.detach(), logits.detach()


def build_model(arch: str, num_classes: int, in_channels: int, seed: int,
                device: torch.device) -> nn.Module:
    """A freshly initialised registry model, its init drawn from ``seed`` (global RNG untouched)."""
    from ..models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    device = resolve_device(device)
    model = model.to(device)
    if device.type in ("cuda", "cpu"):
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.schedule == "multistep":
        return cfg.lr * (0.1 ** sum(epoch >= m for m in (cfg.epochs // 2, cfg.epochs * 3 // 4)))
    return cfg.lr


def prepare_batch(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float [0, 1], channels_last on CPU/CUDA (faster convolutions there)."""
    x = to_float(images_u8)
    if x.device.type in ("cuda", "cpu"):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageTensors, batch_size: int = 1000,
             delta: torch.Tensor | None = None, amp: bool = True) -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy) of ``model`` on ``data`` in eval mode.
    ``delta`` (float, broadcastable to one batch or (N, C, H, W)) is added before clamping to [0, 1].
    ``amp=False`` evaluates in fp32 on CUDA too (the noise search's stop test)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    device = next(model.parameters()).device
    n = len(data)
    for s in range(0, n, batch_size):
        x = prepare_batch(data.images[s:s + batch_size].to(device))
        y = data.labels[s:s + batch_size].to(device)
        if delta is not None:
            d = delta[s:s + batch_size] if delta.dim() == 4 and delta.shape[0] == n else delta
            x = (x + d.to(device)).clamp_(0, 1)
        with autocast(device) if amp else nullcontext():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return correct / max(n, 1), loss_sum / max(n, 1)


def score_batches(model: nn.Module, pool: torch.Tensor, batch_size: int,
                  batch: Callable[[torch.Tensor], tuple[int, float]]) -> tuple[float, float]:
    """(accuracy, mean loss) of ``model`` over the indices ``pool``, ``batch_size`` at a time, in eval mode
    (restored after, also on error): ``batch(idx)`` returns the number correct and the summed loss of its
    indices. The stop tests whose inputs are not a fixed dataset (random views, worst cases) share it."""
    was = model.training
    model.eval()
    correct, total = 0, 0.0
    try:
        for b0 in range(0, len(pool), batch_size):
            c, loss_sum = batch(pool[b0:b0 + batch_size])
            correct += c
            total += loss_sum
    finally:
        model.train(was)
    return correct / len(pool), total / len(pool)


def train(model: nn.Module, train_set: ImageTensors, test_set: ImageTensors | None = None,
          config: TrainConfig | None = None, step: StepFn | None = None,
          on_epoch: Callable[[EpochRecord], None] | None = None,
          on_batch: Callable[[int, int], None] | None = None,
          val_set: ImageTensors | None = None) -> list[EpochRecord]:
    """Train ``model`` in place on ``train_set`` (moved to the model's device), evaluating on the
    clean ``test_set`` and on ``val_set`` (a validation split held out of the training data, which
    is what a trainer picks its epoch on) after each epoch. Returns one record per epoch."""
    cfg = config or TrainConfig()
    step = step or StandardStep(grad_clip=cfg.grad_clip)
    device = next(model.parameters()).device
    data = train_set.to(device)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data)
    steps = math.ceil(n / cfg.batch_size)
    history: list[EpochRecord] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        lr = _lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for i in range(steps):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = prepare_batch(data.images[idx])
            if cfg.augment:
                x = random_crop_flip(x, 4, gen)
            y = data.labels[idx]
            if getattr(step, "uses_index", False):
                loss, logits = step(model, opt, x, y, index=idx)
            else:
                loss, logits = step(model, opt, x, y)
            loss_sum += loss * len(idx)
            correct += (logits.argmax(1) == y).sum()
            if on_batch:
                on_batch(i + 1, steps)
        if hasattr(step, "end_epoch"):
            step.end_epoch(epoch + 1)
        test_loss = test_acc = None
        if test_set is not None:
            test_acc, test_loss = evaluate(model, test_set, cfg.eval_batch_size)
        val_acc = val_loss = None
        if val_set is not None:
            val_acc, val_loss = evaluate(model, val_set, cfg.eval_batch_size)
        rec = EpochRecord(epoch + 1, lr, loss_sum.item() / n, correct.item() / n, test_loss, test_acc,
                          time.perf_counter() - t0, val_loss, val_acc)
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    return history
