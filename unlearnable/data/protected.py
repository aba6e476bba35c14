"""On-disk form of a protected dataset, as a scraper (and ``unlearnable verify``) reads it.

Two layouts of the images, recorded as ``layout`` in the manifest:

- ``indexed`` (built-in datasets, which have no file names)::

    OUT/train/<class>/<i>.png       protected images, uint8 PNG, <i> = index in the source training set

- ``imagefolder`` (an ImageFolder path): the source's training tree, written back under ``OUT/train/``
  with the same relative paths, file names and formats (``mydata/train/cat/a.jpg`` or, for a tree
  without ``train/``, ``mydata/cat/a.jpg`` -> ``OUT/train/cat/a.jpg``); ``images`` in the manifest
  lists each file in index order with its label and the change measured on the written file.

Both::

    OUT/protected.json        manifest: source dataset and indices, settings, rounds, budget check,
                              measured change of the written files
    OUT/indices.npy           int64 (N,): source-training-set index of each protected image
    OUT/perturbation.npy      float16 raw δ in [-ε, ε] at the working size (C, H, W):
                              (N, C, H, W) sample-wise (row i <-> indices[i]), (K, C, H, W) class-wise
    OUT/.unlearnable/         the run's journal of written files and its lock (see ``photos/outdir.py``)

The images sit one level down (``OUT/train/``) so that a loader pointed at that folder sees only
classes, never the manifest, the state folder or ``OUT/verify/``. ``protected.json`` is written
last, so its presence marks a complete output.
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
from .datasets import ImageTensors, read_image_file

FORMAT = "unlearnable-protected-dataset/1"
MANIFEST = "protected.json"
IMAGES_DIR = "train"
LAYOUT_INDEXED, LAYOUT_IMAGEFOLDER = "indexed", "imagefolder"


def class_dir_name(k: int, name: str) -> str:
    """A safe, unique folder name for class ``k``: its name with path-unsafe characters replaced."""
    safe = re.sub(r"[^\w.\- ]+", "_", name).strip(" .") or f"class_{k}"
    return safe


def write_json_atomic(obj: dict, path: Path) -> None:
    """Write ``obj`` as JSON through the one checked atomic writer (unique temp file, fsync, read
    back, rename; the temp removed on failure). Raises ``OutputError`` with one line naming ``path``."""
    from .storage import write_atomic

    write_atomic(Path(path), json.dumps(obj, indent=2).encode())


def indexed_file(class_dir: str, index: int, width: int) -> str:
    """Path under OUT of image ``index`` in the ``indexed`` layout: ``train/<class_dir>/<index>.png``."""
    return f"{IMAGES_DIR}/{class_dir}/{index:0{width}d}.png"


def class_dirs(classes: list[str]) -> list[str]:
    """Folder names of the ``indexed`` layout: safe, unique names derived from the class names."""
    dirs = [class_dir_name(k, c) for k, c in enumerate(classes)]
    if len(set(dirs)) != len(dirs):
        dirs = [f"{k:03d}_{d}" for k, d in enumerate(dirs)]
    return dirs


def read_manifest(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise DataNotFoundError(f"{path} not found: {out_dir} is not a finished protected dataset "
                                "(run `unlearnable protect-dataset ... -o DIR` first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UnlearnableError(f"{path} is not a readable manifest ({type(e).__name__}: {e}); it is damaged "
                               "or not written by unlearnable") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        manifest = manifest if isinstance(manifest, dict) else {}
        raise UnlearnableError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_protected(out_dir: str | os.PathLike) -> tuple[ImageTensors, dict]:
    """The protected training set in source-index order (as saved), and its manifest. Pixels are the
    written files decoded (for JPEG outputs, what a scraper decodes, not the pre-encoding values);
    in the ``imagefolder`` layout each file is read like the source was (``read_image_file``, squashed
    to the working size when the noise was searched at one). ``meta``: ``indices`` and, for
    ``imagefolder``, ``files`` (paths under ``OUT/train``)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    indices = np.load(out / "indices.npy", allow_pickle=False)
    c, h, w = manifest["image_shape"]
    if manifest.get("layout", LAYOUT_INDEXED) == LAYOUT_IMAGEFOLDER:
        images, labels, files = _read_tree(out, manifest, indices, c, h, w)
        meta = {"indices": indices, "files": files}
    else:
        images, labels = _read_indexed(out, manifest, indices, c, h, w)
        meta = {"indices": indices}
    ds = ImageTensors(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels),
                      manifest["classes"], f"protected:{manifest.get('dataset', out)}", meta)
    return ds, manifest


def _read_indexed(out: Path, manifest: dict, indices: np.ndarray, c: int, h: int, w: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    pos = {int(s): i for i, s in enumerate(indices)}
    images = np.zeros((len(indices), h, w, c), dtype=np.uint8)
    labels = np.full(len(indices), -1, dtype=np.int64)
    for k, d in enumerate(manifest["class_dirs"]):
        for f in (out / IMAGES_DIR / d).glob("*.png"):
            i = pos.get(int(f.stem)) if f.stem.isdigit() else None
            if i is None:
                raise UnlearnableError(f"{f} is not one of the protected images listed in indices.npy")
            with Image.open(f) as im:
                a = np.asarray(im)
            images[i] = a[:, :, None] if a.ndim == 2 else a
            labels[i] = k
    if (labels < 0).any():
        raise UnlearnableError(f"{out} is missing {(labels < 0).sum()} protected images")
    return images, labels


def _read_tree(out: Path, manifest: dict, indices: np.ndarray, c: int, h: int, w: int
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    entries = manifest["images"]
    if len(entries) != len(indices) or any(int(e["index"]) != int(s) for e, s in zip(entries, indices)):
        raise UnlearnableError(f"{out / MANIFEST}: its image list does not match indices.npy")
    classes = manifest["classes"]
    resize = h if manifest.get("resized") else None
    images = np.zeros((len(entries), h, w, c), dtype=np.uint8)
    labels = np.zeros(len(entries), dtype=np.int64)
    files = []
    for i, e in enumerate(entries):
        rel, k = str(e["file"]), int(e["label"])
        parts = Path(rel).parts
        if not parts or parts[0] != classes[k] or ".." in parts or Path(rel).is_absolute():
            raise UnlearnableError(f"{out / MANIFEST}: entry {rel!r} is not under its class folder {classes[k]!r}")
        path = out / IMAGES_DIR / rel
        if not path.is_file():
            raise UnlearnableError(f"{path} is missing: {out} is not a complete protected dataset")
        a = read_image_file(path, resize, c)
        if a.shape != (h, w, c):
            raise UnlearnableError(f"{path} decodes to {a.shape}, not the protected set's {(h, w, c)}")
        images[i], labels[i] = a, k
        files.append(rel)
    return images, labels, files
