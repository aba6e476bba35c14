"""Verification: does a model trained on the protected data still learn? For each victim
architecture, train one fresh model on the protected training set and one on the same images
clean (the baseline), evaluate both on the clean test set after every epoch, and report the
final and the peak test accuracy (early stopping is itself a defence, so the peak matters)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from .data.datasets import load_dataset
from .data.protected import load_protected, write_json_atomic
from .device import resolve_device
from .errors import UnlearnableError
from .train.loop import EpochRecord, TrainConfig, build_model, train

REPORT = "verify.json"


def summarize_run(arch: str, data: str, history: list[EpochRecord], seconds: float) -> dict:
    accs = [r.test_acc for r in history if r.test_acc is not None]
    return {"arch": arch, "train_data": data, "epochs": len(history),
            "final_test_acc": accs[-1] if accs else None,
            "peak_test_acc": max(accs) if accs else None,
            "peak_epoch": (accs.index(max(accs)) + 1) if accs else None,
            "final_train_acc": history[-1].train_acc if history else None,
            "seconds": seconds, "history": [asdict(r) for r in history]}


def verify_protected(protected_dir: str | os.PathLike, archs: list[str], config: TrainConfig | None = None,
                     device: str = "auto", data_root: str | os.PathLike | None = None,
                     include_clean: bool = True, report_path: str | os.PathLike | None = None,
                     on_run: Callable[[str, str], None] | None = None,
                     on_epoch: Callable[[EpochRecord], None] | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Train victims on the protected set (and the clean baseline) and write ``verify.json``.
    ``on_run(arch, 'clean'|'protected')`` is called as each training run starts."""
    if not archs:
        raise UnlearnableError("give at least one victim architecture")
    cfg = config or TrainConfig()
    dev = resolve_device(device)
    protected, manifest = load_protected(protected_dir)
    root = data_root or manifest.get("data_root")
    test = load_dataset(manifest["dataset"], "test", root)
    sets = {"protected": protected}
    if include_clean:
        clean = load_dataset(manifest["dataset"], "train", root)
        sets = {"clean": clean.subset(torch.from_numpy(protected.meta["indices"])), **sets}
    runs = []
    for arch in archs:
        for name, data in sets.items():
            if on_run:
                on_run(arch, name)
            model = build_model(arch, data.num_classes, data.images.shape[1], cfg.seed, dev)
            t0 = time.perf_counter()
            hist = train(model, data, test, cfg, on_epoch=on_epoch, on_batch=on_batch)
            runs.append(summarize_run(arch, name, hist, time.perf_counter() - t0))
    report = {"protected_dir": str(Path(protected_dir).resolve()), "dataset": manifest["dataset"],
              "mode": manifest["mode"], "eps": manifest["eps"], "surrogate": manifest["surrogate"],
              "train_images": len(protected), "test_images": len(test), "device": str(dev),
              "train_config": asdict(cfg), "runs": runs}
    out = Path(report_path) if report_path else Path(protected_dir) / REPORT
    write_json_atomic(report, out)
    return report


def load_report(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
