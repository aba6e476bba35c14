"""Dataset readers: every dataset becomes one uint8 tensor (N, C, H, W), int64 labels (N,)
and class names, read from the standard on-disk layouts (no download at run time).

Data root: ``--data-root``, else ``$UNLEARNABLE_DATA_ROOT``, else ``~/.cache/unlearnable/data``.
Layouts looked for under the root:

- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (python pickles)
- ``cifar100``: ``cifar-100-python/{train,test,meta}``
- ``fashion-mnist``: ``FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
- ``svhn``: ``svhn/{train,test}_32x32.mat`` (needs scipy)
- any other name is taken as a path to an ImageFolder tree (``class/*.png``), optionally
  with ``train/`` and ``test/`` sub-trees.
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
from PIL import Image

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


def load_imagefolder(path: str | os.PathLike, size: int | None = None) -> ImageTensors:
    """Read ``path/<class>/<image>`` into tensors. Classes are sorted subfolder names, files
    sorted by name; all images must share one size unless ``size`` resizes them to size x size.
    ``meta['files']`` keeps each image's path relative to ``path``."""
    base = Path(path)
    if not base.is_dir():
        raise DataNotFoundError(f"image folder not found: {base}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise UnlearnableError(f"{base} has no class subfolders (expected {base}/<class>/<image>.png)")
    arrays, labels, files = [], [], []
    for k, cls in enumerate(classes):
        for f in sorted((base / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            with Image.open(f) as im:
                im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
                if size is not None:
                    im = im.resize((size, size), Image.Resampling.BICUBIC)
                arr = np.asarray(im)
            arrays.append(arr if arr.ndim == 3 else arr[:, :, None])
            labels.append(k)
            files.append(f"{cls}/{f.name}")
    if not arrays:
        raise UnlearnableError(f"no images found under {base}")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UnlearnableError(f"images under {base} have different sizes {sorted(shapes)[:3]}...; pass a size to resize them")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images, torch.tensor(labels), classes, str(base), {"files": files})


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
    key = name.lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashionmnist": "fashion-mnist"}.get(key, key)
    if key in DATASETS:
        return DATASETS[key](resolve_data_root(root), split)
    folder = Path(name).expanduser()
    if folder.is_dir():
        sub = folder / split
        if sub.is_dir():
            return load_imagefolder(sub, size)
        if split == "train" and not (folder / "test").is_dir():
            return load_imagefolder(folder, size)
        raise DataNotFoundError(f"{folder} has no {split}/ sub-folder")
    raise UnlearnableError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} "
                           "or give the path of an ImageFolder directory")


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
           "resolve_data_root", "IMAGE_EXTENSIONS"]
