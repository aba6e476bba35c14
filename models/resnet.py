"""CIFAR ResNet-18 (He et al., arXiv 1512.03385), the 32x32 variant used by
Unlearnable Examples (arXiv 2101.04898): a 3x3 stem with no max-pool, four
stages of two BasicBlocks, global average pooling. Inputs are (B, C, H, W) in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


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


class ResNet(nn.Module):
    """ResNet for small images; ``width`` is the first stage's channel count (64 in the paper)."""

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
        self.linear = nn.Linear(width * 2 ** (len(num_blocks) - 1), num_classes)

    def _make_stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width)
