"""The face search's surrogate when the user has pretrained face weights: FaceNet's Inception-ResNet-v1
(``unlearnable.models.facenet``) with its backbone from ``--face-weights`` and a fresh classifier over the
identities of a reference folder of other people's faces (``--reference DIR``, one subfolder per
person), which the min-min then trains along with the people's classes (the paper trains its face
surrogate during the search, arXiv 2101.04898 Sec. 4.4).

Without face weights the face pipeline uses the shipped photo surrogate (``smallcnn-cifar10`` and its
reference bank): measured on this project's 2-core CPU, one Inception-ResNet-v1 step on 32 crops at
112 px costs 40× the small surrogate's at 32 px, so the network is the choice for a GPU.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..data.datasets import imagefolder_root, scan_imagefolder
from ..data.photos.files import UsageError
from ..models.facenet import InceptionResnetV1Classifier, load_face_weights
from .align import CROP_SIZE


def face_surrogate(weights: str | os.PathLike, reference: str | os.PathLike | None,
                   device: torch.device) -> tuple[nn.Module, dict]:
    """Inception-ResNet-v1 with the backbone of ``weights`` and a fresh head over the identities of the
    ``reference`` folder. Returns the model (on ``device``) and its metadata in the shipped surrogates'
    form (name, arch, dataset, classes, input_size). Raises ``UsageError`` (one line) without a reference
    folder, or for a missing or foreign weights file."""
    if reference is None:
        raise UsageError("--face-weights needs --reference DIR: a folder of other people's faces, one subfolder "
                         "per person (the identities the surrogate tells your people apart from)")
    root = imagefolder_root(reference, "train")
    if root is None:
        raise UsageError(f"--reference {reference} must be a folder of faces (one subfolder per person) with "
                         "--face-weights")
    classes = scan_imagefolder(root)[0]
    if len(classes) < 2:
        raise UsageError(f"--reference {reference} has {len(classes)} person folder(s); at least 2 are needed")
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
