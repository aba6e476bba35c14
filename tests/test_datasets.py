import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import CLASSES, synthetic_images, write_cifar10
from PIL import Image

from unlearnable.data.datasets import balanced_subset, load_dataset, load_imagefolder, resolve_data_root
from unlearnable.errors import DataNotFoundError, UnlearnableError


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_pickle_layout(tmp_path, bytes_keys):
    root = write_cifar10(tmp_path, bytes_keys=bytes_keys)
    train = load_dataset("cifar10", "train", root)
    test = load_dataset("CIFAR-10", "test", root)
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (100, 3, 32, 32)
    assert train.classes == CLASSES
    x, y = synthetic_images(200, 10, seed=0)
    assert torch.equal(train.images, torch.from_numpy(x))  # channel-major rows decode to the same pixels
    assert train.labels.tolist() == y.tolist()


def test_cifar100_layout(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    x, y = synthetic_images(50, 5, seed=3)
    for split in ("train", "test"):
        with open(base / split, "wb") as f:
            pickle.dump({"data": x.reshape(50, -1), "fine_labels": y.tolist(), "coarse_labels": [0] * 50}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    ds = load_dataset("cifar100", "test", tmp_path)
    assert ds.num_classes == 100 and torch.equal(ds.images, torch.from_numpy(x))


def _idx(data: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 8, data.ndim) + struct.pack(">" + "I" * data.ndim, *data.shape) + data.tobytes()


def test_fashion_mnist_idx_gz(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    ds = load_dataset("fashion-mnist", "train", tmp_path)
    assert ds.images.shape == (7, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
    assert ds.labels.tolist() == list(range(7))


def test_truncated_idx_is_a_clear_error(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.zeros((4, 28, 28), dtype=np.uint8)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)[:-10]))
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(4, np.uint8))))
    with pytest.raises(UnlearnableError, match="truncated"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_imagefolder(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 50, 10, 200 if cls == "dogs" else 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    ds = load_imagefolder(tmp_path)
    assert ds.classes == ["cats", "dogs"] and ds.images.shape == (6, 3, 16, 16)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images[4, 2, 0, 0] == 200


def test_missing_data_names_the_path(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("cifar10", "train", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(e.value)
    assert "fetch-cifar10" in str(e.value)


def test_unknown_dataset_name():
    with pytest.raises(UnlearnableError, match="unknown dataset"):
        load_dataset("imagenet-9000", "train")


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARNABLE_DATA_ROOT", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("UNLEARNABLE_DATA_ROOT")
    assert resolve_data_root(None).parts[-3:] == (".cache", "unlearnable", "data")


def test_balanced_subset_is_balanced_and_seeded():
    labels = torch.arange(1000) % 10
    a = balanced_subset(labels, 200, seed=1)
    assert torch.bincount(labels[a]).tolist() == [20] * 10
    assert torch.equal(a, balanced_subset(labels, 200, seed=1))
    assert not torch.equal(a, balanced_subset(labels, 200, seed=2))


def test_imagefolder_keeps_relative_paths_nested_folders_and_orientation(tmp_path):
    (tmp_path / "cats" / "2019").mkdir(parents=True)
    (tmp_path / "dogs").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / "cats" / "b.jpg", quality=100)
    Image.new("L", (6, 4), 77).save(tmp_path / "cats" / "2019" / "a.png")           # grayscale among colour
    rotated = Image.new("RGB", (4, 6), (200, 0, 0))                                    # stored 4 wide, 6 high...
    exif = Image.Exif()
    exif[0x0112] = 6                                                                   # ...shown rotated: 6 x 4
    rotated.save(tmp_path / "dogs" / "r.png", exif=exif)
    (tmp_path / "dogs" / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "dogs" / ".DS_Store").write_bytes(b"x")
    ds = load_imagefolder(tmp_path)
    assert ds.classes == ["cats", "dogs"]
    assert ds.meta["files"] == ["cats/2019/a.png", "cats/b.jpg", "dogs/r.png"]      # relative, nested, sorted
    assert ds.meta["sizes"] == [(4, 6)] * 3 and ds.images.shape == (3, 3, 4, 6)       # upright, all RGB
    assert ds.images[0].unique().tolist() == [77]                                      # gray replicated
    assert [f for f, _ in ds.meta["skipped"]] == ["dogs/anim.gif"]                     # reported, hidden ignored
    assert ds.labels.tolist() == [0, 0, 1]


def test_imagefolder_corrupt_file_names_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UnlearnableError, match="broken.png"):
        load_imagefolder(tmp_path)
