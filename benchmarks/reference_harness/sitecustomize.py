"""Start-up shim for running the official Unlearnable-Examples code (HanxunH/Unlearnable-Examples,
MIT, ``../shared/reference``) unmodified on today's torch/torchvision, for
``benchmarks/reference_speed.py`` only: that benchmark puts this folder first on ``PYTHONPATH`` of
the reference's process, so Python imports this file at start-up. Never imported by the package.

Two changes, both needed to run the reference at all, neither touching what it computes:

1. ``torchvision.datasets.CIFAR10`` verifies the md5 of each batch file of the original archive.
   The benchmark hands the reference a CIFAR-10 *subset* in the same python layout (other bytes,
   other md5s), so the check is replaced by "the file exists".
2. The reference's ``util.accuracy`` (used for the surrogate's train-accuracy readout) calls
   ``.view(-1)`` on a non-contiguous slice, which current torch refuses. When the reference's
   ``util`` module is imported, its ``accuracy`` is replaced by the same top-k accuracy computed
   with ``reshape``.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys


def _exists(fpath, md5=None) -> bool:
    return os.path.isfile(fpath)


def _patch_cifar() -> None:
    try:
        import torchvision.datasets.cifar as cifar
    except ImportError:   # the reference fails on its own import then, with torchvision's message
        return
    cifar.check_integrity = _exists   # what CIFAR10._check_integrity and _load_meta call


def _topk_accuracy(output, target, topk=(1,)):
    """Share of rows of ``output`` (B, K) whose ``target`` (B,) is among the k largest, per k."""
    pred = output.topk(max(topk), 1, True, True)[1].t()         # (maxk, B)
    hit = pred.eq(target.reshape(1, -1).expand_as(pred))
    n = target.size(0)
    return [hit[:k].reshape(-1).float().sum(0).mul_(1.0 / n) for k in topk]


class _FixUtil(importlib.abc.MetaPathFinder):
    """Finds the reference's top-level ``util`` module as usual and fixes ``accuracy`` once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "util":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if hasattr(module, "accuracy"):
                module.accuracy = _topk_accuracy

        spec.loader.exec_module = exec_module
        return spec


_patch_cifar()
sys.meta_path.insert(0, _FixUtil())
