"""The face search's surrogate when the user gives other people's faces (``--reference DIR``, one
subfolder per person): a network with a fresh classifier over the reference's identities, which the
min-min then trains along with the people's classes (the paper trains its face surrogate during the
search, arXiv 2101.04898 Sec. 4.4).

- With ``--face-weights``: FaceNet's Inception-ResNet-v1 (``unlearnable.models.facenet``), its backbone
  loaded from a facenet-pytorch state dict. Measured on this project's 2-core CPU, one of its steps on 32
  crops at 112 px costs 40× the small surrogate's at 32 px, so it is the choice for a GPU.
- Without: the shipped photo surrogate's backbone (``smallcnn-cifar10``, 32 px input) with the fresh
  head; its weights count only with ``--surrogate-start pretrained`` (by default the face search starts
  the whole network afresh, ``protect.photos.PhotoProtectConfig.surrogate_start``).
  Why one would want it: with the shipped non-face bank, the surrogate tells a person from cars
  and frogs by content alone, so the search only has to make the *protected* people tell apart from
  each other, while a face recogniser must also tell them from everyone else's face. Measured with the
  pretrained start (``benchmarks/faces.py --config cpu``, README "Faces"), it does not pay at ε = 8/255:
  57.5 % of the protected people's held-out photos recognised with 9 other people's faces as the
  reference, 45 % with the shipped bank (same run, 80 held-out photos each).

Without ``--reference`` the face pipeline uses the shipped surrogate and its non-face bank (no face set
with a licence that allows shipping it was found; the sample faces in ``../shared/data`` are research use
only and never ship).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..data.datasets import imagefolder_root, scan_imagefolder
from ..data.photos.files import UsageError
from ..models.facenet import InceptionResnetV1Classifier, load_face_weights
from ..train.surrogate import DEFAULT_NAME, load_surrogate
from .align import CROP_SIZE


def face_surrogate(weights: str | os.PathLike | None, reference: str | os.PathLike | None,
                   device: torch.device, base: str | os.PathLike = DEFAULT_NAME) -> tuple[nn.Module, dict]:
    """A surrogate with a fresh head over the identities of the ``reference`` folder: Inception-ResNet-v1
    with the backbone of ``weights``, or (``weights`` None) the backbone of the shipped surrogate ``base``.
    Returns the model (on ``device``) and its metadata in the shipped surrogates' form (name, arch,
    dataset, classes, input_size). Raises ``UsageError`` (one line) without a reference folder, or for a
    missing or foreign weights file."""
    if reference is None:
        raise UsageError("--face-weights needs --reference DIR: a folder of other people's faces, one subfolder "
                         "per person (the identities the surrogate tells your people apart from)")
    root = imagefolder_root(reference, "train")
    if root is None:
        raise UsageError(f"--reference {reference} must be a folder of faces (one subfolder per person) with "
                         "--faces")
    classes = scan_imagefolder(root)[0]
    if len(classes) < 2:
        raise UsageError(f"--reference {reference} has {len(classes)} person folder(s); at least 2 are needed")
    if weights is None:
        model, base_meta = load_surrogate(base, "cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model.reset_classifier(len(classes))
        meta = {"name": f"{base_meta['name']} (fresh head over {len(classes)} reference people)",
                "arch": base_meta["arch"], "dataset": str(reference), "classes": classes,
                "input_size": base_meta["input_size"], "test_accuracy": None}
        return model.to(device).train(), meta
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = InceptionResnetV1Classifier(num_classes=len(classes))
    try:
        load_face_weights(model, weights)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    meta = {"name": f"inception-resnet-v1 ({os.path.basename(os.fspath(weights))})", "arch": "inception-resnet-v1",
            "dataset": str(reference), "classes": classes, "input_size": CROP_SIZE, "test_accuracy": None}
    return model.to(device).train(), meta
