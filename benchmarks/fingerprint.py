"""Behaviour fingerprint: run the CLI on fixed inputs with fixed seeds and print the SHA-256 of every
file it wrote, as JSON. Run it before and after a refactor that must not change behaviour; the two
outputs must be identical (same machine, same torch, same thread count: float reductions differ
otherwise).

    python benchmarks/fingerprint.py [--unlearnable PATH]    # ~5 min on 2 CPU cores

Cases (each on the CLI's defaults unless named):
  photos       ``protect samples/`` (the README's first command: class-wise);
  photos-sw    the same, sample-wise;
  dataset-sw   ``protect-dataset cifar10`` sample-wise, SmallCNN surrogate, 200-image subset, 2 rounds;
  dataset-cw   the same, class-wise, 3 rounds;
  folder       ``protect-dataset`` on an ImageFolder of 6 sample photos of mixed sizes (2 classes);
  faces        ``protect --faces`` on ``samples/astronaut.png`` (the face defaults: detection, alignment,
               the face schedule, paste-back).
Manifests and journals (``*.json``, ``*.jsonl``) record timings, so they are listed by name only;
the engine checkpoint is skipped for the same reason. A photo search state (``search.pt``) records
the settings by name too, so its tensors are hashed one by one instead of the file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_SUFFIXES = {".json", ".jsonl", ".lock"}


def digest(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if p.suffix in SKIP_SUFFIXES or p.name == "checkpoint.pt":
            out[rel] = "(not hashed)"
        elif p.name == "search.pt":
            import torch
            blob = torch.load(p, map_location="cpu", weights_only=True)
            out[rel] = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                        for k, v in sorted(blob.items()) if isinstance(v, torch.Tensor)}
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unlearnable", default=shutil.which("unlearnable") or "unlearnable",
                   help="the CLI executable to fingerprint")
    args = p.parse_args()
    photos = sorted(q for q in (ROOT / "samples").iterdir() if q.suffix.lower() in {".jpg", ".jpeg", ".png"})
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "folder-in"
        for i, q in enumerate(photos[:6]):
            (folder / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
            shutil.copy(q, folder / ("a" if i % 2 else "b") / q.name)
        (tmp / "faces-in").mkdir()
        shutil.copy(ROOT / "samples" / "astronaut.png", tmp / "faces-in")
        cases = {
            "photos": ["protect", str(ROOT / "samples"), "-o", str(tmp / "photos")],
            "photos-sw": ["protect", str(ROOT / "samples"), "-o", str(tmp / "photos-sw"), "--mode", "samplewise"],
            "dataset-sw": ["protect-dataset", "cifar10", "-o", str(tmp / "dataset-sw"), "--arch", "smallcnn",
                           "--subset", "200", "--max-rounds", "2", "--mode", "samplewise"],
            "dataset-cw": ["protect-dataset", "cifar10", "-o", str(tmp / "dataset-cw"), "--arch", "smallcnn",
                           "--subset", "200", "--max-rounds", "3", "--mode", "classwise"],
            "folder": ["protect-dataset", str(folder), "-o", str(tmp / "folder"), "--arch", "smallcnn",
                       "--max-rounds", "2"],
            "faces": ["protect", str(tmp / "faces-in"), "-o", str(tmp / "faces"), "--faces"],
        }
        for name, argv in cases.items():
            run = subprocess.run([args.unlearnable, *argv, "--device", "cpu"], capture_output=True, text=True)
            out = Path(argv[argv.index("-o") + 1])
            result[name] = {"exit": run.returncode, "files": digest(out) if out.exists() else {}}
            if run.returncode not in (0, 1):
                result[name]["stderr_tail"] = run.stderr[-2000:]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
