"""The README's face before/after picture: ``unlearnable protect --faces`` with its defaults on
``samples/astronaut.png``, then a 1:1 sheet of 160 × 160 pixels around the face (rows 37-196, columns
144-303): the original, the written file, and their difference × 8 around mid-grey, 8-pixel white
gaps. Prints the face box's PSNR / SSIM and the search's rounds from the manifest, as JSON.

    python benchmarks/face_crop.py [--out benchmarks/results/faces-before-after.png]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BOX = (37, 144, 160)  # top, left, side: the face of samples/astronaut.png


def sheet(original: np.ndarray, written: np.ndarray, box=BOX, gain: int = 8, gap: int = 8) -> np.ndarray:
    """original | written | (written − original) × gain + 128, cropped to ``box``, white gaps."""
    y, x, s = box
    a = original[y:y + s, x:x + s].astype(np.int64)
    b = written[y:y + s, x:x + s].astype(np.int64)
    diff = np.clip(128 + gain * (b - a), 0, 255)
    white = np.full((s, gap, 3), 255)
    return np.concatenate([a, white, b, white, diff], 1).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faces-before-after.png"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "astronaut"
        src.mkdir()
        shutil.copy(ROOT / "samples" / "astronaut.png", src / "astronaut.png")
        subprocess.run([sys.executable, "-m", "unlearnable", "protect", str(src), "-o", str(Path(tmp) / "out"),
                        "--faces"], check=True, stdout=subprocess.DEVNULL)
        manifest = json.loads((Path(tmp) / "out" / "manifest.json").read_text())
        original = np.asarray(Image.open(src / "astronaut.png").convert("RGB"))
        written = np.asarray(Image.open(Path(tmp) / "out" / "astronaut.png").convert("RGB"))
    Image.fromarray(sheet(original, written)).save(args.out)
    entry = manifest["images"][0]
    print(json.dumps({"out": args.out, "faces": entry.get("faces"), "rounds": manifest["search"].get("rounds"),
                      "max_change_levels": int(np.abs(written.astype(int) - original.astype(int)).max())}, indent=1))


if __name__ == "__main__":
    main()
