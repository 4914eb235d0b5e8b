"""Inference-only rewrites of a loaded XMemNetwork (the network side of the fast path).

Each rewrite is measured in benchmarks/engine.py against the reference network (benchmarks/RESULTS.md):

* `fold_batchnorm`: every eval-mode BatchNorm of the key and value encoders is folded into the conv before
  it, so the conv computes conv + BN in one pass; the BN modules become identities. Results differ at float
  rounding level (the folded weights are rounded once more).
* `channels_last`: 4-D weights in NHWC order, so oneDNN's convolutions run without reordering their inputs
  and outputs; results differ at float rounding level (another accumulation order).

A rewritten network is for inference only: its state dict no longer has the official layout (folded BN
is gone), so it must never be trained or saved as a checkpoint. `is_inference_only` tells such networks
apart; `load_network(..., fast=False)` gives the untouched reference network.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from workers.xmem.network import XMemNetwork

INFERENCE_ONLY = "_vosd_inference_only"
"""Attribute set on networks rewritten here."""


@dataclass(frozen=True)
class Acceleration:
    """Which rewrites `accelerate` applies. The defaults are what `load_network` uses for the fast path."""

    fold_batchnorm: bool = False
    channels_last: bool = False

    @property
    def changes_network(self) -> bool:
        return self.fold_batchnorm or self.channels_last


DEFAULT_ACCELERATION = Acceleration()
"""The network rewrites of the default fast path (none: see benchmarks/RESULTS.md for their tolerance)."""


def conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv attribute, BN attribute) for each conv directly followed by its BatchNorm: the ResNet
    naming (convN / bnN, conv1 / bn1) and Sequential(conv, BN, ...) (downsample, EfficientNet conv_bn)."""
    pairs: list[tuple[nn.Module, str, str]] = []
    for parent in module.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for first, second in itertools.pairwise(names):
                if isinstance(children[first], nn.Conv2d) and isinstance(children[second], nn.BatchNorm2d):
                    pairs.append((parent, first, second))
            continue
        for name, child in children.items():
            if not (isinstance(child, nn.Conv2d) and name.startswith("conv")):
                continue
            bn_name = "bn" + name.removeprefix("conv")
            if isinstance(children.get(bn_name), nn.BatchNorm2d):
                pairs.append((parent, name, bn_name))
    return pairs


def fold_batchnorm(network: nn.Module) -> int:
    """Fold eval-mode BatchNorms into their convs in place; returns how many were folded."""
    if network.training:
        raise ValueError("BatchNorm can only be folded in eval mode (running statistics)")
    pairs = conv_bn_pairs(network)
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return len(pairs)


def accelerate(network: XMemNetwork, options: Acceleration = DEFAULT_ACCELERATION) -> XMemNetwork:
    """Apply `options` to an eval-mode network in place and return it (marked inference-only when changed)."""
    network.eval()
    with torch.no_grad():
        if options.fold_batchnorm:
            fold_batchnorm(network)
        if options.channels_last:
            network.to(memory_format=torch.channels_last)
    if options.changes_network:
        setattr(network, INFERENCE_ONLY, True)
        network.requires_grad_(False)
    return network


def is_inference_only(network: nn.Module) -> bool:
    """Whether `network` was rewritten by `accelerate` (so it must not be trained or saved)."""
    return bool(getattr(network, INFERENCE_ONLY, False))
