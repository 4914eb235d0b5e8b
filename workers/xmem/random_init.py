"""Calibrated random initialisation of XMemNetwork for tests, benchmarks and training.

Plain random weights make XMem numerically useless: BatchNorm statistics do not match the activations, and
keys are so large that every top-k similarity is below about -104, where exp() underflows and the readout
is NaN. So after drawing weights we
* calibrate BatchNorm running statistics on a few random image/mask batches (activations become normalised),
* rescale the key / shrinkage / selection heads, the two GRU gate convs and the prediction head so their
  outputs have a chosen spread on those batches (unit-variance keys keep similarities in softmax range).
Everything random comes from one generator seeded by `seed`, so a seed gives bit-identical weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from workers.xmem.checkpoint import save_state_dict
from workers.xmem.network import NetworkSpec, XMemNetwork, empty_network


@dataclass(frozen=True)
class InitOptions:
    """Knobs of the calibration; the defaults keep the full-size network to a few seconds on CPU."""

    batches: int = 3
    batch_size: int = 2
    image_size: tuple[int, int] = (96, 128)
    objects: int = 2
    bn_weight_range: tuple[float, float] = (0.5, 1.5)
    bn_bias_std: float = 0.1
    bias_std: float = 0.02
    key_std: float = 1.0
    shrinkage_std: float = 0.1
    """Spread of the shrinkage head's pre-square output; wider lets a few memory elements win every query,
    leaving long-term usage tied at zero (then XMem's eviction drops whole blocks)."""
    selection_std: float = 1.0
    gate_std: float = 1.0
    logit_std: float = 2.0


@dataclass(frozen=True)
class CalibrationBatch:
    """Random but image-like inputs: images (B, 3, H, W) in normalised space, soft blob masks (B, N, H, W)."""

    images: torch.Tensor
    masks: torch.Tensor


def smooth_noise(shape: tuple[int, ...], generator: torch.Generator, cell: int) -> torch.Tensor:
    """(B, C, H, W) noise that varies over `cell`-pixel scales, like image content does."""
    batch, channels, height, width = shape
    coarse = torch.randn(batch, channels, -(-height // cell) + 1, -(-width // cell) + 1, generator=generator)
    fine = F.interpolate(coarse, scale_factor=cell, mode="bilinear", align_corners=False)
    return fine[..., :height, :width]


def calibration_batches(options: InitOptions, generator: torch.Generator) -> list[CalibrationBatch]:
    """Draw calibration inputs (images: smooth noise plus a little pixel noise; masks: thresholded blobs)."""
    height, width = options.image_size
    batches = []
    for _ in range(options.batches):
        image_shape = (options.batch_size, 3, height, width)
        images = smooth_noise(image_shape, generator, 8) + 0.3 * torch.randn(image_shape, generator=generator)
        blobs = smooth_noise((options.batch_size, options.objects, height, width), generator, 16)
        batches.append(CalibrationBatch(images, (blobs > 0.7).float()))
    return batches


def draw_weights(network: XMemNetwork, options: InitOptions, generator: torch.Generator) -> None:
    """Fill every tensor: fan-in normal weights (He gain before BatchNorm, else 1), random BN affine."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            gain = math.sqrt(2.0) if module.bias is None else 1.0
            module.weight.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)
            if module.bias is not None:
                module.bias.normal_(0.0, options.bias_std, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(*options.bn_weight_range, generator=generator)
            module.bias.normal_(0.0, options.bn_bias_std, generator=generator)
            module.reset_running_stats()


@contextmanager
def batchnorm_calibration(network: XMemNetwork, keep: nn.Module | None = None) -> Iterator[None]:
    """BatchNorm layers (but those inside ``keep``) average batch statistics while inside; rest in eval."""
    kept = set(keep.modules()) if keep is not None else set()
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d) and m not in kept]
    network.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        yield
    finally:
        for norm in norms:
            norm.momentum = 0.1
        network.eval()


def calibrate_batchnorm(network: XMemNetwork, batches: list[CalibrationBatch],
                        keep: nn.Module | None = None) -> None:
    """Set running statistics of both trunks (but ``keep``) from the calibration images and masks."""
    with batchnorm_calibration(network, keep):
        for batch in batches:
            f16 = network.key_encoder(batch.images)[0]
            network.encode_value(batch.images, f16, None, batch.masks, deep_update=False)


@contextmanager
def recording(modules: list[nn.Module]) -> Iterator[dict[nn.Module, list[torch.Tensor]]]:
    """Collect the outputs of `modules` (as (rows, channels) after moving channels last) while inside."""
    outputs: dict[nn.Module, list[torch.Tensor]] = {module: [] for module in modules}

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        outputs[module].append(output.detach().movedim(-3, -1).reshape(-1, output.shape[-3]))

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def rescale(layer: nn.Conv2d, outputs: list[torch.Tensor], target_std: float, *, centre: bool) -> None:
    """Scale a layer's weight and bias so its recorded outputs get std `target_std` (mean 0 if `centre`)."""
    values = torch.cat(outputs)
    scale = target_std / values.std().clamp_min(1e-12).item()
    assert layer.bias is not None, "every calibrated head has a bias"
    layer.weight.mul_(scale)
    layer.bias.mul_(scale)
    if centre:
        layer.bias.sub_(values.mean(dim=0) * scale)


def run_steps(network: XMemNetwork, batch: CalibrationBatch) -> None:
    """One encode_key -> encode_value (deep update) -> segment (hidden update), the value used as readout."""
    spec = network.spec
    key, _, _, f16, f8, f4 = network.encode_key(batch.images, need_shrinkage=True, need_selection=True)
    masks = batch.masks
    hidden = torch.zeros(masks.shape[0], masks.shape[1], spec.hidden_dim, *key.shape[-2:])
    value, new_hidden = network.encode_value(batch.images, f16, hidden, masks, deep_update=True)
    network.segment(f16, f8, f4, new_hidden, value, update_hidden=True)


def calibrate_heads(network: XMemNetwork, batches: list[CalibrationBatch], options: InitOptions) -> None:
    """Rescale heads in dependency order; each stage re-runs the steps with the earlier stages fixed."""
    projection = network.key_proj
    stages: list[list[tuple[nn.Conv2d, float, bool]]] = [
        [(projection.key_proj, options.key_std, False), (projection.d_proj, options.shrinkage_std, False),
         (projection.e_proj, options.selection_std, True)],
        [(network.decoder.pred, options.logit_std, True)],
    ]
    if network.spec.hidden_dim:
        reinforce, update = network.value_encoder.hidden_reinforce, network.decoder.hidden_update
        assert reinforce is not None and update is not None, "a network with a hidden state has both"
        stages[0].append((reinforce.transform, options.gate_std, True))
        stages.append([(update.transform, options.gate_std, True)])
    for stage in stages:
        with recording([layer for layer, _, _ in stage]) as outputs:
            for batch in batches:
                run_steps(network, batch)
        for layer, target, centre in stage:
            rescale(layer, outputs[layer], target, centre=centre)


@torch.no_grad()
def make_random_network(spec: NetworkSpec | None = None, seed: int = 0, options: InitOptions | None = None,
                        key_encoder_state: Mapping[str, torch.Tensor] | None = None) -> XMemNetwork:
    """A calibrated random network in eval mode; the same seed and options give identical weights.

    ``key_encoder_state`` (e.g. ImageNet weights) replaces the drawn key encoder before calibration, which
    then leaves its BatchNorm statistics alone and scales the heads to its features.
    """
    options = options or InitOptions()
    generator = torch.Generator().manual_seed(seed)
    network = empty_network(spec or NetworkSpec())
    draw_weights(network, options, generator)
    if key_encoder_state is not None:
        network.key_encoder.load_state_dict(key_encoder_state, strict=True)
    batches = calibration_batches(options, generator)
    calibrate_batchnorm(network, batches, keep=network.key_encoder if key_encoder_state is not None else None)
    calibrate_heads(network, batches, options)
    return network.eval()


def calibrated_random_state_dict(spec: NetworkSpec | None = None, seed: int = 0,
                                 options: InitOptions | None = None) -> dict[str, torch.Tensor]:
    """The state dict of `make_random_network`, in the official checkpoint format."""
    network = make_random_network(spec, seed, options)
    return {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}


def write_random_checkpoint(path: str | Path, spec: NetworkSpec | None = None, seed: int = 0,
                            options: InitOptions | None = None) -> Path:
    """Save a calibrated random checkpoint that `load_network` reads back; returns the path."""
    return save_state_dict(make_random_network(spec, seed, options), path)
