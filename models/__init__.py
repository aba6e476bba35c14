"""Network architectures by name (timm-style registry). Models take images (B, C, H, W)
in [0, 1] and return logits; they know nothing about noise or training.

Every model has timm's API: ``forward_features(x)`` (the feature map before global pooling),
``forward_head(x, pre_logits=False)`` (pooling and classifier; ``pre_logits=True`` gives the
pooled (B, num_features) features), ``forward(x) = forward_head(forward_features(x))``,
``get_classifier()`` (the final ``nn.Linear``), ``reset_classifier(num_classes)`` and the
attribute ``num_features``; plus ``cas_layers``, the submodule names where Channel-wise
Activation Suppressing (``unlearnable.train.cas``) attaches by default.

>>> from unlearnable.models import create_model
>>> net = create_model("resnet18", num_classes=10)
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .facenet import InceptionResnetV1Classifier
from .heads import Classifier, add_classes
from .resnet import ResNet, resnet18
from .small_cnn import SmallCNN, small_cnn
from .vgg import VGG
from .wrn import WideResNet

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet18": (lambda nc, ic: resnet18(nc, ic, 64), "CIFAR ResNet-18, the paper's surrogate and victim (11M params)"),
    "resnet18-narrow": (lambda nc, ic: resnet18(nc, ic, 16), "ResNet-18 at 1/4 width, for CPU runs (0.7M params)"),
    "smallcnn": (lambda nc, ic: small_cnn(nc, ic, 24), "6-layer conv net, the fast CPU surrogate (0.3M params)"),
    "vgg11": (lambda nc, ic: VGG("vgg11", nc, ic), "VGG-11 with batch norm (9M params)"),
    "vgg16": (lambda nc, ic: VGG("vgg16", nc, ic), "VGG-16 with batch norm (15M params)"),
    "vgg11-narrow": (lambda nc, ic: VGG("vgg11", nc, ic, width_div=4), "VGG-11 at 1/4 width, for CPU runs"),
    "wrn16-4": (lambda nc, ic: WideResNet(16, 4, nc, ic), "Wide ResNet 16-4 (2.7M params)"),
    "wrn34-10": (lambda nc, ic: WideResNet(34, 10, nc, ic), "Wide ResNet 34-10, the robustness papers' net (46M params)"),
    "wrn16-1": (lambda nc, ic: WideResNet(16, 1, nc, ic), "Wide ResNet 16-1, for CPU runs (0.2M params)"),
    "inception-resnet-v1": (lambda nc, ic: InceptionResnetV1Classifier(nc, ic),
                            "FaceNet's face recogniser (facenet-pytorch), faces >= 75 px (23M params)"),
}


def list_models() -> dict[str, str]:
    """Registered names and a one-line description of each."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a fresh, randomly initialised model by registry name."""
    try:
        factory, _ = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}") from None
    return factory(num_classes, in_channels)


__all__ = ["Classifier", "InceptionResnetV1Classifier", "add_classes", "create_model", "list_models", "ResNet",
           "SmallCNN", "VGG", "WideResNet"]
