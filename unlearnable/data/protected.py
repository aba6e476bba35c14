"""On-disk form of a protected dataset, as a scraper (and ``unlearnable verify``) reads it::

    OUT/protected.json        manifest: source dataset and indices, settings, rounds, budget check
    OUT/train/<class>/<i>.png protected images, uint8 PNG, <i> = index in the source training set
    OUT/indices.npy           int64 (N,): source-training-set index of each protected image
    OUT/perturbation.npy      float16 raw δ in [-ε, ε]: (N, C, H, W) sample-wise, (K, C, H, W) class-wise

``protected.json`` is written last, so its presence marks a complete output.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataNotFoundError, UnlearnableError
from .datasets import ImageTensors

FORMAT = "unlearnable-protected-dataset/1"
MANIFEST = "protected.json"


def class_dir_name(k: int, name: str) -> str:
    """A safe, unique folder name for class ``k``: its name with path-unsafe characters replaced."""
    safe = re.sub(r"[^\w.\- ]+", "_", name).strip(" .") or f"class_{k}"
    return safe


def write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_protected(out_dir: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor,
                   classes: list[str], source_indices: torch.Tensor, delta: torch.Tensor,
                   manifest: dict) -> Path:
    """Write the protected uint8 ``images`` (N, C, H, W) with their ``labels`` and the raw ``delta``;
    ``manifest`` is completed with the layout fields and written last. Returns the manifest path."""
    out = Path(out_dir)
    dirs = [class_dir_name(k, c) for k, c in enumerate(classes)]
    if len(set(dirs)) != len(dirs):
        dirs = [f"{k:03d}_{d}" for k, d in enumerate(dirs)]
    width = max(5, len(str(int(source_indices.max()) if len(source_indices) else 0)))
    for d in dirs:
        (out / "train" / d).mkdir(parents=True, exist_ok=True)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i, (img, y, src) in enumerate(zip(arr, labels.tolist(), source_indices.tolist())):
        pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
        pil.save(out / "train" / dirs[y] / f"{src:0{width}d}.png", compress_level=1)
    np.save(out / "indices.npy", source_indices.cpu().numpy().astype(np.int64))
    np.save(out / "perturbation.npy", delta.cpu().numpy().astype(np.float16))
    manifest = dict(manifest, format=FORMAT, classes=list(classes), class_dirs=dirs,
                    num_images=int(images.shape[0]), image_shape=list(images.shape[1:]),
                    files={"images": "train/<class_dir>/<source index>.png", "indices": "indices.npy",
                           "perturbation": "perturbation.npy"})
    write_json_atomic(manifest, out / MANIFEST)
    return out / MANIFEST


def read_manifest(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise DataNotFoundError(f"{path} not found: {out_dir} is not a finished protected dataset "
                                "(run `unlearnable protect-dataset ... -o DIR` first)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise UnlearnableError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_protected(out_dir: str | os.PathLike) -> tuple[ImageTensors, dict]:
    """The protected training set in source-index order (as saved), and its manifest."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    indices = np.load(out / "indices.npy")
    pos = {int(s): i for i, s in enumerate(indices)}
    c, h, w = manifest["image_shape"]
    images = np.zeros((len(indices), h, w, c), dtype=np.uint8)
    labels = np.full(len(indices), -1, dtype=np.int64)
    for k, d in enumerate(manifest["class_dirs"]):
        for f in (out / "train" / d).glob("*.png"):
            i = pos.get(int(f.stem)) if f.stem.isdigit() else None
            if i is None:
                raise UnlearnableError(f"{f} is not one of the protected images listed in indices.npy")
            with Image.open(f) as im:
                a = np.asarray(im)
            images[i] = a[:, :, None] if a.ndim == 2 else a
            labels[i] = k
    if (labels < 0).any():
        raise UnlearnableError(f"{out} is missing {(labels < 0).sum()} protected images")
    ds = ImageTensors(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels),
                      manifest["classes"], f"protected:{manifest.get('dataset', out)}", {"indices": indices})
    return ds, manifest
