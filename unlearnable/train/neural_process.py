"""Training the image neural process that NP-Attack searches (Bai et al., arXiv 2009.11508;
the objective of the attentive NP, Kim et al., arXiv 1901.05761), and saving/loading it.

Objective (per image, minimised): −E_{q(z|T)} log p(y_T | x_T, r_C, z) + KL(q(z | T) ‖ q(z | C)),
targets T = every pixel, context C = a random subset of the pixels (a different subset per image,
its size drawn per batch uniformly in [context_min, context_max] of the pixels), one z drawn from
the posterior q(z | T) by reparameterisation. The whole training set sits on the device as one
uint8 tensor and batches are drawn by a seeded permutation, as in ``train.loop``.

Official code (Sandy-Zeng/NPAttack, ``ANP/ANP_CIFAR_train.py``): Adam lr 1e-3, batch 8, 50 epochs,
context = every pixel (an auto-encoder), NLL summed over the points. Deviations: random context
subsets (so the NP also completes images from part of their pixels: the NP training of Kim et al.;
the attack still encodes every pixel), NLL and KL averaged per colour value (the same optimum, a
learning rate that does not depend on the image size), and a step budget instead of epochs: CPU-sized
defaults (batch 16, 1,500 steps) instead of 50 epochs.

Files: one ``.pt`` holding ``{"format", "config", "state_dict", "record"}`` (tensors and plain
values only), written with the atomic writer and loaded with ``weights_only=True``.
"""
from __future__ import annotations

import io
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data.augment import to_float
from ..data.datasets import ImageTensors
from ..data.storage import write_atomic
from ..device import resolve_device
from ..errors import UnlearnableError
from ..models.neural_process import NeuralProcess, NPConfig, images_to_points

FORMAT = "unlearnable-neural-process-v1"


@dataclass
class NPTrainConfig:
    """Hyper-parameters of the NP training (see the module docstring for the official ones)."""

    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    context_min: float = 0.25   # share of the pixels in a context, lower bound
    context_max: float = 1.0    # ... upper bound (1: every pixel, what the attack encodes)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise UnlearnableError("NP training needs at least one step, a batch and a positive learning rate")
        if not 0 < self.context_min <= self.context_max <= 1:
            raise UnlearnableError("context shares must satisfy 0 < context_min <= context_max <= 1")


def gaussian_kl(mu_q: torch.Tensor, sd_q: torch.Tensor, mu_p: torch.Tensor, sd_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, sd_q²) ‖ N(mu_p, sd_p²)) summed over the last dimension, (B,)."""
    var_q, var_p = sd_q ** 2, sd_p ** 2
    return 0.5 * ((var_q + (mu_q - mu_p) ** 2) / var_p - 1 + torch.log(var_p) - torch.log(var_q)).sum(-1)


def np_loss(mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor, latents: dict) -> torch.Tensor:
    """The NP objective averaged per colour value: Gaussian NLL of ``y`` (B, T, C) under (mean, std)
    plus KL(posterior ‖ prior) / (T · C); a scalar."""
    nll = -torch.distributions.Normal(mean, std).log_prob(y).mean()
    kl = gaussian_kl(*latents["posterior"], *latents["prior"]).mean() / (y.shape[1] * y.shape[2])
    return nll + kl


def sample_context(batch: int, points: int, share: float, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """A random context mask (B, P) of round(share · P) pixels per image (different pixels per image)."""
    k = max(1, min(points, round(share * points)))
    ranks = torch.rand(batch, points, generator=generator).argsort(1).argsort(1)
    return (ranks < k).float().to(device)


def train_neural_process(data: ImageTensors, config: NPTrainConfig | None = None,
                         np_config: NPConfig | None = None, device: torch.device | str = "cpu",
                         on_step: Callable[[int, int, float], None] | None = None
                         ) -> tuple[NeuralProcess, dict]:
    """Train an NP on ``data`` (uint8 (N, C, H, W); its labels are not used). ``np_config`` defaults
    to the data's image shape with the default sizes. ``on_step(step, steps, loss)`` is called
    after every step. Returns the model (eval mode) and a record of the run."""
    cfg = config or NPTrainConfig()
    _, c, h, w = data.images.shape
    npc = np_config or NPConfig(channels=c, height=h, width=w)
    if (npc.channels, npc.height, npc.width) != (c, h, w):
        raise UnlearnableError(f"NP image shape {(npc.channels, npc.height, npc.width)} does not match the "
                               f"data's {(c, h, w)}")
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = NeuralProcess(npc).to(device)
    images = data.images.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(images)
    per_epoch = max(1, n // cfg.batch_size)
    perm = torch.randperm(n, generator=gen)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(cfg.steps):
        if step % per_epoch == 0 and step:
            perm = torch.randperm(n, generator=gen)
        i = step % per_epoch
        idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(device)
        y = images_to_points(to_float(images[idx]))
        share = cfg.context_min + (cfg.context_max - cfg.context_min) * torch.rand((), generator=gen).item()
        mask = sample_context(len(idx), y.shape[1], share, gen, device)
        mean, std, lat = model(y, mask, posterior=True, generator=gen)
        loss = np_loss(mean, std, y, lat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise UnlearnableError(f"NP training diverged at step {step + 1} (loss {losses[-1]})")
        if on_step:
            on_step(step + 1, cfg.steps, losses[-1])
    model.eval()
    tail = losses[-min(len(losses), 50):]
    record = {"train": asdict(cfg), "np": npc.to_dict(), "data": data.name, "train_images": n,
              "final_loss": sum(tail) / len(tail), "seconds": time.perf_counter() - t0}
    return model, record


@torch.no_grad()
def reconstruction_mse(model: NeuralProcess, images: torch.Tensor, context_share: float = 1.0,
                       seed: int = 0, batch_size: int = 50) -> float:
    """Mean squared error (pixel units², images in [0, 1]) of the NP's mean reconstruction of float
    ``images`` (B, C, H, W) from a random ``context_share`` of their pixels (1: every pixel)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    was_training = model.training
    model.eval()
    for s in range(0, len(images), batch_size):
        y = images_to_points(images[s:s + batch_size].to(device))
        mask = sample_context(len(y), y.shape[1], min(context_share, 1.0), gen, device)
        mean, _, _ = model(y, mask)
        total += ((mean.clamp(-0.5, 0.5) - y) ** 2).mean(dim=(1, 2)).sum().item()
    model.train(was_training)
    return total / max(len(images), 1)


def save_neural_process(path: str | os.PathLike, model: NeuralProcess, record: dict | None = None,
                        replace: bool = False) -> Path:
    """Write the NP (config, state dict, ``record`` of plain values) to ``path`` atomically; an
    existing file is refused unless ``replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "config": model.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "record": record or {}}
    buf = io.BytesIO()
    torch.save(blob, buf)
    write_atomic(path, buf.getvalue(), may_replace=(lambda p: True) if replace else (lambda p: False))
    return path


def load_neural_process(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[NeuralProcess, dict]:
    """Load an NP written by :func:`save_neural_process` (``weights_only=True``; the format, config
    and every tensor's shape are checked). Returns the model in eval mode and its record."""
    path = Path(path)
    if not path.is_file():
        raise UnlearnableError(f"no neural process file at {path}")
    try:
        blob = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise UnlearnableError(f"{path} is not a readable neural process file: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UnlearnableError(f"{path} is not a neural process file written by unlearnable")
    try:
        model = NeuralProcess(NPConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise UnlearnableError(f"{path}: the neural process does not fit its config: {e}") from None
    model.to(resolve_device(device)).eval()
    return model, dict(blob.get("record", {}))


__all__ = ["NPTrainConfig", "train_neural_process", "reconstruction_mse", "np_loss", "gaussian_kl",
           "sample_context", "save_neural_process", "load_neural_process"]
