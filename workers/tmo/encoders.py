"""TMO's two encoder kinds; appearance and motion encoders are two instances with separate weights.

Each encoder normalises its input with ImageNet statistics held in `mean` / `std` buffers (part of the
official state dict), flow images included, and returns features at strides 4, 8, 16 and 32.
Trunks are built without weights (torchvision `weights=None`), so nothing is ever downloaded.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from workers.imagenet import IMAGENET_MEAN, IMAGENET_STD
from workers.tmo.mit import MiT
from workers.xmem.backbones import LITE_DIMS, LITE_STRIDE32_DIM, LiteKeyEncoder

RESNET_DIMS = (256, 512, 1024, 2048)
"""Channels of ResNet-101 layer1..layer4 (strides 4..32)."""
MIT_DIMS = (64, 128, 320, 512)
"""Channels of the four MiT-b1 stages (strides 4..32)."""
LITE_ENCODER_DIMS = (LITE_DIMS[2], LITE_DIMS[1], LITE_DIMS[0], LITE_STRIDE32_DIM)
"""Channels of the EfficientNet-Lite0 trunk at strides 4..32: 24, 40, 112, 320."""


class NormalisingEncoder(nn.Module):
    """Holds the ImageNet statistics as persistent buffers, as the official encoders do."""

    mean: Tensor
    std: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def normalise(self, image: Tensor) -> Tensor:
        return (image - self.mean) / self.std


class ResNet101Encoder(NormalisingEncoder):
    """A torchvision ResNet-101 trunk (stem, layer1..4; no pooling head) under torchvision's own names."""

    def __init__(self) -> None:
        super().__init__()
        trunk = torchvision.models.resnet101(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2 = trunk.layer1, trunk.layer2
        self.layer3, self.layer4 = trunk.layer3, trunk.layer4

    def forward(self, image: Tensor) -> list[Tensor]:
        """image (B, 3, H, W) in [0, 1] -> [s4 (256), s8 (512), s16 (1024), s32 (2048)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalise(image)))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


class MiTB1Encoder(NormalisingEncoder):
    """MiT-b1 under `backbone` (TMO keeps the Hugging Face SegformerModel there)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MiT()

    def forward(self, image: Tensor) -> list[Tensor]:
        """image (B, 3, H, W) in [0, 1] -> [s4 (64), s8 (128), s16 (320), s32 (512)]."""
        return self.backbone(self.normalise(image))


class LiteEncoder(NormalisingEncoder):
    """vosd's CPU encoder: the EfficientNet-Lite0 trunk of XMem's lite key encoder, down to stride 32.

    The trunk's stem expects ImageNet-normalised input (workers/training/pretrained.py folds the ImageNet
    weights' own [-1, 1] scaling into it), which is what `normalise` produces.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = LiteKeyEncoder(stride32=True)

    def forward(self, image: Tensor) -> list[Tensor]:
        """image (B, 3, H, W) in [0, 1] -> [s4 (24), s8 (40), s16 (112), s32 (320)]."""
        trunk = self.trunk
        s4 = trunk.stride4(trunk.stride2(trunk.stem(self.normalise(image))))
        s8 = trunk.stride8(s4)
        s16 = trunk.stride16(s8)
        return [s4, s8, s16, trunk.stride32(s16)]
