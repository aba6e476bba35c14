"""What a face scraper still learns: detect and align the faces of (protected) photos as a scraper would,
train a face recogniser on every identity, and measure how well it recognises each person's held-out
*clean* photos.

The scraper's pipeline (what facial-recognition scrapers do, and the face case study of Huang et al.,
ICLR 2021, arXiv 2101.04898, Sec. 4.4, on 112 × 112 aligned WebFace crops):

1. ``scrape_faces``: decode each photo as written, find its faces with MTCNN and keep the most
   confident one (a photo labelled with one identity; a scraper cannot tell which face the label means,
   and takes the clearest), align it to the 112 × 112 ArcFace template (``unlearnable.faces.align``).
2. ``train_recogniser``: a classifier over the identities, trained from scratch on those crops with the
   project's standard recipe (``unlearnable.train.loop``: SGD, cosine schedule, crop + flip), at
   ``size`` pixels (the crops box-downscaled; 56 by default so that it fits a CPU, the paper's 112 with
   ``size=112``).
3. ``recognition``: top-1 accuracy per identity on the held-out clean crops.

Deviation: the paper's victim is Inception-ResNet-v1 at 112 px trained on all of WebFace; a CPU-sized
victim (``resnet18-narrow`` at 56 px) on the identities at hand is the default here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import ImageTensors
from ..device import resolve_device
from ..faces.detect import detect_faces
from ..faces.noise import aligned_crops
from ..train.loop import TrainConfig, build_model, train


@dataclass
class RecogniserConfig:
    """The victim face recogniser: architecture, input size (pixels) and training recipe."""

    arch: str = "resnet18-narrow"
    size: int = 56
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    device: str = "auto"


def scrape_faces(images: Sequence[np.ndarray], max_side: int | None = 1024) -> tuple[torch.Tensor, list[int]]:
    """The scraper's crops: for each (H, W, 3) uint8 photo, its most confident face aligned to 112 × 112.
    Returns uint8 (M, 3, 112, 112) crops and, for each, the index of its photo (photos with no face
    found contribute nothing)."""
    found = detect_faces(list(images), max_side=max_side)
    crops, index = [], []
    for i, (image, faces) in enumerate(zip(images, found)):
        if not faces:
            continue
        best = max(faces, key=lambda f: f.prob)
        c, _ = aligned_crops(image, [best])
        crops.append(c)
        index.append(i)
    out = torch.cat(crops) if crops else torch.zeros(0, 3, 112, 112, dtype=torch.uint8)
    return out, index


def resize_crops(crops: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> uint8 (N, 3, size, size): box filter when S is a multiple of size, else
    antialiased bilinear."""
    if crops.shape[-1] == size:
        return crops
    x = crops.float()
    if crops.shape[-1] % size == 0:
        x = F.avg_pool2d(x, crops.shape[-1] // size)
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def train_recogniser(train_set: ImageTensors, config: RecogniserConfig | None = None,
                     on_epoch: Callable | None = None) -> torch.nn.Module:
    """A face recogniser trained from scratch on ``train_set`` (uint8 aligned crops, classes =
    identities), at ``config.size`` pixels. Returns the model (eval mode) on the configured device."""
    cfg = config or RecogniserConfig()
    dev = resolve_device(cfg.device)
    data = ImageTensors(resize_crops(train_set.images, cfg.size), train_set.labels, train_set.classes,
                        train_set.name)
    model = build_model(cfg.arch, data.num_classes, 3, cfg.seed, dev)
    train(model, data, None, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed),
          on_epoch=on_epoch)
    return model.eval()


@torch.no_grad()
def recognition(model: torch.nn.Module, test_set: ImageTensors, size: int, batch_size: int = 256) -> list[float]:
    """Top-1 accuracy of ``model`` on each identity's crops in ``test_set`` (NaN for an identity absent
    from it), in class order."""
    dev = next(model.parameters()).device
    x = resize_crops(test_set.images, size)
    preds = torch.cat([model(x[i:i + batch_size].to(dev).float().div_(255)).argmax(1).cpu()
                       for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, dtype=torch.long)
    out = []
    for k in range(test_set.num_classes):
        mask = test_set.labels == k
        out.append(float((preds[mask] == k).float().mean()) if bool(mask.any()) else float("nan"))
    return out
