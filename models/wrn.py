"""Wide ResNet (Zagoruyko & Komodakis, arXiv 1605.07146), WRN-depth-k with pre-activation
blocks, as used for CIFAR robustness work (e.g. WRN-34-10 in AWP). Inputs (B, C, H, W) in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import Classifier


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = nn.ReLU()  # a module (no parameters) so CAS can hook the pre-activation
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(F.relu(self.bn2(o)))
        return o + short


class WideResNet(Classifier):
    """Stem, ``blocks`` and the final BN-ReLU -> global average pooling -> ``linear``. ``cas_layers``:
    where CAS attaches by default, the last block's pre-activation (``act1``) and the final BN-ReLU
    (``act``), the official CAS placement for WRN."""

    classifier_attr = "linear"
    cas_layers: tuple[str, ...]

    def __init__(self, depth: int = 16, widen: int = 4, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(WideBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.act = nn.ReLU()
        self.num_features = cin
        self.linear = nn.Linear(cin, num_classes)
        self.cas_layers = (f"blocks.{len(blocks) - 1}.act1", "act")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> the final BN-ReLU's feature map (B, num_features, H/4, W/4)."""
        o = self.blocks(self.conv1(x))
        return self.act(self.bn(o))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> global average pool (B, num_features) -> logits (B, num_classes)."""
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)
