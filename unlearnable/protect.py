"""Batch protection of a labelled dataset: load -> search error-minimising noise with a surrogate
-> apply it as uint8 -> save (see ``unlearnable.data.protected`` for the layout)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .data.datasets import balanced_subset, load_dataset, resolve_data_root
from .data.protected import MANIFEST, read_manifest, save_protected
from .device import resolve_device
from .errors import UnlearnableError
from .noise.budget import apply_noise_uint8, epsilon_levels, linf_levels
from .noise.error_minimizing import MinMinConfig, RoundLog, error_minimizing_noise
from .train.loop import build_model

CHECKPOINT = "checkpoint.pt"


def protect_dataset(dataset: str, out_dir: str | os.PathLike, config: MinMinConfig | None = None,
                    arch: str = "resnet18", subset: int | None = None,
                    data_root: str | os.PathLike | None = None, device: str = "auto",
                    on_round: Callable[[RoundLog], None] | None = None,
                    on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Protect the training split of ``dataset`` (or a balanced ``subset`` of it) and write it to
    ``out_dir``; resumable (rerun with the same arguments). Returns the manifest."""
    cfg = config or MinMinConfig()
    out = Path(out_dir)
    dev = resolve_device(device)
    root = resolve_data_root(data_root)
    settings = {"dataset": dataset, "arch": arch, "subset": subset, "minmin": asdict(cfg)}
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest.get("settings") == settings:
            manifest["resumed"] = "already complete"
            return manifest
        raise UnlearnableError(f"{out} already holds a protected dataset made with other settings; "
                               "choose another output folder")
    train = load_dataset(dataset, "train", root)
    indices = torch.arange(len(train)) if subset is None else balanced_subset(train.labels, subset, cfg.seed)
    if subset is not None:
        train = train.subset(indices)
    out.mkdir(parents=True, exist_ok=True)
    surrogate = build_model(arch, train.num_classes, train.images.shape[1], cfg.seed, dev)
    t0 = time.perf_counter()
    result = error_minimizing_noise(surrogate, train, cfg, out / CHECKPOINT, on_round, on_progress)
    protected = apply_noise_uint8(train.images, result.per_sample(train.labels), cfg.eps)
    levels = linf_levels(train.images, protected)
    if levels > epsilon_levels(cfg.eps):
        raise AssertionError(f"budget violated after rounding: {levels} > {epsilon_levels(cfg.eps)} levels")
    manifest = {
        "tool": "unlearnable", "version": __version__, "dataset": dataset,
        "data_root": str(root.resolve()), "source_split": "train", "settings": settings,
        "mode": cfg.mode, "eps": cfg.eps, "eps_255": cfg.eps * 255, "surrogate": arch, "seed": cfg.seed,
        "rounds": result.rounds, "converged": result.converged,
        "final_surrogate_acc": result.history[-1].surrogate_acc if result.history else None,
        "history": [asdict(h) for h in result.history],
        "generation_seconds": result.seconds, "wall_seconds_this_call": time.perf_counter() - t0,
        "device": str(dev), "linf_levels": levels,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_protected(out, protected, train.labels, train.classes, indices, result.delta, manifest)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return read_manifest(out)
