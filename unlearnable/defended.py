"""Defended verification: the stress test of a protection. For every victim architecture and
every defense (``unlearnable.train.defenses``), train one model on the protected set and one on
the same images clean, evaluate each on the clean test set after every epoch, and record the
final and peak accuracy, PGD-20 robust accuracy, and (for the chosen defenses) the class-wise
predictive patterns the model learned (arXiv 2101.06898).

Each finished cell is written to ``OUT/cells/<arch>--<defense>--<data>.json`` as soon as it
ends, keyed by a fingerprint of everything that determines it, so an interrupted matrix resumes
where it stopped. ``report.json`` gathers the cells; ``report.html`` is rendered from it
(``unlearnable.report``) with the image assets of ``assets.pt``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data.datasets import ImageTensors, balanced_subset, load_dataset
from .data.protected import MANIFEST, load_protected, write_json_atomic
from .device import resolve_device
from .errors import UnlearnableError
from .patterns import PatternConfig, classwise_patterns, noise_predictive_power
from .train.adversarial import robust_accuracy
from .train.defenses import DEFENSES, DefenseContext, build_step, parse_defenses
from .train.loop import EpochRecord, TrainConfig, build_model, prepare_batch, train

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
ASSETS = "assets.pt"


@dataclass
class MatrixConfig:
    """What the matrix trains: victims × defenses × {clean, protected}, and what it measures."""

    archs: list[str] = field(default_factory=lambda: ["resnet18"])
    defenses: list[str] = field(default_factory=lambda: ["standard"])
    train: TrainConfig = field(default_factory=TrainConfig)
    include_clean: bool = True
    at_eps: float = 8 / 255          # PGD radius of AT/AWP/CAS training and of the robust readout
    at_steps: int = 10               # PGD steps while training (AT/AWP/CAS)
    at_alpha: float = 2 / 255
    awp_gamma: float = 1e-2          # AWP's relative weight perturbation (AT-AWP's γ)
    robust_images: int = 1000        # clean test images for PGD-20 robust accuracy (0: skip)
    robust_steps: int = 20
    patterns_for: list[str] = field(default_factory=lambda: ["standard"])   # defenses whose models get patterns
    pattern: PatternConfig = field(default_factory=PatternConfig)
    pattern_share: float = 0.2       # share of the test set per class searched on (the authors' 20 %)
    test_subset: int | None = None   # evaluate on a class-balanced subset of the test set (None: all of it)
    tcr_warmup_epochs: int = 1       # label-only epochs before TCR starts calibrating (paper: 1)

    def __post_init__(self) -> None:
        self.defenses = parse_defenses(self.defenses)
        self.patterns_for = [] if self.patterns_for in (["none"], []) else (
            list(self.defenses) if self.patterns_for == ["all"] else parse_defenses(self.patterns_for))
        if not self.archs:
            raise UnlearnableError("give at least one victim architecture")
        if not 0 < self.pattern_share <= 1:
            raise UnlearnableError("pattern_share must be in (0, 1]")


def summarize_run(arch: str, data: str, history: list[EpochRecord], seconds: float) -> dict:
    """A training run as a record: final and peak clean test accuracy (early stopping is itself a
    defence, so the peak matters), final training accuracy, and every epoch."""
    accs = [r.test_acc for r in history if r.test_acc is not None]
    return {"arch": arch, "train_data": data, "epochs": len(history),
            "final_test_acc": accs[-1] if accs else None,
            "peak_test_acc": max(accs) if accs else None,
            "peak_epoch": (accs.index(max(accs)) + 1) if accs else None,
            "final_train_acc": history[-1].train_acc if history else None,
            "seconds": seconds, "history": [asdict(r) for r in history]}


def load_test(dataset: str, root: str | os.PathLike | None, cfg: MatrixConfig) -> ImageTensors:
    """The clean test set, or its class-balanced ``cfg.test_subset``."""
    test = load_dataset(dataset, "test", root)
    if cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(balanced_subset(test.labels, cfg.test_subset, cfg.train.seed))
    return test


def cell_key(arch: str, defense: str, data: str) -> str:
    return f"{arch}--{defense}--{data}"


def _fingerprint(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _class_firsts(data: ImageTensors) -> torch.Tensor:
    """Index of the first image of each class (K,)."""
    return torch.stack([torch.nonzero(data.labels == k)[0, 0] for k in range(data.num_classes)])


def _float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div_(255)


def class_noise(delta: np.ndarray | torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, C, H, W): the class-wise noise itself, or for sample-wise noise each class's mean δ."""
    d = torch.as_tensor(np.asarray(delta, dtype=np.float32))
    if d.shape[0] == num_classes and d.shape[0] != len(labels):
        return d
    return torch.stack([d[labels == k].mean(0) for k in range(num_classes)])


def run_cell(arch: str, defense: str, data_name: str, train_set: ImageTensors, test_set: ImageTensors,
             cfg: MatrixConfig, device: torch.device, dataset: str, canvases: dict[str, torch.Tensor] | None = None,
             pattern_set: tuple[torch.Tensor, torch.Tensor] | None = None, noise: torch.Tensor | None = None,
             on_epoch: Callable[[EpochRecord], None] | None = None,
             on_batch: Callable[[int, int], None] | None = None) -> tuple[dict, dict, torch.nn.Module]:
    """Train one cell (also usable alone, e.g. on clean or label-noisy data); returns (JSON record,
    tensors for the report: pattern images, the trained model). Patterns need ``canvases`` and
    ``pattern_set``."""
    tc = cfg.train
    model = build_model(arch, train_set.num_classes, train_set.images.shape[1], tc.seed, device)
    ctx = DefenseContext(model, len(train_set), train_set.num_classes, dataset, tc.epochs, tc.grad_clip, tc.seed,
                         cfg.at_eps, cfg.at_steps, cfg.at_alpha, cfg.tcr_warmup_epochs,
                         torch.Generator().manual_seed(tc.seed + 1), cfg.awp_gamma)
    step = build_step(defense, ctx)
    t0 = time.perf_counter()
    history = train(model, train_set, test_set, tc, step=step, on_epoch=on_epoch, on_batch=on_batch)
    seconds = time.perf_counter() - t0
    rec = summarize_run(arch, data_name, history, seconds)
    rec.update(defense=defense, robust_acc=None)
    if cfg.robust_images:
        n = min(cfg.robust_images, len(test_set))
        x = prepare_batch(test_set.images[:n].to(device))
        rec["robust_acc"] = robust_accuracy(model, x, test_set.labels[:n], cfg.at_eps, cfg.at_alpha,
                                            cfg.robust_steps, seed=tc.seed)
        rec["robust_eval"] = {"images": n, "eps": cfg.at_eps, "steps": cfg.robust_steps, "alpha": cfg.at_alpha}
    tensors: dict = {}
    if defense in cfg.patterns_for and canvases and pattern_set is not None:
        px, py = pattern_set
        rec["patterns"] = {}
        for kind, canv in canvases.items():
            pat = classwise_patterns(model, canv, px, py, config=cfg.pattern)
            rec["patterns"][kind] = {"predictive_power": pat.predictive_power.tolist(),
                                     "mean_predictive_power": float(pat.predictive_power.mean())}
            tensors[f"patterns/{kind}"] = pat.images().half()
        if noise is not None:
            power = noise_predictive_power(model, noise, px, py)
            rec["patterns"]["noise"] = {"predictive_power": power.tolist(),
                                        "mean_predictive_power": float(power.mean())}
    rec["seconds_total"] = time.perf_counter() - t0
    return rec, tensors, model


def verify_defenses(protected_dir: str | os.PathLike, out_dir: str | os.PathLike, config: MatrixConfig | None = None,
                    device: str = "auto", data_root: str | os.PathLike | None = None,
                    on_cell: Callable[[str, int, int, bool], None] | None = None,
                    on_epoch: Callable[[EpochRecord], None] | None = None,
                    on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Run (or resume) the matrix for a ``protect-dataset`` output and write ``report.json``,
    ``assets.pt`` and ``report.html`` under ``out_dir``. ``on_cell(key, i, total, reused)`` is
    called as each cell starts. Returns the report dict."""
    from .report import write_report

    cfg = config or MatrixConfig()
    dev = resolve_device(device)
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    protected, manifest = load_protected(protected_dir)
    root = data_root or manifest.get("data_root")
    dataset = manifest["dataset"]
    test = load_test(dataset, root, cfg)
    clean = load_dataset(dataset, "train", root).subset(torch.from_numpy(protected.meta["indices"]))
    if not torch.equal(clean.labels, protected.labels):
        raise UnlearnableError(f"{protected_dir}: labels do not match {dataset} at the recorded indices")
    sets = {"clean": clean, "protected": protected} if cfg.include_clean else {"protected": protected}

    delta = np.load(Path(protected_dir) / "perturbation.npy")
    noise = class_noise(delta, protected.labels, protected.num_classes)
    firsts = _class_firsts(protected)
    test_firsts = _class_firsts(test)
    canvases = {"clean_canvas": _float(test.images[test_firsts]),
                "protected_canvas": _float(protected.images[firsts])}
    pidx = balanced_subset(test.labels, max(test.num_classes, int(len(test) * cfg.pattern_share)), cfg.train.seed)
    pattern_set = (_float(test.images[pidx]), test.labels[pidx])

    data_id = {"manifest": {k: manifest.get(k) for k in ("dataset", "mode", "eps", "seed", "num_images", "surrogate",
                                                          "final_surrogate_acc", "rounds")},
               "indices": hashlib.sha256(np.asarray(protected.meta["indices"]).tobytes()).hexdigest()[:16]}
    cells, tensors = [], {}
    plan = [(a, d, s) for a in cfg.archs for d in cfg.defenses for s in sets]
    for i, (arch, defense, data_name) in enumerate(plan):
        key = cell_key(arch, defense, data_name)
        # a clean cell without patterns does not depend on the protection: it can be shared between
        # matrices over the same images (copy its cells/*.json)
        shared = data_name == "clean" and defense not in cfg.patterns_for
        fp = _fingerprint({"arch": arch, "defense": defense, "data": data_name,
                           "data_id": {"dataset": dataset, "indices": data_id["indices"]} if shared else data_id,
                           "train": asdict(cfg.train), "at": [cfg.at_eps, cfg.at_steps, cfg.at_alpha],
                           "tcr_warmup": cfg.tcr_warmup_epochs if defense == "tcr" else None,
                           "robust": [cfg.robust_images, cfg.robust_steps],
                           "patterns": asdict(cfg.pattern) if defense in cfg.patterns_for else None,
                           "pattern_share": cfg.pattern_share, "test_subset": cfg.test_subset,
                           **({"awp_gamma": cfg.awp_gamma} if defense == "awp" else {})})
        path = out / "cells" / f"{key}.json"
        tpath = out / "cells" / f"{key}.pt"
        done = path.exists() and json.loads(path.read_text()).get("fingerprint") == fp
        if on_cell:
            on_cell(key, i + 1, len(plan), done)
        if done:
            rec = json.loads(path.read_text())
            cell_tensors = torch.load(tpath) if tpath.exists() else {}
        else:
            rec, cell_tensors, _ = run_cell(arch, defense, data_name, sets[data_name], test, cfg, dev, dataset,
                                         canvases, pattern_set, noise, on_epoch, on_batch)
            rec["fingerprint"] = fp
            if cell_tensors:
                torch.save(cell_tensors, tpath)
            write_json_atomic(rec, path)
        cells.append(rec)
        tensors.update({f"{key}/{k}": v for k, v in cell_tensors.items()})

    shown = firsts[: min(10, len(firsts))]
    assets = {"clean": clean.images[shown], "protected": protected.images[shown],
              "noise": torch.as_tensor(np.asarray(delta[shown.numpy()] if len(delta) == len(protected) else
                                                  delta[protected.labels[shown].numpy()], dtype=np.float32)),
              "classes": [protected.classes[int(protected.labels[j])] for j in shown],
              "canvases": {k: v.half() for k, v in canvases.items()}, "cells": tensors}
    torch.save(assets, out / ASSETS)
    report = {"kind": "defended-verification", "protected_dir": str(Path(protected_dir).resolve()),
              "dataset": dataset, "classes": protected.classes, "mode": manifest["mode"], "eps": manifest["eps"],
              "surrogate": manifest.get("surrogate"), "train_images": len(protected), "test_images": len(test),
              "device": str(dev), "train_config": asdict(cfg.train),
              "matrix": {"archs": cfg.archs, "defenses": cfg.defenses, "data": list(sets),
                         "at": {"eps": cfg.at_eps, "steps": cfg.at_steps, "alpha": cfg.at_alpha},
                         "patterns_for": cfg.patterns_for, "pattern": asdict(cfg.pattern),
                         "pattern_images": len(pidx)},
              "defense_summaries": {d: DEFENSES[d].summary for d in cfg.defenses},
              "cells": cells, "summary": summarize_matrix(cells, protected.num_classes)}
    write_json_atomic(report, out / REPORT_JSON)
    write_report(out)
    return report


def summarize_matrix(cells: list[dict], num_classes: int) -> list[dict]:
    """One row per (arch, defense): clean and protected accuracy and whether the protection held.
    ``recovered`` = (protected peak − chance) / (clean peak − chance): 0 means the protected model
    learned nothing beyond chance, 1 as much as the clean one. The protection is called *broken*
    by that defense when it recovers at least half (a stated rule, not a tuned threshold). No verdict
    when the clean model itself is within 10 points of chance: there is nothing to recover."""
    chance = 1.0 / num_classes
    rows: dict[tuple[str, str], dict] = {}
    for c in cells:
        r = rows.setdefault((c["arch"], c["defense"]), {"arch": c["arch"], "defense": c["defense"]})
        r[c["train_data"]] = {k: c.get(k) for k in ("final_test_acc", "peak_test_acc", "robust_acc", "final_train_acc")}
    out = []
    for r in rows.values():
        cl, pr = r.get("clean"), r.get("protected")
        if cl and pr and cl["peak_test_acc"] is not None and pr["peak_test_acc"] is not None:
            gap = cl["peak_test_acc"] - chance
            r["recovered"] = (pr["peak_test_acc"] - chance) / gap if gap >= 0.1 else None
            r["verdict"] = None if r["recovered"] is None else ("broken" if r["recovered"] >= 0.5 else "holds")
        out.append(r)
    return out


def train_defended(dataset: str, defense: str, arch: str, config: MatrixConfig | None = None,
                   subset: int | None = None, label_noise: float = 0.0, noise_kind: str = "symmetric",
                   device: str = "auto", data_root: str | os.PathLike | None = None,
                   on_epoch: Callable[[EpochRecord], None] | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> tuple[dict, torch.nn.Module]:
    """Train one model through a defense on a (clean) dataset or a ``protect-dataset`` folder,
    optionally with injected label noise; returns (record with clean and robust test accuracy, model)."""
    from dataclasses import replace

    from .data.label_noise import asymmetric_noise_cifar10, symmetric_noise

    cfg = config or MatrixConfig(archs=[arch], defenses=[defense], patterns_for=["none"])
    dev = resolve_device(device)
    if Path(dataset).is_dir() and (Path(dataset) / MANIFEST).exists():
        train_set, manifest = load_protected(dataset)
        name = manifest["dataset"]
        data_root = data_root or manifest.get("data_root")
    else:
        name = dataset
        train_set = load_dataset(dataset, "train", data_root)
    test = load_test(name, data_root, cfg)
    if subset:
        train_set = train_set.subset(balanced_subset(train_set.labels, subset, cfg.train.seed))
    if label_noise:
        if noise_kind == "symmetric":
            labels = symmetric_noise(train_set.labels, train_set.num_classes, label_noise, cfg.train.seed)
        elif noise_kind == "asymmetric" and name == "cifar10":
            labels = asymmetric_noise_cifar10(train_set.labels, label_noise, cfg.train.seed)
        else:
            raise UnlearnableError(f"label noise {noise_kind!r} is not defined for {name} "
                                   "(symmetric, or asymmetric on cifar10)")
        train_set = replace(train_set, labels=labels)
    rec, _, model = run_cell(arch, parse_defenses([defense])[0], name, train_set, test, cfg, dev, name,
                             on_epoch=on_epoch, on_batch=on_batch)
    rec.update(dataset=str(dataset), label_noise=label_noise, noise_kind=noise_kind if label_noise else None,
               train_images=len(train_set), test_images=len(test))
    return rec, model
