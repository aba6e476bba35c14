"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman, arXiv 1409.1556), the
CIFAR variant common in the unlearnable-examples literature: conv stages, five 2x2
max-pools, one linear classifier. ``width_div`` divides every channel count (1 = paper).
Inputs are (B, C, H, W) in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn

from .heads import Classifier

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(Classifier):
    """``features`` (conv stages) -> global average pooling -> ``classifier``. ``cas_layers``: where
    CAS attaches by default, the ReLUs of the last conv stage (official CAS placement for VGG-16,
    ``layer5``)."""

    classifier_attr = "classifier"
    cas_layers: tuple[str, ...]

    def __init__(self, config: str, num_classes: int = 10, in_channels: int = 3,
                 width_div: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in CONFIGS[config]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28x28 inputs work too
            else:
                cout = int(v) // width_div
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                           nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.num_features = cin
        self.classifier = nn.Linear(cin, num_classes)
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        start = pools[-2] if len(pools) > 1 else -1
        self.cas_layers = tuple(f"features.{i}" for i, m in enumerate(layers)
                                if i > start and isinstance(m, nn.ReLU))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> the last max-pool's feature map (B, num_features, H', W')."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> global average pool (B, num_features) -> logits (B, num_classes)."""
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)
