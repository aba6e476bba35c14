"""A graph learner as a victim of protected images: frozen features -> k-nearest-neighbour graph
over training *and* test images -> DGC propagation (arXiv 2102.10739, ``unlearnable.graph.dgc``)
-> a linear classifier trained on the training nodes -> accuracy on the test nodes (transductive).

Why: error-minimizing noise (Huang et al., arXiv 2101.04898) is fitted against networks trained by
SGD on pixels. This learner never trains a network on the images: a fixed extractor embeds them
(a model trained on other data, e.g. the shipped surrogate's penultimate layer, or the raw
pixels), and the labels spread over a similarity graph in which the clean test images sit next to
the training images. Whether the protection holds against it is an empirical question, measured by
``benchmarks/dgc.py --parts victim`` (protected vs clean training images, same test images).

Steps (all tensors on ``device``; no dense N × N matrix: similarities are computed ``block`` rows
at a time and only the top k of each row are kept):

1. embed: images (uint8 or float in [0, 1], (N, C, H, W)) -> ``extractor`` -> (N, D) float32;
   ``extractor`` is None (raw pixels, flattened), a registry model (``forward_features`` then
   ``forward_head(pre_logits=True)``: the penultimate features, model in eval mode), or any callable;
2. centre (subtract the mean over all N nodes) and scale every row to unit L2 norm;
3. kNN graph: each node linked to its ``k`` most cosine-similar other nodes, made symmetric (an
   edge if either end chose it), 0/1 weights, no self-loops;
4. DGC: ``dgc_propagate`` on Ã = D̃^{-1/2}(A + I)D̃^{-1/2} with terminal time ``T`` in ``K`` steps;
5. logistic regression (``train_linear``: Adam, full batch) on the training nodes' propagated
   features and their labels; accuracy of argmax on the test nodes.

Choices that are ours, not the paper's (DGC has no image/kNN setting): k = 10, T = 1, K = 20,
lr 0.2, weight decay 5e-5, 100 epochs. They were picked on clean CIFAR-10 *training* images (2,000
training nodes, 1,000 other training images as held-out nodes; k in {5, 10, 20} × T in {0, 1, 2, 5};
the spread was about 1 point with the surrogate's features and 8 with pixels, T = 5 worst), never
on the test images the benchmark reports on, and are the same for clean and protected runs.
``T = 0`` turns the learner into a plain linear probe on the frozen features (the graph is then
ignored), the comparison that isolates what the graph adds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..device import resolve_device
from .dgc import accuracy, dgc_propagate, normalized_adjacency, train_linear


@dataclass(frozen=True)
class GraphVictimConfig:
    """Settings of the graph victim (see the module docstring for where they come from)."""

    k: int = 10                 # neighbours chosen per node (the union is kept, so degrees are >= k)
    T: float = 1.0              # DGC terminal time; 0 = linear probe without the graph
    K: int = 20                 # Euler steps
    lr: float = 0.2
    weight_decay: float = 5e-5
    epochs: int = 100
    seed: int = 0
    batch_size: int = 500       # images per extractor call
    block: int = 1024           # similarity rows computed at a time


def _float_images(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def embed(images: torch.Tensor, extractor: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None,
          device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """(N, C, H, W) images (uint8, or float in [0, 1]) -> (N, D) float32 features on ``device``.
    ``extractor``: None = raw pixels; a model with ``forward_features``/``forward_head`` = its
    penultimate features in eval mode (its train/eval mode is restored); else any callable."""
    out = []
    was_training = isinstance(extractor, nn.Module) and extractor.training
    if isinstance(extractor, nn.Module):
        extractor.eval()
    try:
        for s in range(0, len(images), batch_size):
            x = _float_images(images[s:s + batch_size].to(device))
            if extractor is None:
                z = x.flatten(1)
            elif hasattr(extractor, "forward_features") and hasattr(extractor, "forward_head"):
                z = extractor.forward_head(extractor.forward_features(x), pre_logits=True)
            else:
                z = extractor(x)
            out.append(z.float().flatten(1))
    finally:
        if was_training:
            extractor.train()
    return torch.cat(out)


def knn_graph(z: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Symmetric kNN edges of the rows of ``z`` (N, D) by cosine similarity: (2, E) int64, both
    directions of each edge, sorted, no duplicates, no self-loops. Ties go to the lower index."""
    n = z.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    zn = F.normalize(z, dim=1)
    nbrs = []
    for s in range(0, n, block):
        sim = zn[s:s + block] @ zn.T                                   # (b, N): one block of rows
        rows = torch.arange(s, min(s + block, n), device=z.device)
        sim[rows - s, rows] = float("-inf")                            # never oneself
        nbrs.append(torch.topk(sim, k, dim=1).indices)
    dst = torch.cat(nbrs).flatten()
    src = torch.arange(n, device=z.device).repeat_interleave(k)
    key = torch.unique(torch.cat([src * n + dst, dst * n + src]))
    return torch.stack([key // n, key % n])


def graph_victim(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor,
                 extractor: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
                 config: GraphVictimConfig | None = None, device: str | torch.device = "cpu") -> dict:
    """Train the graph victim on (protected or clean) ``train_images`` (n, C, H, W) with labels (n,)
    and classify the clean ``test_images`` (m, C, H, W) transductively. Returns a dict with
    ``test_acc`` and ``train_acc`` (in [0, 1]), the graph's size (``nodes``, undirected ``edges``),
    ``homophily`` (share of edges joining two images of the same class, true labels) and
    ``cross_edges`` (share of edges joining a training and a test image), seconds per stage, and
    the settings."""
    cfg = config or GraphVictimConfig()
    dev = resolve_device(device)
    n, m = len(train_images), len(test_images)
    if len(train_labels) != n or len(test_labels) != m:
        raise ValueError("images and labels differ in length")
    times = {}
    t0 = time.perf_counter()
    z = torch.cat([embed(train_images, extractor, dev, cfg.batch_size),
                   embed(test_images, extractor, dev, cfg.batch_size)])
    z = F.normalize(z - z.mean(0, keepdim=True), dim=1)
    times["embed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    edges = knn_graph(z, cfg.k, cfg.block)
    adj = normalized_adjacency(edges, n + m, dev)
    times["graph"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = dgc_propagate(z, adj, cfg.T, cfg.K)
    times["propagate"] = time.perf_counter() - t0
    y_train, y_test = train_labels.to(dev).long(), test_labels.to(dev).long()
    num_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    t0 = time.perf_counter()
    model = train_linear(x[:n], y_train, num_classes, cfg.lr, cfg.weight_decay, cfg.epochs, cfg.seed)
    times["train"] = time.perf_counter() - t0
    labels = torch.cat([y_train, y_test])
    src, dst = edges
    return {
        "test_acc": accuracy(model, x[n:], y_test), "train_acc": accuracy(model, x[:n], y_train),
        "train_loss": _loss(model, x[:n], y_train),
        "nodes": n + m, "train_nodes": n, "test_nodes": m, "edges": int(edges.shape[1]) // 2,
        "homophily": float((labels[src] == labels[dst]).float().mean()),
        "cross_edges": float(((src < n) != (dst < n)).float().mean()),
        "seconds": times, "config": asdict(cfg), "device": str(dev),
    }


@torch.no_grad()
def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of the trained classifier on its training nodes."""
    was = model.training
    model.eval()
    loss = float(F.cross_entropy(model(x), y))
    model.train(was)
    return loss


__all__ = ["GraphVictimConfig", "embed", "knn_graph", "graph_victim"]
