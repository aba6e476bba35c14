"""Pseudo-classes for an unlabeled photo collection (``--label-free``).

Error-minimising noise needs labels. With none, photos are grouped by k-means on the
surrogate's penultimate features and each cluster is treated as a class, the label-agnostic
recipe of "Unlearnable Clusters" (Zhang et al., CVPR 2023, arXiv 2301.01217): a scraper's
labels are unknown, but photos that look alike tend to share them, so noise that makes each
cluster trivially separable still gives the scraper's model a shortcut.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .augment import to_float


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, input_size: int = 32,
                         batch_size: int = 256) -> torch.Tensor:
    """L2-normalised pooled features (``model.forward_head(model.forward_features(x), pre_logits=True)``,
    the classifier's input) for uint8 images (N, C, S, S) -> (N, D)."""
    feats: list[torch.Tensor] = []
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for s in range(0, len(images), batch_size):
            x = to_float(images[s:s + batch_size].to(device))
            if x.shape[-1] != input_size:
                x = F.interpolate(x, size=(input_size, input_size), mode="area")
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).detach().float())
    finally:
        model.train(was)
    return F.normalize(torch.cat(feats).cpu(), dim=1)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Cluster index (N,) of each row of ``x`` (N, D): k-means++ seeding, Lloyd iterations."""
    n = len(x)
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    centers = [x[torch.randint(0, n, (1,), generator=g)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centers)).pow(2).min(1).values
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        centers.append(x[torch.multinomial(p, 1, generator=g)].squeeze(0))
    c = torch.stack(centers)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        onehot = F.one_hot(assign, k).float()
        counts = onehot.sum(0)
        new_c = torch.where(counts[:, None] > 0, (onehot.t() @ x) / counts.clamp(min=1)[:, None], c)
        new_assign = torch.cdist(x, new_c).argmin(1)
        c = new_c
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    # renumber clusters by first appearance, dropping empty ones
    _, inverse = torch.unique(assign, return_inverse=True)
    return inverse


def default_clusters(n: int) -> int:
    """About one pseudo-class per five photos, between 2 and 10 (1 for a single photo)."""
    return 1 if n < 2 else max(2, min(10, round(n / 5)))


def pseudo_labels(model: nn.Module, images: torch.Tensor, k: int | None = None,
                  seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """(labels (N,), names) of pseudo-classes for uint8 photos (N, C, S, S) by k-means on features."""
    labels, names, _ = pseudo_labels_with_centroids(model, images, k, seed)
    return labels, names


def pseudo_labels_with_centroids(model: nn.Module, images: torch.Tensor, k: int | None = None,
                                 seed: int = 0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """:func:`pseudo_labels` plus the clusters' centroids (K, D) in feature space, so that photos added
    later can join the nearest existing cluster (:func:`nearest_cluster`) and keep its pattern."""
    if k is not None and k < 1:
        raise ValueError(f"the number of clusters must be >= 1, got {k}")
    k = k or default_clusters(len(images))
    feats = penultimate_features(model, images)
    labels = kmeans(feats, k, seed)
    names = [f"cluster-{i}" for i in range(int(labels.max()) + 1)]
    onehot = F.one_hot(labels, len(names)).float()
    centroids = (onehot.t() @ feats) / onehot.sum(0).clamp(min=1)[:, None]
    return labels, names, centroids


def nearest_cluster(model: nn.Module, images: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the nearest centroid (K, D) for uint8 photos (N, C, S, S), by the features of
    :func:`penultimate_features` (the assignment step of k-means, without moving the centroids)."""
    return torch.cdist(penultimate_features(model, images), centroids.float()).argmin(1)
