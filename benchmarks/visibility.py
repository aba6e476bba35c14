"""How visible the noise of protected photos is, measured on the written files: S-CIELAB
(``unlearnable.eval.scielab``; Zhang & Wandell 1996) per photo, over all pixels and over the flat ones
(``unlearnable.eval.blotch.flat_mask``, where blotches show), next to the manifest's PSNR, SSIM and
blotch. The share of pixels above one just-noticeable difference (ΔE*ab 2.3) turns the blotch
figure into a visible / not visible verdict; ``colour_*`` is the chromatic part (Δa*, Δb*) alone.

    python benchmarks/visibility.py protected/ [more/ ...] [--samples-per-degree 40] [--originals samples/]

Each argument is a folder ``unlearnable protect`` wrote. The originals are its manifest entries'
``input`` paths, or with ``--originals`` the files of the same name there; either way each original's
SHA-256 must be the manifest's ``input_sha256`` (a changed original is an error, not a figure). Prints
JSON: per folder, per photo and the means over photos. Seconds per megapixel on a CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from unlearnable.data.photos.decode import read_photo
from unlearnable.eval.blotch import flat_mask
from unlearnable.eval.scielab import JND, SAMPLES_PER_DEGREE, scielab

MANIFEST_FIGURES = ("psnr", "ssim", "blotch", "blotch_luma", "flat_share")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def score_folder(folder: Path, spd: float, originals: Path | None = None) -> dict:
    """The folder's per-photo figures (written files against their originals) and their means."""
    manifest = json.loads((folder / "manifest.json").read_text())
    photos = {}
    for e in manifest["images"]:
        if e.get("status") != "ok":
            continue
        src = originals / Path(e["input"]).name if originals else Path(e["input"])
        if _sha256(src) != e["input_sha256"]:
            raise SystemExit(f"{src} is not the original the manifest names (SHA-256 differs)")
        a, b = read_photo(src).pixels, read_photo(folder / e["output"]).pixels
        if a.dtype != b.dtype:
            raise SystemExit(f"{e['output']}: the written file's bit depth differs from the original's")
        top = float(np.iinfo(a.dtype).max)
        photos[e["output"]] = {**{k: e.get(k) for k in MANIFEST_FIGURES},
                               "scielab": scielab(a, b, spd, top),
                               "scielab_flat": scielab(a, b, spd, top, mask=flat_mask(a, top))}

    def mean(part: str, key: str) -> float | None:
        vals = [p[part][key] for p in photos.values() if p[part][key] is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    means = {k: round(float(np.mean([p[k] for p in photos.values()])), 4) for k in ("psnr", "ssim")}
    means["blotch"] = round(float(np.mean([p["blotch"] for p in photos.values() if p["blotch"] is not None])), 4)
    for part in ("scielab", "scielab_flat"):
        means[part] = {k: mean(part, k) for k in ("mean", "over_jnd", "colour_mean", "colour_over_jnd")}
    return {"photos": photos, "mean_over_photos": means, "manifest_settings": manifest.get("settings")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--samples-per-degree", type=float, default=SAMPLES_PER_DEGREE,
                   help="viewing: image pixels per degree of visual angle (40: 1:1 on a 96-ppi screen from 60 cm)")
    p.add_argument("--originals", type=Path, default=None, help="folder of the originals (default: the manifest's "
                   "input paths)")
    args = p.parse_args()
    out = {"benchmark": "visibility", "samples_per_degree": args.samples_per_degree, "jnd_delta_e": JND,
           "folders": {str(f): score_folder(f, args.samples_per_degree, args.originals) for f in args.folders}}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
