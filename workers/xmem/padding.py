"""Zero padding of frames and masks to multiples of 16 (the network's stride), and its inverse."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

STRIDE = 16


@dataclass(frozen=True)
class Padding:
    """Pixels added on each side; XMem splits an odd total with the extra pixel after (bottom / right)."""

    top: int
    bottom: int
    left: int
    right: int


def split_padding(size: int, multiple: int = STRIDE) -> tuple[int, int]:
    """(before, after) pixels that bring `size` to a multiple; e.g. 75 -> (2, 3), 100 -> (6, 6)."""
    total = (multiple - size % multiple) % multiple
    return total // 2, total - total // 2


def padding_for(height: int, width: int, multiple: int = STRIDE) -> Padding:
    """The padding XMem applies to an (H, W) frame."""
    top, bottom = split_padding(height, multiple)
    left, right = split_padding(width, multiple)
    return Padding(top, bottom, left, right)


def pad(tensor: Tensor, padding: Padding) -> Tensor:
    """Zero-pad the last two axes: (..., H, W) -> (..., H + top + bottom, W + left + right)."""
    return F.pad(tensor, (padding.left, padding.right, padding.top, padding.bottom))


def unpad(tensor: Tensor, padding: Padding) -> Tensor:
    """Remove `padding` from the last two axes (the inverse of `pad`)."""
    height, width = tensor.shape[-2:]
    return tensor[..., padding.top : height - padding.bottom, padding.left : width - padding.right]
