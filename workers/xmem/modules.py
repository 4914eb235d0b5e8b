"""Network building blocks of XMem that work on grouped (per-object) features.

Grouped features have shape (B, N, C, H, W): N objects share one image-level feature map (B, C, H, W).
Convolutions fold the object axis into the batch axis, so their weights are ordinary conv weights.
Attribute names below are the official state-dict names, so released checkpoints load as they are:
do not rename them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CBAM_REDUCTION = 16
"""Channel-gate MLP width = channels // 16 (512 -> 32 in the official network)."""


def fold(g: torch.Tensor) -> torch.Tensor:
    """(B, N, C, H, W) -> (B*N, C, H, W)."""
    return g.flatten(0, 1)


def unfold(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*N, C, H, W) -> (B, N, C, H, W)."""
    return x.view(batch, x.shape[0] // batch, *x.shape[1:])


def distribute_cat(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Put image feature x (B, Cx, H, W) before each object's g (B, N, Cg, H, W) -> (B, N, Cx+Cg, H, W)."""
    expanded = x.unsqueeze(1).expand(-1, g.shape[1], -1, -1, -1)
    return torch.cat([expanded, g], dim=2)


def resize_groups(g: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale (B, N, C, H, W) spatially: bilinear (align_corners=False) up, area down, as the official code."""
    mode = "bilinear" if factor > 1 else "area"
    size = (round(g.shape[-2] * factor), round(g.shape[-1] * factor))
    extra = {"align_corners": False} if mode == "bilinear" else {}
    return unfold(F.interpolate(fold(g), size=size, mode=mode, **extra), g.shape[0])


def gru_step(gates: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """XMem's GRU-like update from gate pre-activations (B, N, 3*Ch, h, w) and hidden (B, N, Ch, h, w).

    new h = forget * h * (1 - update) + update * candidate; the candidate does not see a reset-gated state
    (an accident in the original design that was kept, since checkpoints depend on it).
    """
    ch = hidden.shape[2]
    forget = torch.sigmoid(gates[:, :, :ch])
    update = torch.sigmoid(gates[:, :, ch : 2 * ch])
    candidate = torch.tanh(gates[:, :, 2 * ch :])
    return forget * hidden * (1 - update) + update * candidate


class GroupConv2d(nn.Conv2d):
    """A conv applied to grouped features (B, N, C, H, W) by folding objects into the batch."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return unfold(super().forward(fold(g)), g.shape[0])


class GroupResBlock(nn.Module):
    """Pre-activation residual block on grouped features; the skip is a 3x3 conv when widths differ."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.downsample = GroupConv2d(in_dim, out_dim, 3, padding=1) if in_dim != out_dim else None
        self.conv1 = GroupConv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = GroupConv2d(out_dim, out_dim, 3, padding=1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(g))))
        skip = g if self.downsample is None else self.downsample(g)
        return out + skip


class ChannelGate(nn.Module):
    """Channel attention: a shared MLP over global average and max pools, summed, then sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // CBAM_REDUCTION
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, mid), nn.ReLU(), nn.Linear(mid, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> gated x."""
        attention = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(attention)[:, :, None, None]


class SpatialConv(nn.Module):
    """Holder so the 7x7 conv is named `SpatialGate.spatial.conv` as in the official state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    """Spatial attention from [max over channels, mean over channels] (in that order)."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> gated x."""
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention on (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Fuse an image feature x (B, x_in, h, w) into grouped g (B, N, g_in, h, w) -> (B, N, g_out, h, w)."""

    def __init__(self, x_in: int, g_in: int, g_mid: int, g_out: int) -> None:
        super().__init__()
        self.block1 = GroupResBlock(x_in + g_in, g_mid)
        self.attention = CBAM(g_mid)
        self.block2 = GroupResBlock(g_mid, g_out)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = self.block1(distribute_cat(x, g))
        attended = unfold(self.attention(fold(g)), g.shape[0])
        return self.block2(g + attended)


class HiddenReinforcer(nn.Module):
    """Value-encoder GRU ("deep update"): new hidden from the value g (B, N, g_dim, h, w)."""

    def __init__(self, g_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.transform = GroupConv2d(g_dim + hidden_dim, hidden_dim * 3, 3, padding=1)

    def forward(self, g: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return gru_step(self.transform(torch.cat([g, hidden], dim=2)), hidden)


class HiddenUpdater(nn.Module):
    """Decoder GRU: new hidden from the decoder's g16, g8 and [g4, logits4] features."""

    def __init__(self, g16_dim: int, g8_dim: int, g4_dim: int, mid_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.g16_conv = GroupConv2d(g16_dim, mid_dim, 1)
        self.g8_conv = GroupConv2d(g8_dim, mid_dim, 1)
        self.g4_conv = GroupConv2d(g4_dim, mid_dim, 1)
        self.transform = GroupConv2d(mid_dim + hidden_dim, hidden_dim * 3, 3, padding=1)

    def forward(
        self, g16: torch.Tensor, g8: torch.Tensor, g4: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """g16 (B,N,C16,h,w), g8 (B,N,C8,2h,2w), g4 (B,N,C4,4h,4w), hidden (B,N,Ch,h,w) -> new hidden."""
        u = self.g16_conv(g16) + self.g8_conv(resize_groups(g8, 0.5)) + self.g4_conv(resize_groups(g4, 0.25))
        return gru_step(self.transform(torch.cat([u, hidden], dim=2)), hidden)


class UpsampleBlock(nn.Module):
    """Upsample grouped g x2, add a projected skip feature (broadcast over objects), then a residual block."""

    def __init__(self, skip_dim: int, g_up_dim: int, g_out_dim: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_dim, g_up_dim, 3, padding=1)
        self.out_conv = GroupResBlock(g_up_dim, g_out_dim)

    def forward(self, skip: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """skip (B, C, 2h, 2w), g (B, N, g_up_dim, h, w) -> (B, N, g_out_dim, 2h, 2w)."""
        return self.out_conv(self.skip_conv(skip).unsqueeze(1) + resize_groups(g, 2))


class KeyProjection(nn.Module):
    """Key, shrinkage (d) and selection (e) heads on f16."""

    def __init__(self, in_dim: int, key_dim: int) -> None:
        super().__init__()
        self.key_proj = nn.Conv2d(in_dim, key_dim, 3, padding=1)
        self.d_proj = nn.Conv2d(in_dim, 1, 3, padding=1)
        self.e_proj = nn.Conv2d(in_dim, key_dim, 3, padding=1)

    def forward(
        self, f16: torch.Tensor, need_shrinkage: bool, need_selection: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """f16 (B,C,h,w) -> key (B,Ck,h,w), shrinkage (B,1,h,w) >= 1, selection (B,Ck,h,w) in (0, 1)."""
        shrinkage = self.d_proj(f16) ** 2 + 1 if need_shrinkage else None
        selection = torch.sigmoid(self.e_proj(f16)) if need_selection else None
        return self.key_proj(f16), shrinkage, selection
