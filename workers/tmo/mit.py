"""MiT-b1 (the SegFormer encoder) in plain PyTorch, so TMO's `mitb1` variant needs no `transformers`.

Module names follow Hugging Face's SegformerModel as of transformers 4.30 (the version TMO pins), so the
released checkpoints load without renaming; workers/tmo/layouts.py maps the transformers 5.x names onto them.
Every stage is: overlapping patch embedding (strided conv + LayerNorm), pre-norm transformer blocks
(efficient self-attention whose keys and values come from a sequence reduced by a strided conv, then a
Mix-FFN with a depthwise 3x3 conv and exact GELU), and a LayerNorm. The outputs of the four stages,
reshaped to (B, C, H/s, W/s) for s = 4, 8, 16, 32, are what TMO uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MiTSpec:
    """The MiT-b1 hyper-parameters (SegformerConfig for nvidia/mit-b1); heads cannot be read from shapes."""

    hidden_sizes: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    heads: tuple[int, ...] = (1, 2, 5, 8)
    reduction_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratio: int = 4


class PatchEmbedding(nn.Module):
    """Overlapping patches: conv with padding k // 2, then LayerNorm over channels of the token sequence."""

    def __init__(self, in_dim: int, dim: int, patch: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, patch, stride=stride, padding=patch // 2)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """(B, C, H, W) -> tokens (B, h*w, dim), h, w."""
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention; keys/values come from a `ratio`-times smaller grid (ratio 1: the full one)."""

    def __init__(self, dim: int, heads: int, ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.ratio = ratio
        if ratio > 1:
            self.sr = nn.Conv2d(dim, dim, ratio, stride=ratio)
            self.layer_norm = nn.LayerNorm(dim)

    def split(self, x: Tensor) -> Tensor:
        """(B, L, dim) -> (B, heads, L, dim / heads)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        source = x
        if self.ratio > 1:
            grid = x.transpose(1, 2).unflatten(-1, (height, width))
            source = self.layer_norm(self.sr(grid).flatten(2).transpose(1, 2))
        query = self.split(self.query(x))
        key, value = self.split(self.key(source)), self.split(self.value(source))
        weights = torch.softmax(query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5, dim=-1)
        return (weights @ value).transpose(1, 2).flatten(2)


class AttentionOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x)


class Attention(nn.Module):
    """Attention then output projection; the `self` / `output` names are Hugging Face's."""

    def __init__(self, dim: int, heads: int, ratio: int) -> None:
        super().__init__()
        self.self = EfficientSelfAttention(dim, heads, ratio)
        self.output = AttentionOutput(dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.output(self.self(x, height, width))


class DepthwiseConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        grid = x.transpose(1, 2).unflatten(-1, (height, width))
        return self.dwconv(grid).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear, depthwise 3x3 conv (the positional information of MiT), exact GELU, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dense1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.dense2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.dense2(F.gelu(self.dwconv(self.dense1(x), height, width)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then + MixFFN(norm(x))."""

    def __init__(self, dim: int, heads: int, ratio: int, mlp_ratio: int) -> None:
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads, ratio)
        self.layer_norm_2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.attention(self.layer_norm_1(x), height, width)
        return x + self.mlp(self.layer_norm_2(x), height, width)


class MiTEncoder(nn.Module):
    """The stages, held as Hugging Face holds them: patch_embeddings[i], block[i][j], layer_norm[i]."""

    def __init__(self, spec: MiTSpec) -> None:
        super().__init__()
        in_dims = (3, *spec.hidden_sizes[:-1])
        self.patch_embeddings = nn.ModuleList(
            PatchEmbedding(in_dim, dim, patch, stride)
            for in_dim, dim, patch, stride
            in zip(in_dims, spec.hidden_sizes, spec.patch_sizes, spec.strides, strict=True))
        self.block = nn.ModuleList(
            nn.ModuleList(TransformerBlock(dim, heads, ratio, spec.mlp_ratio) for _ in range(depth))
            for dim, heads, ratio, depth
            in zip(spec.hidden_sizes, spec.heads, spec.reduction_ratios, spec.depths, strict=True))
        self.layer_norm = nn.ModuleList(nn.LayerNorm(dim) for dim in spec.hidden_sizes)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) normalised -> four maps (B, C_i, H/s_i, W/s_i), stride 4 first."""
        outputs = []
        for embed, blocks, norm in zip(self.patch_embeddings, self.block, self.layer_norm, strict=True):
            tokens, height, width = embed(x)
            for block in cast(nn.ModuleList, blocks):
                tokens = block(tokens, height, width)
            x = norm(tokens).transpose(1, 2).unflatten(-1, (height, width))
            outputs.append(x)
        return outputs


class MiT(nn.Module):
    """SegformerModel's shape: the stages live under `encoder`, so keys read `encoder.block.0.0...`."""

    def __init__(self, spec: MiTSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or MiTSpec()
        self.encoder = MiTEncoder(self.spec)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.encoder(x)
