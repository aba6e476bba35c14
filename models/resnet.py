"""CIFAR ResNet-18 (He et al., arXiv 1512.03385), the 32x32 variant used by
Unlearnable Examples (arXiv 2101.04898): a 3x3 stem with no max-pool, four
stages of two BasicBlocks, global average pooling. Inputs are (B, C, H, W) in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import Classifier


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Classifier):
    """ResNet for small images; ``width`` is the first stage's channel count (64 in the paper).
    Stem and ``stages`` -> global average pooling -> ``linear``. ``cas_layers``: where CAS attaches
    by default, every block of the last stage (official CAS placement, ``layer4``)."""

    classifier_attr = "linear"
    cas_layers: tuple[str, ...]

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10,
                 in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        for i, n in enumerate(num_blocks):
            stages.append(self._make_stage(width * 2 ** i, n, 1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.num_features = width * 2 ** (len(num_blocks) - 1)
        self.linear = nn.Linear(self.num_features, num_classes)
        last = len(num_blocks) - 1
        self.cas_layers = tuple(f"stages.{last}.{i}" for i in range(num_blocks[last]))

    def _make_stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> the last stage's feature map (B, num_features, H', W')."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.stages(out)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> global average pool (B, num_features) -> logits (B, num_classes)."""
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width)
