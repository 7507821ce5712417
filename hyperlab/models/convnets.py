"""Image classifiers with ordinary or hypernetwork-generated conv kernels (PAPER.md section 2).

``logits = model(images)``: images (B, C, H, W) float -> logits (B, num_classes).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from hyperlab.models.config import DataShape, ModelConfig
from hyperlab.models.static_hyper import GeneratedConv2d, KernelGenerator


class MnistConvNet(nn.Module):
    """conv1 7×7×1×16 → ReLU → pool → conv2 7×7×16×16 → ReLU → pool → fc 784→10; input (B, 1, 28, 28).

    With ``hyper=True`` conv2's kernel (a single 16×16 tile) is generated from one z of size ``n_z``:
    4,244 parameters (n_z=4) in place of 12,544. Conv biases are ordinary parameters in both variants.
    """

    def __init__(self, hyper: bool = False, n_z: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 7, padding=3)
        self.generator = KernelGenerator(n_z, kernel_size=7) if hyper else None
        if hyper:
            self.conv2 = GeneratedConv2d(self.generator, 16, 16, padding=3, bias=True)
        else:
            self.conv2 = nn.Conv2d(16, 16, 7, padding=3)
        self.fc = nn.Linear(7 * 7 * 16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)  # (B, 16, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)       # (B, 16, 7, 7)
        return self.fc(x.flatten(1))                      # (B, 10)


class _WideBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3×3-BN-ReLU-conv3×3, 1×1 conv shortcut on a shape change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv(out_channels, out_channels, 1)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return y + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen for (B, 3, 32, 32) images; ``hyper=True`` generates all kernels of groups 2 to 4.

    Groups 2 to 4 have (depth-4)/6 blocks each, widths 16k, 32k, 64k (k = widen). With ``hyper=True``
    one generator (N_z = n_z, 16×16×3×3 tiles; 75,920 parameters at n_z=64) serves all 6·(depth-4)/6
    generated kernels; the first conv, shortcuts, batch norms and classifier stay ordinary.
    """

    def __init__(self, depth: int = 40, widen: int = 1, hyper: bool = False, n_z: int = 64,
                 num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"depth must be 6n+4 (10, 16, 22, ...), got {depth}")
        n_blocks = (depth - 4) // 6
        self.generator = KernelGenerator(n_z, kernel_size=3) if hyper else None
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        blocks, channels = [], 16
        for group, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for n in range(n_blocks):
                stride = 2 if group > 0 and n == 0 else 1
                blocks.append(_WideBlock(channels, width, stride, self._conv))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def _conv(self, in_channels: int, out_channels: int, stride: int) -> nn.Module:
        if self.generator is not None:
            return GeneratedConv2d(self.generator, in_channels, out_channels, stride)
        return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv1(images))  # (B, 64k, 8, 8)
        x = F.relu(self.bn(x))
        return self.fc(x.mean((2, 3)))       # global average pool -> (B, num_classes)


class MnistConvNetConfig(ModelConfig):
    """``model:`` of the MNIST convnet (``task: classify`` on 28×28 grey images, 10 classes)."""

    name: Literal["mnist_convnet"] = "mnist_convnet"
    task: ClassVar[str] = "classify"
    hyper: bool = False                 # conv2's kernel generated from one z
    n_z: pydantic.PositiveInt = 4

    @property
    def static_hypernetwork(self) -> bool:
        return self.hyper

    def build(self, data: DataShape) -> MnistConvNet:
        return MnistConvNet(self.hyper, self.n_z)


class WideResNetConfig(ModelConfig):
    """``model:`` of a wide residual network (``task: classify`` on 32×32 colour images)."""

    name: Literal["wide_resnet"] = "wide_resnet"
    task: ClassVar[str] = "classify"
    depth: int = 40
    widen: pydantic.PositiveInt = 1
    hyper: bool = False                 # kernels of groups 2 to 4 generated by one shared generator
    n_z: pydantic.PositiveInt = 64

    @pydantic.field_validator("depth")
    @classmethod
    def _six_n_plus_four(cls, depth: int) -> int:
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"expected 6n+4 (10, 16, 22, 28, 34, 40, ...), got {depth}")
        return depth

    @property
    def static_hypernetwork(self) -> bool:
        return self.hyper

    def build(self, data: DataShape) -> WideResNet:
        return WideResNet(self.depth, self.widen, self.hyper, self.n_z, data.require("num_classes"))
