"""TMO's decoder: per scale reduce (1x1 + ReLU), blend (3x3 + ReLU), CBAM, bicubic x2; 2-class head at 1/4.

Every convolution sits in a small wrapper under the name `conv` (the official keys read
`decoder.cbam1.conv2.0.conv.weight`). Where the description leaves it open, the attention block follows
CBAM: no activation after its first 3x3 conv, ReLU between the two layers of each attention MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTH = 256
"""Channels of every decoder stage in TMO (the lite variant uses fewer)."""
SPATIAL_HIDDEN = 16
"""Channels between the two 3x3 convs of the spatial attention."""
CLASSES = 2
"""Background and foreground logits."""


class ConvLayer(nn.Module):
    """A biased conv with 'same' padding, optionally followed by ReLU."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, *, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class CBAM(nn.Module):
    """3x3 conv, channel attention (shared MLP on avg- and max-pooled vectors), then spatial attention."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(dim, dim, 3, relu=False)
        self.conv2 = nn.Sequential(ConvLayer(dim, dim, 1, relu=True), ConvLayer(dim, dim, 1, relu=False))
        self.conv3 = nn.Sequential(ConvLayer(2, SPATIAL_HIDDEN, 3, relu=True),
                                   ConvLayer(SPATIAL_HIDDEN, 1, 3, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        pooled = self.conv2(x.mean(dim=(2, 3), keepdim=True)) + self.conv2(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(pooled)
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv3(maps))


def upsample(x: Tensor, factor: int) -> Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


class Decoder(nn.Module):
    """Fused features [s4, s8, s16, s32] -> (B, 2, H, W) logits at the encoders' input size."""

    def __init__(self, in_dims: tuple[int, int, int, int], width: int = WIDTH) -> None:
        super().__init__()
        s4, s8, s16, s32 = in_dims
        self.conv1 = ConvLayer(s32, width, 1, relu=True)
        self.conv2 = ConvLayer(s16, width, 1, relu=True)
        self.conv3 = ConvLayer(s8, width, 1, relu=True)
        self.conv4 = ConvLayer(s4, width, 1, relu=True)
        self.blend1 = ConvLayer(width, width, 3, relu=True)
        self.blend2 = ConvLayer(2 * width, width, 3, relu=True)
        self.blend3 = ConvLayer(2 * width, width, 3, relu=True)
        self.blend4 = ConvLayer(2 * width, width, 3, relu=True)
        self.cbam1, self.cbam2, self.cbam3, self.cbam4 = (CBAM(width) for _ in range(4))
        self.predictor = ConvLayer(width, CLASSES, 3, relu=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        s4, s8, s16, s32 = features
        x = self.cbam1(self.blend1(self.conv1(s32)))
        for reduce, blend, cbam, skip in ((self.conv2, self.blend2, self.cbam2, s16),
                                          (self.conv3, self.blend3, self.cbam3, s8),
                                          (self.conv4, self.blend4, self.cbam4, s4)):
            x = cbam(blend(torch.cat([reduce(skip), upsample(x, 2)], dim=1)))
        return upsample(self.predictor(x), 4)
