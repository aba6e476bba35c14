"""Faithfulness of the defenses at tiny scale (the CPU-scale figures are benchmarks/defenses.py).

Label noise: a 4-class task whose images carry a weak class colour under heavy per-pixel noise,
so a small CNN can memorise individual images. With 40 % symmetric label noise, cross-entropy
memorises every wrong label and loses test accuracy; APL (NCE+RCE) and TCR fit far fewer wrong
labels and generalise better, the claim of both papers.

Robustness: on 1,000 real CIFAR-10 images, PGD adversarial training (and AT+CAS) give higher
PGD robust accuracy than standard training; AT+AWP is at least as robust as AT within 3 points
(AWP's gain in the paper is mostly against robust overfitting late in long runs).
"""
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnable.data.datasets import ImageTensors, balanced_subset, load_dataset
from unlearnable.data.label_noise import symmetric_noise
from unlearnable.errors import DataNotFoundError
from unlearnable.train.adversarial import robust_accuracy
from unlearnable.train.defenses import DefenseContext, build_step
from unlearnable.train.loop import TrainConfig, build_model, prepare_batch, train


def noisy_task(n: int = 200, k: int = 4):
    rng = np.random.default_rng(0)
    y = np.arange(n + 400) % k
    base = np.array([100, 120, 140, 160])[:, None, None, None]
    x = np.clip(base[y] + rng.integers(-120, 121, size=(n + 400, 3, 32, 32)), 0, 255).astype(np.uint8)
    make = lambda a, b: ImageTensors(torch.from_numpy(a), torch.from_numpy(b), list("abcd"))  # noqa: E731
    train_set, test_set = make(x[:n], y[:n]), make(x[n:], y[n:])
    return train_set, replace(train_set, labels=symmetric_noise(train_set.labels, k, 0.4, seed=0)), test_set


def fit(defense: str, data: ImageTensors, test: ImageTensors, epochs: int, **cfg):
    model = build_model("smallcnn", data.num_classes, 3, 0, "cpu")
    config = TrainConfig(epochs=epochs, **cfg)
    step = build_step(defense, DefenseContext(model, len(data), data.num_classes, epochs=epochs, pgd_steps=3,
                                              pgd_alpha=3 / 255))
    history = train(model, data, test, config, step=step)
    return model, history


def test_robust_losses_resist_label_noise():
    clean, noisy, test = noisy_task()
    wrong = noisy.labels != clean.labels
    results = {}
    for d in ("standard", "apl", "tcr"):
        model, hist = fit(d, noisy, test, 60, batch_size=50, lr=0.05, augment=False)
        model.eval()
        with torch.no_grad():
            pred = model(prepare_batch(noisy.images)).argmax(1)
        results[d] = (hist[-1].test_acc, (pred[wrong] == noisy.labels[wrong]).float().mean().item())
    ce_acc, ce_mem = results["standard"]
    assert ce_mem > 0.9                       # cross-entropy memorises the wrong labels...
    for d in ("apl", "tcr"):
        acc, mem = results[d]
        assert mem < 0.5 * ce_mem, (d, results)   # ...the robust losses do not
        assert acc > ce_acc + 0.05, (d, results)  # and generalise better


FETCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "fetch-cifar10"


@pytest.fixture(scope="module")
def cifar_small():
    try:
        load_dataset("cifar10", "test")
    except DataNotFoundError as e:
        if not FETCH.exists():
            pytest.fail(f"needs the real CIFAR-10 in the data root ({e}); {FETCH} is not there to fetch it")
        subprocess.run([sys.executable, str(FETCH)], check=True)
    tr = load_dataset("cifar10", "train")
    te = load_dataset("cifar10", "test")
    return tr.subset(balanced_subset(tr.labels, 1000, 0)), te.subset(balanced_subset(te.labels, 500, 0))


def test_adversarial_training_raises_robust_accuracy(cifar_small):
    train_set, test = cifar_small
    robust = {}
    for d in ("standard", "at", "awp", "cas"):
        model, _ = fit(d, train_set, test, 6, batch_size=64)
        robust[d] = robust_accuracy(model, prepare_batch(test.images), test.labels, steps=10)
    assert robust["at"] > robust["standard"] + 0.03, robust
    assert robust["cas"] > robust["standard"] + 0.03, robust
    assert robust["awp"] >= robust["at"] - 0.03, robust
