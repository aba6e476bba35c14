"""Shared fixtures: tiny datasets written in the real on-disk formats."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_images(n: int, k: int, seed: int, size: int = 32, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, H, W) uint8 images whose mean colour depends on the class, plus labels 0..k-1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    rng.shuffle(labels)
    base = rng.integers(40, 216, size=(k, channels, 1, 1))
    noise = rng.integers(-40, 41, size=(n, channels, size, size))
    images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_cifar10(root: Path, n_train: int = 200, n_test: int = 100, bytes_keys: bool = False) -> Path:
    """A miniature cifar-10-batches-py: five train batches, a test batch and batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    x, y = synthetic_images(n_train, 10, seed=0)
    xt, yt = synthetic_images(n_test, 10, seed=1)

    def dump(name: str, d: dict) -> None:
        if bytes_keys:
            d = {k.encode(): v for k, v in d.items()}
        with open(base / name, "wb") as f:
            pickle.dump(d, f, protocol=2)

    per = n_train // 5
    for i in range(5):
        sl = slice(i * per, (i + 1) * per)
        dump(f"data_batch_{i + 1}", {"batch_label": f"training batch {i + 1}", "labels": y[sl].tolist(),
                                     "data": x[sl].reshape(per, -1), "filenames": [f"{j}.png" for j in range(per)]})
    dump("test_batch", {"batch_label": "test", "labels": yt.tolist(), "data": xt.reshape(n_test, -1),
                        "filenames": [f"{j}.png" for j in range(n_test)]})
    dump("batches.meta", {"label_names": CLASSES, "num_cases_per_batch": per, "num_vis": 3072})
    return root


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "data")


def pre_option_fingerprint(cfg, problem, model) -> str:
    """The engine's checkpoint identity as it was computed before the optional searches (interaction,
    robust, structure) existed: a run with them off must keep it."""
    from dataclasses import asdict

    from unlearnable.data.storage import settings_sha256
    from unlearnable.noise.minmin import _STOPPING

    options = ("interaction", "robust", "structure")
    old = {k: v for k, v in asdict(cfg).items() if k not in _STOPPING and k not in options}
    h = settings_sha256(old)
    problem.fingerprint(h)
    h.update(type(model).__name__.encode())
    h.update(str(sum(p.numel() for p in model.parameters())).encode())
    return h.hexdigest()[:16]


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (restored after): small ops (MTCNN, tiny searches) spin with two
    threads on a shared CPU (measured: a 1-round tiny photo search 12 s vs 0.2 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
