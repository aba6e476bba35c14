"""Protect 20 photos of about 12 megapixels with the defaults, as a laptop user would.

The photos are made by upscaling the public-domain photos in ``samples/`` to 4000 x 3000
(JPEG quality 92, as a phone writes them; every fifth one as PNG), then
``unlearnable protect`` runs in a child process on them with the default settings. Prints JSON:
wall time, peak resident memory of the child, per-phase seconds, mean PSNR/SSIM, max change.

    python benchmarks/photos.py [--count 20] [--width 4000 --height 3000] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_photos(dest: Path, count: int, size: tuple[int, int]) -> list[Path]:
    sources = sorted(p for p in (ROOT / "samples").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    made = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as im:
            big = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        path = dest / (f"photo_{i:02d}.png" if i % 5 == 4 else f"photo_{i:02d}.jpg")
        big.save(path, quality=92) if path.suffix == ".jpg" else big.save(path, compress_level=1)
        made.append(path)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads given to torch in the child")
    ap.add_argument("--extra", default="", help="extra arguments for `unlearnable protect`")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "photos", Path(tmp) / "protected"
        src.mkdir()
        t0 = time.perf_counter()
        made = make_photos(src, args.count, (args.width, args.height))
        gen_s = time.perf_counter() - t0
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "unlearnable.cli.main", "protect", str(src), "-o", str(out), *args.extra.split()]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(proc.returncode)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        m = json.loads((out / "manifest.json").read_text())
    s = m["summary"]
    print(json.dumps({
        "benchmark": "photos", "photos": len(made), "megapixels_each": args.width * args.height / 1e6,
        "formats": {"jpeg": sum(p.suffix == ".jpg" for p in made), "png": sum(p.suffix == ".png" for p in made)},
        "wall_seconds": round(wall, 1), "goal_seconds": 120, "peak_rss_mb": round(peak_kb / 1024),
        "phase_seconds": {k: round(v, 1) for k, v in m["search"]["phase_seconds"].items()},
        "search_rounds": m["search"]["rounds"], "ok": s["ok"], "failed": s["failed"],
        "mean_psnr_db": round(s["mean_psnr"], 2), "mean_ssim": round(s["mean_ssim"], 4),
        "max_change_levels": s["max_change_levels"], "eps_255": m["eps_255"],
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "generation_seconds": round(gen_s, 1), "command": " ".join(cmd[2:]),
    }, indent=2))


if __name__ == "__main__":
    main()
