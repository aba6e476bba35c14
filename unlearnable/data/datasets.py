"""Dataset readers: every dataset becomes one uint8 tensor (N, C, H, W), int64 labels (N,)
and class names, read from the standard on-disk layouts (no download at run time).

Data root: ``--data-root``, else ``$UNLEARNABLE_DATA_ROOT``, else ``~/.cache/unlearnable/data``.
Layouts looked for under the root:

- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (python pickles)
- ``cifar100``: ``cifar-100-python/{train,test,meta}``
- ``fashion-mnist``: ``FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
- ``svhn``: ``svhn/{train,test}_32x32.mat`` (needs scipy)
- any other name is taken as a path to an ImageFolder tree (``class/**/*.png``, any of
  ``IMAGE_EXTENSIONS``), optionally with ``train/`` and ``test/`` sub-trees.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataNotFoundError, UnlearnableError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class ImageTensors:
    """A labelled image set. ``images``: uint8 (N, C, H, W) in [0, 255]; ``labels``: int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be (N,) matching images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "ImageTensors":
        return ImageTensors(self.images.to(device), self.labels.to(device), self.classes, self.name, self.meta)

    def subset(self, indices: torch.Tensor) -> "ImageTensors":
        idx = indices.to(self.images.device)
        return ImageTensors(self.images[idx], self.labels[idx], self.classes, self.name, self.meta)


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$UNLEARNABLE_DATA_ROOT``, else ``~/.cache/unlearnable/data``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("UNLEARNABLE_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "unlearnable" / "data"


def _need(path: Path, what: str, hint: str) -> None:
    if not path.exists():
        raise DataNotFoundError(f"{what} not found: looked for {path}. {hint}")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    # Files pickled with bytes keys (encoding='bytes' style) are normalised to str keys.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_rows_to_tensor(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(rows, dtype=np.uint8).reshape(-1, 3, 32, 32)))


def load_cifar10(root: Path, split: str) -> ImageTensors:
    base = root / "cifar-10-batches-py"
    hint = ("Put the python version of CIFAR-10 there (extract cifar-10-python.tar.gz into the data root, "
            "or run ../shared/data/fetch-cifar10 DATA_ROOT), or pass --data-root.")
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for f in files + ["batches.meta"]:
        _need(base / f, "CIFAR-10", hint)
    batches = [_unpickle(base / f) for f in files]
    images = torch.cat([_cifar_rows_to_tensor(b["data"]) for b in batches])
    labels = torch.tensor([l for b in batches for l in b["labels"]], dtype=torch.int64)
    classes = list(_unpickle(base / "batches.meta")["label_names"])
    return ImageTensors(images, labels, classes, "cifar10")


def load_cifar100(root: Path, split: str) -> ImageTensors:
    base = root / "cifar-100-python"
    hint = "Extract cifar-100-python.tar.gz into the data root, or pass --data-root."
    _need(base / split, "CIFAR-100", hint)
    _need(base / "meta", "CIFAR-100", hint)
    d = _unpickle(base / split)
    images = _cifar_rows_to_tensor(d["data"])
    labels = torch.tensor(d["fine_labels"], dtype=torch.int64)
    classes = list(_unpickle(base / "meta")["fine_label_names"])
    return ImageTensors(images, labels, classes, "cifar100")


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise UnlearnableError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UnlearnableError(f"{path} is not a uint8 IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UnlearnableError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_fashion_mnist(root: Path, split: str) -> ImageTensors:
    base = root / "FashionMNIST" / "raw"
    prefix = "train" if split == "train" else "t10k"
    hint = ("Put torchvision's raw files there ({train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, "
            "e.g. with ../shared/data/fetch-fashion-mnist DATA_ROOT), or pass --data-root.")

    def find(stem: str) -> Path:
        for cand in (base / f"{stem}.gz", base / stem):
            if cand.exists():
                return cand
        _need(base / f"{stem}.gz", "Fashion-MNIST", hint)
        raise AssertionError  # unreachable

    images = _read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    return ImageTensors(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), list(FASHION_CLASSES), "fashion-mnist")


def load_svhn(root: Path, split: str) -> ImageTensors:
    path = root / "svhn" / f"{split}_32x32.mat"
    _need(path, "SVHN", "Put train_32x32.mat and test_32x32.mat (the cropped-digits format) in DATA_ROOT/svhn/.")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UnlearnableError("reading SVHN's .mat files needs scipy: pip install scipy") from None
    d = loadmat(str(path))
    images = torch.from_numpy(np.ascontiguousarray(d["X"].transpose(3, 2, 0, 1)))
    labels = torch.from_numpy(d["y"].reshape(-1).astype(np.int64) % 10)  # SVHN stores digit 0 as 10
    return ImageTensors(images, labels, [str(i) for i in range(10)], "svhn")


def read_image_file(path: str | os.PathLike, size: int | None = None, channels: int | None = None) -> np.ndarray:
    """Decode one image file as a dataset reader sees it: (H, W, C) uint8, upright (EXIF orientation
    applied, as every viewer shows it), C = 1 for grayscale else 3 (alpha dropped, palette and CMYK
    converted by Pillow, 16-bit grayscale rounded to the nearest 8-bit level), squashed to ``size`` x
    ``size`` with bicubic resampling if ``size`` is given, and forced to ``channels`` (1: luminance,
    3: RGB) if given. Raises :class:`UnlearnableError` naming the file when it cannot be read."""
    return _decode(path, size, channels)[0]


def _decode(path: str | os.PathLike, size: int | None, channels: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image_file`, plus the (height, width) of the upright image before resizing."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            native = (im.size[1], im.size[0])
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                a = np.asarray(im).astype(np.int64)
                im = Image.fromarray(np.clip((a + 128) // 257, 0, 255).astype(np.uint8))
            gray = channels == 1 or (channels is None and im.mode in ("L", "LA", "1"))
            mode = "L" if gray else "RGB"
            im = im.convert(mode) if im.mode != mode else im
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnlearnableError(f"cannot read image {path}: {e}") from None
    return (arr[:, :, None] if arr.ndim == 2 else arr), native


def _walk_images(base: Path, cls: str, files: list[str], skipped: list[tuple[str, str]]) -> None:
    """Append the image files under ``base/cls`` (recursively, sorted, hidden entries skipped) to
    ``files`` as POSIX paths relative to ``base``; other files go to ``skipped`` with a reason.
    An unreadable sub-folder is an error: silently dropping part of a class would change the dataset."""
    def onerror(e: OSError) -> None:
        raise UnlearnableError(f"cannot read folder {e.filename}: {e.strerror or e}")

    for folder, dirs, names in os.walk(base / cls, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(base)
        for name in sorted(names):
            rel = (rel_folder / name).as_posix()
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                files.append(rel)
            else:
                skipped.append((rel, "not an image extension (" + ", ".join(IMAGE_EXTENSIONS) + ")"))


def scan_imagefolder(path: str | os.PathLike) -> tuple[list[str], list[str], list[int], list[tuple[str, str]]]:
    """Find the images of an ImageFolder tree without decoding them: (classes, files, labels,
    skipped) as described in :func:`load_imagefolder`."""
    base = Path(path)
    if not base.is_dir():
        raise DataNotFoundError(f"image folder not found: {base}")
    try:
        classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise UnlearnableError(f"cannot read folder {base}: {e.strerror or e}") from None
    if not classes:
        raise UnlearnableError(f"{base} has no class subfolders (expected {base}/<class>/<image>.png)")
    files: list[str] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for k, cls in enumerate(classes):
        found: list[str] = []
        _walk_images(base, cls, found, skipped)
        files += sorted(found)
        labels += [k] * len(found)
    if not files:
        raise UnlearnableError(f"no images found under {base}")
    return classes, files, labels, skipped


def image_file_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as :func:`read_image_file` shows it (upright), read from its
    header without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnlearnableError(f"cannot read image {path}: {e}") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def load_imagefolder(path: str | os.PathLike, size: int | None = None) -> ImageTensors:
    """Read ``path/<class>/**/<image>`` into tensors. Classes are the sorted (non-hidden) subfolder
    names; each class's images are found recursively and sorted by relative path, so the index of an
    image is stable. Images are decoded by :func:`read_image_file` (upright; alpha dropped); if some
    are grayscale and some colour, all become RGB. All images must share one size unless ``size``
    squashes every one to ``size`` x ``size``.

    ``meta``: ``files`` (each image's POSIX path relative to ``path``, in index order), ``sizes``
    ((height, width) of each file as decoded, before any resizing), ``root`` (``path``) and
    ``skipped`` ((relative path, reason) of the non-image files found in class folders)."""
    base = Path(path)
    classes, files, labels, skipped = scan_imagefolder(base)
    decoded = [_decode(base / f, size, None) for f in files]
    arrays, sizes = [d[0] for d in decoded], [d[1] for d in decoded]
    if len({a.shape[2] for a in arrays}) > 1:  # mixed grayscale and colour: all RGB
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UnlearnableError(f"images under {base} have different sizes {sorted(shapes)[:3]}...; "
                               "pass a size to resize them (protect-dataset: --work-size)")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images, torch.tensor(labels, dtype=torch.int64), classes, str(base),
                        {"files": files, "sizes": sizes, "root": str(base), "skipped": skipped})


def imagefolder_root(name: str | os.PathLike, split: str = "train") -> Path | None:
    """The folder :func:`load_dataset` reads ``split`` of an ImageFolder dataset from (``name/split``
    if it exists, else ``name`` itself for 'train' when there is no ``test/``); None when ``name`` is a
    built-in dataset name. Raises :class:`DataNotFoundError` for a folder without that split."""
    key = str(name).lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashionmnist": "fashion-mnist"}.get(key, key)
    if key in DATASETS:
        return None
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise UnlearnableError(f"unknown dataset {str(name)!r}: choose one of {', '.join(DATASETS)} "
                               "or give the path of an ImageFolder directory")
    if (folder / split).is_dir():
        return folder / split
    if split == "train" and not (folder / "test").is_dir():
        return folder
    raise DataNotFoundError(f"{folder} has no {split}/ sub-folder")


DATASETS: dict[str, Callable[[Path, str], ImageTensors]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "fashion-mnist": load_fashion_mnist,
    "svhn": load_svhn,
}


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 size: int | None = None) -> ImageTensors:
    """Load ``split`` ('train' or 'test') of a named dataset or ImageFolder path as uint8 tensors."""
    if split not in ("train", "test"):
        raise UnlearnableError(f"split must be 'train' or 'test', not {split!r}")
    folder = imagefolder_root(name, split)
    if folder is not None:
        return load_imagefolder(folder, size)
    key = name.lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashionmnist": "fashion-mnist"}.get(key, key)
    return DATASETS[key](resolve_data_root(root), split)


def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``n`` samples, ``n // K`` per class (K = number of classes present),
    drawn with a seeded permutation; the same (labels, n, seed) always give the same subset."""
    classes = torch.unique(labels)
    per = n // len(classes)
    if per < 1:
        raise UnlearnableError(f"subset of {n} is smaller than the number of classes ({len(classes)})")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    chosen = []
    for c in classes.tolist():
        idx = perm[labels[perm] == c]
        if len(idx) < per:
            raise UnlearnableError(f"class {c} has only {len(idx)} samples, {per} asked for")
        chosen.append(idx[:per])
    return torch.sort(torch.cat(chosen)).values


__all__ = ["ImageTensors", "DATASETS", "load_dataset", "load_imagefolder", "balanced_subset",
           "resolve_data_root", "read_image_file", "image_file_size", "imagefolder_root", "scan_imagefolder",
           "IMAGE_EXTENSIONS"]
