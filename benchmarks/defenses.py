"""Defended-verification benchmark: protect a CIFAR-10 subset (sample-wise and class-wise), train
victims through every defense on the protected and the clean images, and check the defenses on
clean data (robust accuracy of AT/AWP/CAS; APL and TCR against 40 % symmetric label noise).
Prints one JSON object on stdout; every matrix cell is cached under --out, so reruns resume.
The clean cells that do not depend on the protection are trained first (the matrix reuses them),
so a partial run already tells whether each defense's clean model learns; ``--finished-only``
trains nothing and reports what has finished (the clean cells alone while the protection runs).

    python benchmarks/defenses.py --config cpu          # hours on 2 cores, run it alone
    python benchmarks/defenses.py --config cpu --finished-only   # the figures finished so far

cpu: balanced 5,000-image subset of CIFAR-10 train (500 per class), balanced 2,000-image subset
     of the test set, SmallCNN surrogate (class-wise noise searched on 20 % of the subset, as in
     the paper), victims SmallCNN for the whole defense matrix, VGG-11/4 and ResNet-18/4 (two
     more families) for standard training, 10 epochs each. 10 % of each class of the training
     subset is held out as validation (the same images for the clean and the protected run; each
     run validates on the held-out part of what it trains on) and every model is scored at its
     validation-chosen epoch; recoveries against the same-defense and the standard clean model.
     Each defense trains with its paper's recipe where it differs from the shared one
     (``unlearnable.verify.matrix.PAPER_RECIPES``: APL lr 0.01, wd 1e-4; AT/AWP ×0.1 at 50 % and 75 %,
     no clipping). AT/AWP/CAS train with PGD-3 (ε 8/255, step 3/255) instead of the papers'
     PGD-10 (step 2/255) to fit the CPU budget; the robust readout has its own settings
     (``MatrixConfig.robust_*``, label written from them): PGD-20, ε 8/255, step 2/255, random
     start, on 1,000 test images. Label noise: 40 % symmetric
     (the label always changes) on the same 5,000 images, SmallCNN, CE vs APL (NCE+RCE,
     α = β = 1) vs TCR (β = 0.1), all three with the APL paper's CIFAR-10 recipe (official
     configs: SGD lr 0.01, momentum 0.9, weight decay 1e-4, cosine, 120 epochs, batch 128,
     gradient norm bound 5); besides clean test accuracy it reports how many of the wrong labels
     each model fits (memorisation, measured on the un-augmented training images).
     Robust generalisation (``--parts awp``): AT vs AT-AWP (γ = 1e-2) on the clean 5,000 images,
     30 epochs with the step schedule (×0.1 at 50 % and 75 %, the AWP paper's 100/150 of 200),
     PGD-3 training; PGD-10 robust accuracy on 500 test images every 3 epochs and PGD-20 on
     1,000 at the end, to see AWP's claim (it flattens the weight-loss landscape and so shrinks
     the robust overfitting after the learning-rate drop).
gpu: full CIFAR-10, ResNet-18 everywhere, 60 epochs, PGD-10 training (the papers' settings);
     AT vs AWP 200 epochs as in the AWP paper.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))   # common.py, also when loaded by path

from common import log, runtime  # noqa: E402

from unlearnable.data.datasets import balanced_subset, load_dataset  # noqa: E402
from unlearnable.data.label_noise import symmetric_noise  # noqa: E402
from unlearnable.data.protected import read_manifest  # noqa: E402
from unlearnable.device import resolve_device  # noqa: E402
from unlearnable.noise.minmin import MinMinConfig  # noqa: E402
from unlearnable.protect.dataset import protect_dataset  # noqa: E402
from unlearnable.train.defenses import parse_defenses  # noqa: E402
from unlearnable.train.loop import TrainConfig, evaluate  # noqa: E402
from unlearnable.verify.matrix import (MatrixConfig, clean_cells, load_test, robust_settings, run_cell,  # noqa: E402
                                       verify_defenses)

CONFIGS = {
    "cpu": {"subset": 5_000, "test_subset": 2_000, "surrogate": "smallcnn", "matrix_arch": "smallcnn",
            "family_archs": ["vgg11-narrow", "resnet18-narrow"], "epochs": 10, "at_steps": 3, "at_alpha": 3 / 255,
            "noise_epochs": 120, "max_rounds": 30, "awp_epochs": 30},
    "gpu": {"subset": None, "test_subset": None, "surrogate": "resnet18", "matrix_arch": "resnet18",
            "family_archs": ["vgg16", "wrn16-4"], "epochs": 60, "at_steps": 10, "at_alpha": 2 / 255,
            "noise_epochs": 120, "max_rounds": 200, "awp_epochs": 200},
}


def log_event(prefix: str):
    """An ``on_event`` (``unlearnable.events``) that logs models and epochs to stderr."""
    def on_event(kind: str, info: dict) -> None:
        if kind == "model":
            log(f"[{prefix}{info['index']}/{info['total']}] {info['key']}{' (cached)' if info['reused'] else ''}")
        elif kind == "epoch":
            val = f" val {info['val_acc']:.3f}" if info.get("val_acc") is not None else ""
            log(f"    epoch {info['epoch']}: train {info['train_acc']:.3f}{val} test {info['test_acc']:.3f} "
                f"({info['seconds']:.0f}s)")
    return on_event


def protected_dir(out: Path, mode: str, c: dict, data_root, dev) -> Path:
    d = out / f"protected-{mode}"
    try:
        read_manifest(d)
    except Exception:
        log(f"protecting ({mode})")
        protect_dataset("cifar10", d, MinMinConfig(mode=mode, max_rounds=c["max_rounds"]), c["surrogate"],
                        c["subset"], data_root, str(dev),
                        on_event=lambda kind, r: kind == "round" and log(f"  round {r['round']}: surrogate acc "
                                                                          f"{r['surrogate_acc']:.4f}"))
    return d


def matrix(prot: Path, out: Path, archs: list[str], defenses: list[str], c: dict, data_root, dev,
           patterns: list[str] = ["standard"], only_finished: bool = False) -> dict:
    cfg = matrix_config(c, archs, defenses, patterns)
    return verify_defenses(prot, out, cfg, str(dev), data_root,
                           on_event=log_event(""), only_finished=only_finished)


def matrix_config(c: dict, archs: list[str] | None = None, defenses: list[str] | None = None,
                  patterns: list[str] = ["standard"]) -> MatrixConfig:
    """The matrix settings of configuration ``c`` (paper recipes, validation split, robust readout: defaults)."""
    return MatrixConfig(archs=archs or [c["matrix_arch"]], defenses=defenses or ["standard"],
                        train=TrainConfig(epochs=c["epochs"]), at_steps=c["at_steps"], at_alpha=c["at_alpha"],
                        test_subset=c["test_subset"], patterns_for=patterns)


def table(report: dict) -> dict:
    """One row per (arch, defense): chosen-epoch, final and oracle-peak accuracy, both recoveries, verdict."""
    rows = {}
    for r in report["summary"]:
        cl, pr = r.get("clean") or {}, r.get("protected") or {}
        rows[f"{r['arch']}/{r['defense']}"] = {
            "clean_chosen": cl.get("chosen_test_acc"), "clean_chosen_epoch": cl.get("chosen_epoch"),
            "clean_final": cl.get("final_test_acc"), "clean_test_peak_oracle": cl.get("peak_test_acc"),
            "protected_chosen": pr.get("chosen_test_acc"), "protected_chosen_epoch": pr.get("chosen_epoch"),
            "protected_final": pr.get("final_test_acc"), "protected_test_peak_oracle": pr.get("peak_test_acc"),
            "clean_robust": cl.get("robust_acc"), "protected_robust": pr.get("robust_acc"),
            "standard_clean": r.get("standard_clean_acc"),
            "recovered_vs_same": r.get("recovered_vs_same"), "recovered_vs_standard": r.get("recovered_vs_standard"),
            "verdict": r.get("verdict"), "reason": r.get("reason")}
    for cell in report["cells"]:
        if cell.get("patterns"):
            key = f"{cell['arch']}/{cell['defense']}"
            rows[key][f"patterns_{cell['train_data']}"] = {k: v["mean_predictive_power"]
                                                           for k, v in cell["patterns"].items()}
    return rows


def finished_clean_cells(mout: Path) -> dict:
    """The clean cells finished so far (before the protection exists), as summary rows."""
    rows = {}
    for f in sorted((mout / "cells").glob("*--clean.json")):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        rows[f"{r['arch']}/{r['defense']}"] = {
            "chosen_test_acc": r.get("chosen_test_acc"), "chosen_epoch": r.get("chosen_epoch"),
            "final_test_acc": r.get("final_test_acc"), "test_peak_oracle": r.get("peak_test_acc"),
            "robust_acc": r.get("robust_acc"), "robust_eval": (r.get("robust_eval") or {}).get("label"),
            "recipe": r.get("recipe"), "train_images": r.get("train_images"), "val_images": r.get("val_images"),
            "minutes": round(r["seconds_total"] / 60, 1) if r.get("seconds_total") else None,
            "val_curve": [h.get("val_acc") for h in r.get("history", [])],
            "test_curve": [h.get("test_acc") for h in r.get("history", [])]}
    return rows


def clean_subsets(c: dict, data_root):
    """The configuration's class-balanced CIFAR-10 train and test subsets (the matrix's images)."""
    train = load_dataset("cifar10", "train", data_root)
    if c["subset"]:
        train = train.subset(balanced_subset(train.labels, c["subset"], 0))
    return train, load_test("cifar10", data_root, MatrixConfig(test_subset=c["test_subset"]))


def label_noise(out: Path, c: dict, data_root, dev) -> dict:
    """CE vs APL vs TCR on 40 % symmetric label noise (clean test set)."""
    train, test = clean_subsets(c, data_root)
    noisy = replace(train, labels=symmetric_noise(train.labels, 10, 0.4, seed=0))
    wrong = (noisy.labels != train.labels).nonzero().squeeze(1)
    cfg = MatrixConfig(archs=[c["matrix_arch"]], defenses=["standard", "apl", "tcr"],
                       train=TrainConfig(epochs=c["noise_epochs"], lr=0.01, weight_decay=1e-4),
                       robust_images=0, patterns_for=["none"], recipes={},   # all three share APL's recipe
                       # as many label-only updates before TCR calibrates as the paper's first epoch
                       # (391 on 50k images), so the subset's smaller epochs do not starve it
                       tcr_warmup_epochs=max(1, round(50_000 / len(train))))
    recipe = {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay, "epochs": cfg.train.epochs,
              "schedule": cfg.train.schedule, "grad_clip": cfg.train.grad_clip,
              "tcr_warmup_epochs": cfg.tcr_warmup_epochs}
    results = {}
    for d in cfg.defenses:
        path = out / f"label-noise-{d}.json"
        cached = json.loads(path.read_text()) if path.exists() else {}
        if cached.get("recipe") == recipe:
            results[d] = cached
            continue
        log(f"label noise 40%: {d}")
        rec, _, model = run_cell(c["matrix_arch"], d, "noisy40", noisy, test, cfg, dev, "cifar10",
                              on_epoch=lambda r: log(f"    epoch {r.epoch}: train {r.train_acc:.3f} test {r.test_acc:.3f}"))
        # memorisation: the share of wrongly labelled training images predicted as their wrong label
        rec["wrong_labels_fitted"], _ = evaluate(model, noisy.subset(wrong))
        rec["true_labels_of_wrong_recovered"], _ = evaluate(model, train.subset(wrong))
        rec["recipe"] = recipe
        path.write_text(json.dumps(rec))
        results[d] = rec
    return {d: {"final_test_acc": r["final_test_acc"], "peak_test_acc": r["peak_test_acc"],
                "final_train_acc_on_noisy_labels": r["final_train_acc"],
                "wrong_labels_fitted": r["wrong_labels_fitted"],
                "true_labels_of_wrong_recovered": r["true_labels_of_wrong_recovered"],
                "recipe": r["recipe"], "minutes": r["seconds"] / 60}
            for d, r in results.items()}


def robust_generalisation(out: Path, c: dict, data_root, dev) -> dict:
    """AT vs AT-AWP on clean data, long enough for robust overfitting: robust accuracy per 3 epochs."""
    from unlearnable.eval.robust import robust_accuracy
    from unlearnable.train.defenses import DefenseContext, build_step
    from unlearnable.train.loop import build_model, prepare_batch, train

    train_set, test = clean_subsets(c, data_root)
    cfg = TrainConfig(epochs=c["awp_epochs"], schedule="multistep")
    x_probe, y_probe = prepare_batch(test.images[:500].to(dev)), test.labels[:500]
    x_final, y_final = prepare_batch(test.images[:1000].to(dev)), test.labels[:1000]
    results = {}
    for d in ("at", "awp"):
        path = out / f"robust-generalisation-{d}.json"
        settings = {"train": cfg.__dict__, "pgd_train": [c["at_steps"], c["at_alpha"]]}
        cached = json.loads(path.read_text()) if path.exists() else {}
        if cached.get("settings") == json.loads(json.dumps(settings)):
            results[d] = cached
            continue
        log(f"robust generalisation: {d}")
        model = build_model(c["matrix_arch"], 10, 3, cfg.seed, dev)
        step = build_step(d, DefenseContext(model, len(train_set), 10, "cifar10", cfg.epochs, cfg.grad_clip, cfg.seed,
                                            pgd_steps=c["at_steps"], pgd_alpha=c["at_alpha"],
                                            generator=torch.Generator().manual_seed(cfg.seed + 1)))
        curve = []

        def on_epoch(r) -> None:
            row = {"epoch": r.epoch, "train_acc": r.train_acc, "test_acc": r.test_acc}
            if r.epoch % 3 == 0 or r.epoch == cfg.epochs:
                row["robust_acc_pgd10"] = robust_accuracy(model, x_probe, y_probe, steps=10)
            curve.append(row)
            log(f"    epoch {r.epoch}: train {r.train_acc:.3f} test {r.test_acc:.3f} "
                f"robust {row.get('robust_acc_pgd10', float('nan')):.3f}")

        t0 = time.perf_counter()
        train(model, train_set, test, cfg, step=step, on_epoch=on_epoch)
        robust = [r["robust_acc_pgd10"] for r in curve if "robust_acc_pgd10" in r]
        rec = {"settings": settings, "curve": curve, "final_test_acc": curve[-1]["test_acc"],
               "final_robust_pgd10": robust[-1], "best_robust_pgd10": max(robust),
               "final_robust_pgd20": robust_accuracy(model, x_final, y_final, steps=20),
               "minutes": (time.perf_counter() - t0) / 60}
        path.write_text(json.dumps(rec))
        results[d] = rec
    return {d: {k: v for k, v in r.items() if k not in ("curve", "settings")} |
            {"robust_curve_pgd10": [(r_["epoch"], r_["robust_acc_pgd10"]) for r_ in r["curve"] if "robust_acc_pgd10" in r_]}
            for d, r in results.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--out", default="defenses-bench", help="work folder (reruns resume from it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--parts", default="samplewise,classwise,label-noise,families,awp")
    p.add_argument("--defenses", default="all", help="matrix defenses, in the order they are trained")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: report the matrix cells finished so far (a partial run's figures)")
    args = p.parse_args()
    c = CONFIGS[args.config]
    dev = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    t0 = time.perf_counter()
    result: dict = {"benchmark": "defenses", "config": args.config, "dataset": "cifar10",
                    "subset_size": c["subset"] or 50_000, "test_size": c["test_subset"] or 10_000,
                    "epochs": c["epochs"], "train_pgd": {"steps": c["at_steps"], "alpha": c["at_alpha"]}}
    mc = matrix_config(c)
    result["robust_eval"] = robust_settings(mc)
    result["matrix_settings"] = {"val_share": mc.val_share, "chance_margin": mc.chance_margin,
                                 "recipe_overrides": mc.recipes, "shared_recipe": mc.train.__dict__}
    defenses = parse_defenses(args.defenses)
    for mode in ("samplewise", "classwise"):
        if mode not in parts:
            continue
        mout = out / f"verify-{mode}"
        if mode == "classwise" and (out / "verify-samplewise" / "cells").exists():
            # clean cells without patterns are the same images and settings (their fingerprint does
            # not depend on the protection): reuse the sample-wise ones before training any; a copied
            # cell whose fingerprint does not fit (the standard cell, which has patterns) is retrained
            (mout / "cells").mkdir(parents=True, exist_ok=True)
            for f in (out / "verify-samplewise" / "cells").glob("*--clean.json"):
                if not (mout / "cells" / f.name).exists():
                    shutil.copy(f, mout / "cells" / f.name)
        if not args.finished_only:
            # the clean cells that do not depend on the protection first (same images, settings and
            # fingerprints, so the matrix below reuses them): the same work in a more useful order,
            # since a partial run then already says whether each defense's clean model learns
            src = load_dataset("cifar10", "train", args.data_root)
            idx = balanced_subset(src.labels, c["subset"], MinMinConfig().seed) if c["subset"] else None
            clean_cells("cifar10", idx if idx is not None else range(len(src)), out / f"verify-{mode}",
                        matrix_config(c, [c["matrix_arch"]], defenses), str(dev), args.data_root,
                        on_event=log_event("clean "))
        if args.finished_only:
            try:
                read_manifest(out / f"protected-{mode}")
            except Exception:
                result[mode] = {"status": "protection not finished", "clean_cells": finished_clean_cells(mout)}
                continue
        prot = protected_dir(out, mode, c, args.data_root, dev)
        m = read_manifest(prot)
        report = matrix(prot, mout, [c["matrix_arch"]], defenses, c, args.data_root, dev,
                        only_finished=args.finished_only)
        result[mode] = {"rounds": m["rounds"], "converged": m["converged"],
                        "final_surrogate_acc": m["final_surrogate_acc"], "generation_seconds": m["generation_seconds"],
                        "noise_settings": m.get("settings"), "protected_created": m.get("created"),
                        "cells_finished": len(report["cells"]), "cells_missing": report["cells_missing"],
                        "verdict_text": report["verdict_text"],
                        "table": table(report), "report": str(mout / "report.html")}
    if "families" in parts:
        for mode in ("samplewise", "classwise"):
            prot = protected_dir(out, mode, c, args.data_root, dev)
            fout = out / f"families-{mode}"
            if mode == "classwise":   # same clean images and settings, no patterns: reuse the clean cells
                (fout / "cells").mkdir(parents=True, exist_ok=True)
                for f in (out / "families-samplewise" / "cells").glob("*--clean.json"):
                    if not (fout / "cells" / f.name).exists():
                        shutil.copy(f, fout / "cells" / f.name)
            report = matrix(prot, fout, c["family_archs"], ["standard"], c, args.data_root, dev, patterns=["none"])
            result.setdefault("families", {})[mode] = table(report)
    if "awp" in parts:
        result["robust_generalisation"] = robust_generalisation(out, c, args.data_root, dev)
    if "label-noise" in parts:
        result["label_noise_40_symmetric"] = label_noise(out, c, args.data_root, dev)
    result.update(total_seconds=time.perf_counter() - t0, **runtime(dev))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
