"""The perceptual budget on photos (``protect --perceptual``, ``unlearnable.noise.perceptual``): what it
does to the written files and to the protection, with and without it, at ε = 8/255.

Parts (``--parts``, comma-separated):

- ``quality``: ``protect`` with the defaults on the photos in ``samples/`` (one class), with and without
  ``--perceptual``; per photo and on average the written files' PSNR, SSIM and blotch figures
  (``unlearnable.eval.blotch``: low-passed chroma change on flat regions, and the same on luma), the
  search's rounds and final view loss. Writes 1:1 crops (PNG) of a flat and a textured region of the
  ``--crops`` photos to ``--crops-dir``: original | protected | protected --perceptual | the two changes
  × 8 around grey (same order). Minutes on a 2-core CPU.
- ``effect``: the verify-photos benchmark's setup (``benchmarks/photo_verify.py``: the first
  ``--photos`` CIFAR-10 test images of ``--cls`` upscaled to 256-pixel JPEGs, a quarter held out clean,
  victims ResNet-18/4 trained ``--epochs`` epochs through the scraper pipeline) once per ``--effect-modes``
  entry; held-out recognition of each protected and unprotected victim and the written files' figures.
  Measured: 26 minutes for the mode 'on' with one thread on a 2-core CPU shared with other jobs (the
  README's verify-photos run took 7 minutes on a quiet machine).

Prints JSON. ``torch.set_num_threads(--threads)`` (default 1: the machine is shared).

    python benchmarks/perceptual.py [--parts quality,effect] [--effect-modes off,on] [--crops astronaut,rocket]
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unlearnable.data.photos.decode import read_photo, to_rgb8
from unlearnable.eval.blotch import FLAT_STD
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.noise.perceptual import settings as perceptual_settings
from unlearnable.protect.photos import PhotoProtectConfig, protect_photos

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("psnr", "ssim", "blotch", "blotch_luma", "flat_share", "noise_max_levels", "max_change_levels")
CROP = 128


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def _summary(manifest: dict) -> dict:
    images = [e for e in manifest["images"] if e.get("status") == "ok"]
    hist = manifest["search"].get("history") or [{}]
    return {
        "photos": {Path(e["output"]).name: {k: (round(e[k], 4) if isinstance(e.get(k), float) else e.get(k))
                                            for k in FIGURES} for e in images},
        "mean": {k: _mean([e.get(k) for e in images]) for k in ("psnr", "ssim", "blotch", "blotch_luma")},
        "search": {"rounds": manifest["search"]["rounds"], "seconds": round(manifest["search"]["seconds"], 1),
                   "final_view_accuracy": hist[-1].get("surrogate_acc"), "final_view_loss": hist[-1].get("surrogate_loss")},
    }


def _crop_boxes(rgb: np.ndarray, k: int = 7) -> dict[str, tuple[int, int]]:
    """Top-left corners (row, column) of two CROP x CROP windows of the original on a stride-8 grid:
    *flat*, among the windows at least 60 % flat by the blotch measure's rule (7 x 7 local luma std
    under ``FLAT_STD``), the one whose mean luma is closest to mid-grey (where the eye sees most, Chou &
    Li), else the flattest; *textured*, the window with the highest mean local std."""
    y = torch.from_numpy(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[None, None]
    m = F.avg_pool2d(F.pad(torch.cat([y, y * y], 1), (k // 2,) * 4, mode="replicate"), k, stride=1)
    std = (m[:, 1:] - m[:, :1] ** 2).clamp(min=0).sqrt()
    s = F.avg_pool2d(std, CROP, stride=8)[0, 0]
    share = F.avg_pool2d((std < FLAT_STD).double(), CROP, stride=8)[0, 0]
    luma = F.avg_pool2d(y, CROP, stride=8)[0, 0]
    flat = torch.where(share >= 0.6, (luma - 128).abs(), torch.inf)
    lo = int(flat.argmin()) if torch.isfinite(flat).any() else int(share.argmax())
    hi, w = int(s.argmax()), s.shape[1]
    return {"flat": (lo // w * 8, lo % w * 8), "textured": (hi // w * 8, hi % w * 8)}


def _write_crops(name: str, src: Path, outs: dict[str, Path], dest: Path) -> dict:
    """One PNG per photo: rows flat / textured; columns original, protected, protected --perceptual, and
    the two changes x 8 around grey, all at 1:1."""
    orig = to_rgb8(read_photo(src).pixels)
    prot = {k: to_rgb8(read_photo(p).pixels) for k, p in outs.items()}
    boxes = _crop_boxes(orig)
    rows = []
    for r, c in boxes.values():
        def cut(a: np.ndarray) -> np.ndarray:
            return a[r:r + CROP, c:c + CROP]
        tiles = [cut(orig), cut(prot["off"]), cut(prot["on"])]
        for k in ("off", "on"):
            d = cut(prot[k]).astype(np.int64) - cut(orig).astype(np.int64)
            tiles.append(np.clip(128 + 8 * d, 0, 255).astype(np.uint8))
        gap = np.full((CROP, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], 1))
    sheet = np.concatenate([rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]], 0)
    path = dest / f"perceptual-{name}.png"
    Image.fromarray(sheet).save(path)
    return {"file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "boxes_row_col": {k: list(v) for k, v in boxes.items()}, "crop": CROP}


def quality(args, tmp: Path) -> dict:
    photos = sorted(p for p in (ROOT / "samples").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    res, outs = {}, {}
    for mode in ("off", "on"):
        out = tmp / f"samples-{mode}"
        t0 = time.perf_counter()
        m = protect_photos(photos, out, PhotoProtectConfig(perceptual=mode == "on", workers=1))
        res[mode] = dict(_summary(m), wall_seconds=round(time.perf_counter() - t0, 1))
        outs[mode] = out
    crops = {}
    if args.crops_dir:
        dest = Path(args.crops_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for stem in [s for s in args.crops.split(",") if s]:
            src = next(p for p in photos if p.stem == stem)
            crops[stem] = _write_crops(stem, src, {k: outs[k] / src.name for k in outs}, dest)
    return {"photos": "samples/ (7 photos, one class), protect defaults (class-wise, work size 64, JPEG q95 outputs)",
            "off": res["off"], "on": res["on"], "crops": crops}


def effect(args, tmp: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from photo_verify import export_class

    from unlearnable.train.loop import TrainConfig
    from unlearnable.verify.photos import PhotoVerifyConfig, verify_photo_folder

    folder = export_class(tmp / "photos", args.cls, args.photos, 256, args.data_root)
    out = {}
    for mode in [m for m in args.effect_modes.split(",") if m]:
        t0 = time.perf_counter()
        cfg = PhotoVerifyConfig(
            holdout=0.25, reference="cifar10", exclude_classes=(args.cls,), jpeg_quality=75, arch=args.arch,
            train=TrainConfig(epochs=args.epochs, seed=args.seed),
            protect=PhotoProtectConfig(search=MinMinConfig.for_photos(seed=args.seed), perceptual=mode == "on",
                                       data_root=args.data_root),
            seed=args.seed, data_root=args.data_root)
        rep = verify_photo_folder(folder.parent, tmp / f"verify-{mode}", cfg)
        manifest = json.loads((tmp / f"verify-{mode}" / "protected" / "manifest.json").read_text())
        s = _summary(manifest)
        out[mode] = {
            "heldout_accuracy": {r["trained_on"]: r["heldout_accuracy"] for r in rep["runs"]},
            "photo_train_accuracy": {r["trained_on"]: r["photo_train_accuracy"] for r in rep["runs"]},
            "reference_test_accuracy": {r["trained_on"]: round(r["reference_test_accuracy"], 4) for r in rep["runs"]},
            "verdict": rep.get("verdict"), "written": s["mean"], "search": s["search"],
            "seconds": round(time.perf_counter() - t0, 1)}
    return {"photo_set": f"CIFAR-10 test images of '{args.cls}', first {args.photos}, upscaled to 256px JPEG q95; "
                         f"25 % held out clean; victim {args.arch}, {args.epochs} epochs, scraper 32 px + JPEG q75",
            "chance": 0.1, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="quality,effect")
    ap.add_argument("--effect-modes", default="off,on", help="protect without (off) and with (on) --perceptual")
    ap.add_argument("--crops", default="astronaut,rocket,coffee", help="sample photos (stems) to crop")
    ap.add_argument("--crops-dir", default=str(ROOT / "benchmarks" / "results"), help="'' to write no crops")
    ap.add_argument("--cls", default="automobile")
    ap.add_argument("--photos", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--arch", default="resnet18-narrow")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = [p for p in args.parts.split(",") if p]
    t0 = time.perf_counter()
    report: dict = {"benchmark": "perceptual", "eps_255": 8.0, "perceptual": perceptual_settings(), "parts": parts}
    with tempfile.TemporaryDirectory() as tmp:
        if "quality" in parts:
            report["quality"] = quality(args, Path(tmp))
        if "effect" in parts:
            report["effect"] = effect(args, Path(tmp))
    report["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                         "torch_threads": args.threads, "torch": torch.__version__}
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    report["command"] = shlex.join(["python3", "benchmarks/perceptual.py", *sys.argv[1:]])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
