"""Face protection on real identities: does `protect --faces` stop a face scraper from learning a person?

Data: ``../shared/data/faces-glint-sample`` (2,159 aligned 112 × 112 photos of 23 people, sampled from
Glint360k; research use only, never shipped). Photos are made full-size by placing each face, upscaled,
into a real background from ``samples/`` at a random place and size, so that detection, alignment and
paste-back run as on a user's photos.

The experiment is ``unlearnable.verify.photos.verify_photo_folder`` in faces mode (what
``unlearnable verify-photos --faces`` runs): a folder with one subfolder per *protected* person; 20 % of
each person's photos held out clean, the rest protected with ``protect --faces``; a face scraper (MTCNN
detection, alignment, resize, JPEG 75) feeds two fresh face recognisers trained on every identity: the
protected people plus half of the *other* people of the sample (80 % train / 20 % test by sorted file
name; their photos are placed into backgrounds and found and aligned by the same scraper, and re-encoded
with the same JPEG, so that nothing but the faces and the noise tells the two groups apart; before this
rule, the victim could narrow a protected person's held-out photo down to the four protected people by
the re-alignment's resampling and the JPEG artifacts alone; ``--raw-others`` keeps their crops as they
are). The other half is the user's ``--reference`` of other faces for the search,
disjoint from the scraper's identities (a user cannot know whom else a scraper's recogniser learns). One
victim trains on the protected photos, the other on the same photos unprotected. Reported per search
reference (``faces``: that folder; ``shipped``: the default non-face bank) and ε: held-out recognition of
the protected people (per person and mean) by both victims, recognition of the unprotected people (their
test split) in the same runs, and the quality of the protected faces (PSNR/SSIM on each face box, from
the manifest).

``whole``: the same experiment with the default whole-photo protection (no ``--faces``) at 8/255, to
measure whether face mode should be the default when faces are found.

Speed (``speed``): 20 photos of 12 MP (4000 × 3000) with one to five faces each, through
``protect --faces`` end to end (detection, search, paste-back, JPEG writing, metrics), wall time.

Usage: ``python benchmarks/faces.py --config cpu [--out DIR]`` prints one JSON. ``cpu``: victims
``smallcnn`` at 32 px, 40 epochs, lr 0.01 (measured on this machine: 79 % mean recognition of all 23
people's held-out clean photos when nothing is protected; ``resnet18-narrow`` at lr 0.05 and 56 px
learned less from these few photos per person); ``gpu``: closer to the paper (whose victim is
Inception-ResNet-v1 at 112 px), ``resnet18`` at 112 px for 60 epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GLINT = ROOT.parent / "shared" / "data" / "faces-glint-sample" / "images"
BACKGROUNDS = ["coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "camera.png", "retina.jpg"]

# each run of the effect part: the search reference ("shipped": the default non-face bank; "faces": the
# user's --reference of other faces), eps in 255ths, optionally "surrogate_start" (fresh or pretrained;
# default: the product's), and any MinMinConfig field over the face defaults
RUNS = [{"reference": "shipped", "eps": 8}, {"reference": "faces", "eps": 8}, {"reference": "shipped", "eps": 16}]
CONFIGS = {
    "cpu": {"protected": ["Barack_Obama", "Keira_Knightley", "Simon_Cowell", "Tom_Hanks"], "photo_side": 960,
            "arch": "smallcnn", "size": 32, "epochs": 40, "batch_size": 64, "lr": 0.01,
            "exclude": ["Lindsay_Lohan"], "runs": RUNS},
    "gpu": {"protected": ["Barack_Obama", "Keira_Knightley", "Simon_Cowell", "Tom_Hanks", "Halle_Berry",
                          "Hugh_Laurie"], "photo_side": 1600,
            "arch": "resnet18", "size": 112, "epochs": 60, "batch_size": 128, "lr": 0.1,
            "exclude": ["Lindsay_Lohan"], "runs": RUNS},
}


def _background(name: str, w: int, h: int) -> Image.Image:
    with Image.open(ROOT / "samples" / name) as im:
        return im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)


def _compose(faces: list[Path], side: int, rng: np.random.Generator, face_range: tuple[float, float]) -> Image.Image:
    """A (side × 3/4 side) photo: a background from samples/ with ``faces`` placed, upscaled, without overlap."""
    w, h = side, side * 3 // 4
    photo = _background(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], w, h)
    boxes: list[tuple[int, int, int]] = []
    for f in faces:
        for _ in range(100):
            s = int(rng.uniform(*face_range) * h)
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            if all(x + s <= bx or bx + bs <= x or y + s <= by or by + bs <= y for bx, by, bs in boxes):
                break
        boxes.append((x, y, s))
        with Image.open(f) as im:
            photo.paste(im.convert("RGB").resize((s, s), Image.Resampling.BICUBIC), (x, y))
    return photo


def _people() -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(GLINT.iterdir()) if d.is_dir()}


def build_folders(cfg: dict, work: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """The protected people's full-size photos (work/photos/<person>/); the other people, alternately
    (sorted by name), either the scraper's other identities, split into work/reference/{train,test}/
    <person>/ (their photos placed into backgrounds as the protected people's are, then detected and
    aligned by the face scraper; ``scrape_others`` False: the sample's crops as they are), or the
    user's ``--reference`` of other faces for the search, work/search-reference/<person>/ (links). The
    two sets of people are disjoint: the user cannot know whom else the scraper's recogniser learns."""
    rng = np.random.default_rng(seed)
    people = _people()
    photos, ref, search_ref = work / "photos", work / "reference", work / "search-reference"
    for name in cfg["protected"]:
        (photos / name).mkdir(parents=True)
        for f in people[name]:
            _compose([f], cfg["photo_side"], rng, (0.2, 0.45)).save(photos / name / f"{f.stem}.jpg", quality=95)
    from unlearnable.verify.faces import scrape_faces

    others = [n for n in people if n not in cfg["protected"] and n not in cfg["exclude"]]
    others_rng = np.random.default_rng(seed + 1)
    for i, name in enumerate(others):
        files = people[name]
        if i % 2:  # the user's reference of other faces: every photo
            (search_ref / name).mkdir(parents=True)
            for f in files:
                os.symlink(f, search_ref / name / f.name)
            continue
        cut = int(round(len(files) * 0.8))
        for split, part in (("train", files[:cut]), ("test", files[cut:])):
            (ref / split / name).mkdir(parents=True)
            if not cfg.get("scrape_others", True):   # the earlier protocol: the sample's own crops
                for f in part:
                    os.symlink(f, ref / split / name / f.name)
                continue
            # placed into backgrounds and found and aligned by the scraper, as the protected people are
            # (else the re-alignment's resampling alone would tell the protected people from the others)
            composed = [np.asarray(_compose([f], cfg["photo_side"], others_rng, (0.2, 0.45))) for f in part]
            crops, found = scrape_faces(composed)
            for crop, j in zip(crops, found):
                Image.fromarray(crop.permute(1, 2, 0).numpy()).save(ref / split / name / f"{part[j].stem}.png")
    return photos, ref, search_ref


def run_effect(cfg: dict, work: Path, device: str, faces_mode: bool = True, seed: int = 0) -> list[dict]:
    from unlearnable.noise.views import FACE_VIEW, PHOTO_VIEW
    from unlearnable.protect.photos import PhotoProtectConfig, search_config
    from unlearnable.train.loop import TrainConfig
    from unlearnable.verify.photos import PhotoVerifyConfig, verify_photo_folder

    photos, ref, search_ref = build_folders(cfg, work, seed)
    results = []
    for run in cfg["runs"] if faces_mode else [{"reference": "shipped", "eps": 8}]:
        run = dict(run)
        reference, eps = run.pop("reference", "shipped"), run.pop("eps", 8)
        start = run.pop("surrogate_start", None)
        defense = run.pop("defense", "standard")
        view = run.pop("view", {})   # overrides of the product's search views (faces: FACE_VIEW)
        t0 = time.perf_counter()
        protect = PhotoProtectConfig(search=search_config(faces_mode, eps=eps / 255, seed=seed, **run),
                                     view=replace(FACE_VIEW if faces_mode else PHOTO_VIEW, **view),
                                     faces=faces_mode, device=device, surrogate_start=start,
                                     reference=str(search_ref) if reference == "faces" else None)
        vcfg = PhotoVerifyConfig(holdout=0.2, reference=str(ref), reference_per_class=10_000, size=cfg["size"],
                                 arch=cfg["arch"], train=TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                                                     lr=cfg["lr"], seed=seed),
                                 protect=protect, faces=True, defense=defense, seed=seed, device=device)
        slug = "-".join([reference, f"eps{eps}"] + [f"{k}{v}" for k, v in sorted(run.items())]
                        + ([f"start-{start}"] if start else []) + ([defense] if defense != "standard" else [])
                        + [f"view-{k}{v}" for k, v in sorted(view.items())])
        rep = verify_photo_folder(photos, work / f"verify-{'faces' if faces_mode else 'whole'}-{slug}", vcfg)
        runs = {r["trained_on"]: r for r in rep["runs"]}
        results.append({
            "protection_mode": "protect --faces" if faces_mode else "protect (whole photo, the default)",
            "eps_255": eps, "search_overrides": run, "view_overrides": view, "surrogate_start": protect.surrogate_start,
            "victim_defense": defense,
            "search_reference": {"faces": f"--reference: {len(os.listdir(search_ref))} other people's aligned faces "
                                          "(not among the scraper's identities)",
                                 "shipped": "the shipped non-face bank (the default)"}[reference],
            "protected_people": rep["classes"],
            "heldout_photos": rep["held_out_clean"], "trained_photos": rep["protected_for_training"],
            "no_face_photos": rep["scraper"]["no_face_photos"],
            "protected_people_recognised": {k: {"mean": r["heldout_accuracy"],
                                                "per_person": dict(zip(rep["classes"], r["heldout_per_class"]))}
                                            for k, r in runs.items()},
            "unprotected_people_recognised": {k: r["reference_test_accuracy"] for k, r in runs.items()},
            "unprotected_people": rep["reference_classes"], "chance": rep["chance_heldout_accuracy"],
            "verdict": rep.get("verdict"), "protection": rep["protection"],
            "victim": {"arch": cfg["arch"], "size": cfg["size"], "epochs": cfg["epochs"]},
            "seconds": time.perf_counter() - t0,
        })
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def run_speed(cfg: dict, work: Path, device: str, n: int = 20) -> dict:
    """20 photos of 4000 × 3000 with 1-5 faces each through protect --faces, end to end."""
    from unlearnable.protect.photos import PhotoProtectConfig, protect_photos

    rng = np.random.default_rng(1)
    people = _people()
    folder = work / "speed" / "me"
    folder.mkdir(parents=True)
    pool = [f for name in cfg["protected"] for f in people[name]]
    placed = 0
    for i in range(n):
        k = int(rng.integers(1, 6))
        placed += k
        faces = [pool[j] for j in rng.choice(len(pool), k, replace=False)]
        _compose(faces, 4000, rng, (0.08, 0.2)).save(folder / f"IMG_{i:04d}.jpg", quality=92)
    t0 = time.perf_counter()
    m = protect_photos([folder], work / "speed-out", PhotoProtectConfig(faces=True, device=device))
    wall = time.perf_counter() - t0
    s = m["summary"]
    return {"photos": n, "megapixels": 12.0, "faces_placed": placed, "faces_found": s["faces"], "no_face": s["no_face"],
            "wall_seconds": wall, "phase_seconds": m["search"].get("phase_seconds"),
            "rounds": m["search"].get("rounds"),
            "mean_face_ssim": s["mean_face_ssim"], "mean_face_psnr": s["mean_face_psnr"], "mean_ssim": s["mean_ssim"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="keep the work folder here (default: a temp folder)")
    ap.add_argument("--parts", default="effect,whole,speed", help="comma-separated: effect (protect --faces at "
                    "each eps), whole (whole-photo protection, eps 8, same scraper), speed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0, help="one seed for the photos' placement, the held-out split, "
                    "the search and the victims (runs with other seeds show the spread)")
    ap.add_argument("--raw-others", action="store_true", help="the earlier protocol: the scraper's other "
                    "identities as the sample's aligned crops, not placed into photos and scraped")
    ap.add_argument("--runs", type=json.loads, default=None, help="JSON list of effect runs (default: RUNS), e.g. "
                    '\'[{"reference": "shipped", "eps": 8, "structure": "lowpass-4"}]\'; "defense": how both victims '
                    'train (unlearnable.train.defenses, e.g. "grayworld"; default standard); "view": overrides of the '
                    'search views (noise.views.FACE_VIEW, PHOTO_VIEW for whole), e.g. {"white_balance": 0} for the face '
                    'views before 2026-11-30')
    args = ap.parse_args()
    if not GLINT.is_dir():
        sys.exit(f"needs {GLINT} (../shared/data/faces-glint-sample)")
    cfg = {**CONFIGS[args.config], **({"runs": args.runs} if args.runs else {}), "scrape_others": not args.raw_others}
    work = args.out or Path(tempfile.mkdtemp(prefix="unlearnable-faces-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    out = {"benchmark": "faces", "config": args.config, "settings": cfg, "seed": args.seed,
           "data": "faces-glint-sample (23 people from Glint360k, research use only)",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                      f"{'cuda' if torch.cuda.is_available() else 'cpu'}"}
    try:
        if "effect" in parts:
            out["effect"] = run_effect(cfg, work / "effect", args.device, seed=args.seed)
        if "whole" in parts:  # the default whole-photo mode against the same face scraper
            out["whole_photo_mode"] = run_effect(cfg, work / "whole", args.device, faces_mode=False, seed=args.seed)
        if "speed" in parts:
            out["speed"] = run_speed(cfg, work, args.device)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    out["wall_seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
