"""Folder verification on a real photo set: does a protected "personal class" stay unlearnable?

The photo set is one CIFAR-10 class taken from the *test* split (so the surrogate never trained
on these images), upscaled to ``--photo-size`` pixels and saved as JPEG (quality 95) files, as a
person's folder of photos of one subject. ``unlearnable verify`` semantics then apply: a share
is held out clean, the rest is protected with the defaults, and two fresh victims train on the
other nine CIFAR-10 classes (``--per-class`` training images each, as many as the protected
photos, so that the photo class is not a minority the unprotected victim could ignore) plus the photos as a tenth
class, through the scraper pipeline (resize to 32, JPEG q75, crop + flip). Prints the report JSON
(with the verdict: ``unlearnable.eval.summary.photo_verdict``); ``--out DIR`` keeps the protected
photos and the HTML report (``DIR/verify/report.html``), otherwise they go with a temp folder.

    python benchmarks/photo_verify.py [--cls automobile] [--photos 400] [--epochs 20] [--arch resnet18-narrow]
        [--view '{"white_balance": 0}'] [--defense grayworld]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from unlearnable.data.datasets import load_dataset
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.noise.views import PHOTO_VIEW
from unlearnable.protect.photos import PhotoProtectConfig
from unlearnable.train.loop import TrainConfig
from unlearnable.verify.photos import PhotoVerifyConfig, verify_photo_folder


def export_class(dest: Path, cls: str, count: int, size: int, data_root: str | None) -> Path:
    test = load_dataset("cifar10", "test", data_root)
    k = test.classes.index(cls)
    idx = (test.labels == k).nonzero().flatten()[:count]
    folder = dest / cls
    folder.mkdir(parents=True)
    for i in idx.tolist():
        arr = test.images[i].permute(1, 2, 0).numpy()
        Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{cls}_{i:05d}.jpg",
                                                                                  quality=95)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cls", default="automobile")
    ap.add_argument("--photos", type=int, default=400)
    ap.add_argument("--photo-size", type=int, default=256)
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--per-class", type=int, default=None,
                    help="reference images per class (default: the protected photos' count, so no class is a minority)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--arch", default="resnet18-narrow")
    ap.add_argument("--mode", default="classwise")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--search", default="{}", help="JSON object of other search settings (MinMinConfig.for_photos "
                                                   "overrides), e.g. '{\"steps\": 20}'")
    ap.add_argument("--view", default="{}", help="JSON object of scraper-view settings for the search, overriding "
                                                 "the product's (noise.views.PHOTO_VIEW), e.g. '{\"white_balance\": 0}' "
                                                 "for the plain views of runs before 2026-11-30")
    ap.add_argument("--surrogate-start", choices=["fresh", "pretrained"], default=None,
                    help="where the search's surrogate starts (default: the product's, fresh since 2026-11-30; "
                    "pretrained before)")
    ap.add_argument("--perceptual", action="store_true", help="protect with --perceptual (the JND budget)")
    ap.add_argument("--defense", default="standard", help="how both victims train (unlearnable.train.defenses), "
                                                         "e.g. grayworld")
    ap.add_argument("--no-jpeg", action="store_true", help="scraper pipeline without the JPEG re-encode")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the exported photos, protected copies and report.html here "
                                                "(a new folder; default: a temp folder, removed)")
    args = ap.parse_args()
    overrides = json.loads(args.search)
    view = json.loads(args.view)
    if not isinstance(overrides, dict) or not isinstance(view, dict):
        ap.error("--search and --view take a JSON object")
    t0 = time.perf_counter()
    if args.out and Path(args.out).exists():
        ap.error(f"--out {args.out} exists: give a new folder")
    with tempfile.TemporaryDirectory() as tmp:
        if args.out:
            tmp = args.out
        folder = export_class(Path(tmp) / "photos", args.cls, args.photos, args.photo_size, args.data_root)
        cfg = PhotoVerifyConfig(
            holdout=args.holdout, reference="cifar10", reference_per_class=args.per_class,
            exclude_classes=(args.cls,), jpeg_quality=None if args.no_jpeg else 75, arch=args.arch,
            defense=args.defense,
            train=TrainConfig(epochs=args.epochs, seed=args.seed),
            protect=PhotoProtectConfig(search=MinMinConfig.for_photos(**{"mode": args.mode, "max_rounds": args.rounds,
                                                                         "seed": args.seed, **overrides}),
                                       view=replace(PHOTO_VIEW, **view), surrogate_start=args.surrogate_start,
                                       perceptual=args.perceptual,
                                       device=args.device, data_root=args.data_root),
            seed=args.seed, data_root=args.data_root, device=args.device)
        report = verify_photo_folder(folder.parent, Path(tmp) / "verify", cfg)
    report.pop("held_out_files", None)
    report["benchmark"] = "photo_verify"
    report["mode"] = args.mode
    report["search_overrides"] = overrides
    report["view_overrides"] = view
    report["surrogate_start"] = cfg.protect.surrogate_start
    report["perceptual"] = args.perceptual
    report["photo_set"] = (f"CIFAR-10 test images of class '{args.cls}', first {args.photos}, "
                           f"upscaled to {args.photo_size}px JPEG q95")
    report["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
