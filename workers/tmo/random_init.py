"""Calibrated random TMO networks and checkpoints in any released layout, for tests and benchmarks.

Plain random weights give ResNet BatchNorm statistics that do not match the activations and logits whose
scale is arbitrary. So after drawing weights (fan-in normal, He gain before ReLU or BatchNorm), the BatchNorm
running statistics of both encoders are set from a few image-like batches, and the predictor is rescaled and
centred so the logits have a chosen spread: masks are then neither empty nor full, and AOS has something to
choose between. One seed gives bit-identical weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from workers.tmo.checkpoint import save_checkpoint
from workers.tmo.layouts import Layout, from_network_keys
from workers.tmo.network import TMONetwork, Variant
from workers.xmem.random_init import smooth_noise


@dataclass(frozen=True)
class TMOInitOptions:
    """Knobs of the calibration; the defaults keep the ResNet-101 variant to about ten seconds on a CPU."""

    batches: int = 2
    batch_size: int = 1
    image_size: int = 384
    """The decoder always sees 384x384 (segment resizes to it); logit spread depends on that size."""
    bias_std: float = 0.02
    norm_weight_range: tuple[float, float] = (0.5, 1.5)
    norm_bias_std: float = 0.1
    logit_std: float = 2.0


def draw_weights(network: TMONetwork, options: TMOInitOptions, generator: torch.Generator) -> None:
    """Fan-in normal weights (He gain for convs: nearly all feed ReLU or BatchNorm), random norm affine."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            gain = math.sqrt(2.0) if isinstance(module, nn.Conv2d) else 1.0
            module.weight.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)
            if module.bias is not None:
                module.bias.normal_(0.0, options.bias_std, generator=generator)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            module.weight.uniform_(*options.norm_weight_range, generator=generator)
            module.bias.normal_(0.0, options.norm_bias_std, generator=generator)
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()


def calibration_images(options: TMOInitOptions, generator: torch.Generator) -> list[Tensor]:
    """Image-like batches in [0, 1]: smooth colour fields with a little pixel noise."""
    shape = (options.batch_size, 3, options.image_size, options.image_size)
    cell = options.image_size // 8
    return [(0.5 + 0.2 * smooth_noise(shape, generator, cell)
             + 0.05 * torch.randn(shape, generator=generator)).clamp(0, 1) for _ in range(options.batches)]


def calibrate_batchnorm(network: TMONetwork, images: list[Tensor]) -> None:
    """Running statistics = the average batch statistics of the calibration images, in both encoders."""
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for batch in images:
        network.app_encoder(batch)
        network.mo_encoder(batch.flip(-1))
    for norm in norms:
        norm.momentum = 0.1
    network.eval()


def calibrate_predictor(network: TMONetwork, images: list[Tensor], logit_std: float) -> None:
    """Scale the predictor to `logit_std` and centre each class, so foreground and background both occur."""
    logits = torch.cat([network.decode(network.app_encoder(batch), network.mo_encoder(batch.flip(-1)))
                        for batch in images])
    values = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    scale = logit_std / values.std().clamp_min(1e-12).item()
    predictor = network.decoder.predictor.conv
    assert predictor.bias is not None
    predictor.weight.mul_(scale)
    predictor.bias.mul_(scale).sub_(values.mean(dim=0) * scale)


@torch.no_grad()
def make_random_network(variant: Variant = "mitb1", seed: int = 0,
                        options: TMOInitOptions | None = None) -> TMONetwork:
    """A calibrated random TMONetwork in eval mode; the same arguments give identical weights."""
    options = options or TMOInitOptions()
    generator = torch.Generator().manual_seed(seed)
    network = TMONetwork(variant)
    draw_weights(network, options, generator)
    images = calibration_images(options, generator)
    calibrate_batchnorm(network, images)
    calibrate_predictor(network, images, options.logit_std)
    return network.eval()


def random_checkpoint_state(variant: Variant = "mitb1", seed: int = 0, layout: Layout | None = None,
                            options: TMOInitOptions | None = None) -> dict[str, Tensor]:
    """The state dict of `make_random_network` with the keys of a released layout (default: current)."""
    state = make_random_network(variant, seed, options).state_dict()
    return from_network_keys({k: v.detach().clone() for k, v in state.items()}, layout or Layout())


def write_random_checkpoint(path: str | Path, variant: Variant = "mitb1", seed: int = 0,
                            layout: Layout | None = None, options: TMOInitOptions | None = None) -> Path:
    """Save a calibrated random checkpoint that `load_network` reads back; returns the path."""
    return save_checkpoint(make_random_network(variant, seed, options), path, layout)
