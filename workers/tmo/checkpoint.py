"""TMO checkpoints in every released layout, loaded strictly with `weights_only=True`.

Files are read by XMem's reader (same CheckpointError cases: missing, empty, not PyTorch, pickled objects,
damaged, not a state dict, wrapped under "state_dict"/"model"/"network"). The layout (workers/tmo/layouts.py)
and the variant are read from the keys; after renaming, the state dict must match TMONetwork exactly.
The one allowance: an encoder's `mean` / `std` buffers (ImageNet constants) and BatchNorm counters may be
absent, and then keep their initial values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from workers.tmo.layouts import Layout, checkpoint_key, detect_layout, from_network_keys, to_network_keys
from workers.tmo.network import TMONetwork, Variant
from workers.xmem.checkpoint import CheckpointError, as_state_dict, layout_problems, read_state_dict

VARIANT_MARKERS: dict[str, Variant] = {
    "app_encoder.conv1.weight": "rn101",
    "app_encoder.backbone.encoder.patch_embeddings.0.proj.weight": "mitb1",
    "app_encoder.trunk.stem.0.weight": "lite",
}
"""A key (in TMONetwork names) that only the given variant has."""
DECODER_WIDTH_KEY = "decoder.predictor.conv.weight"
"""(2, width, 3, 3): the decoder's width, which the lite variant may choose."""
CONSTANT_BUFFERS = ("mean", "std")

__all__ = ["CheckpointError", "load_network", "read_checkpoint", "save_checkpoint"]


def read_checkpoint(path_or_state_dict: str | Path | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """The state dict and a name for messages, from a file or a mapping."""
    if isinstance(path_or_state_dict, Mapping):
        return as_state_dict(path_or_state_dict, "the given mapping"), "the given state dict"
    return read_state_dict(path_or_state_dict), str(path_or_state_dict)


def network_state(state: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], Variant, Layout]:
    """Rename a checkpoint to TMONetwork keys and tell its variant; CheckpointError when it is not TMO."""
    layout = detect_layout(list(state))
    if layout is None:
        sample = sorted(state)[:5]
        raise CheckpointError(
            f"{source} is not a TMO checkpoint: no key starts with vos.app_encoder. or vos.img_encoder. "
            f"(optionally after module.); its keys include {sample}")
    renamed = to_network_keys(state, layout)
    variant = next((v for key, v in VARIANT_MARKERS.items() if key in renamed), None)
    if variant is None:
        raise CheckpointError(
            f"{source} ({layout.describe()}) holds no ResNet-101, MiT-b1 or lite appearance encoder: "
            f"one of {[checkpoint_key(key, layout) for key in VARIANT_MARKERS]} is needed")
    return renamed, variant, layout


def may_be_absent(key: str) -> bool:
    """An encoder's ImageNet `mean` / `std` buffer, or a BatchNorm's `num_batches_tracked` (unused)."""
    parts = key.split(".")
    return (len(parts) == 2 and parts[1] in CONSTANT_BUFFERS) or parts[-1] == "num_batches_tracked"


def decoder_width(state: Mapping[str, Tensor], variant: Variant) -> int | None:
    """The lite decoder's width read from the predictor (None: the variant's fixed width)."""
    predictor = state.get(DECODER_WIDTH_KEY)
    if variant != "lite" or predictor is None or predictor.dim() != 4:
        return None
    return int(predictor.shape[1])


def load_network(path_or_state_dict: str | Path | Mapping[str, Tensor], device: str | torch.device = "cpu",
                 *, input_size: int | None = None) -> TMONetwork:
    """Build the variant the checkpoint holds, load it strictly and return it in eval mode on `device`.

    `input_size` overrides the variant's square input side (384, or 224 for lite; less is faster).

    Example:
        >>> from workers.tmo import load_network
        >>> net = load_network("weights/TMO_rn101.pth")  # or duts_davis_best.pth, or a MiT-b1 release
    """
    state, source = read_checkpoint(path_or_state_dict)
    renamed, variant, layout = network_state(state, source)
    network = TMONetwork(variant, input_size=input_size, decoder_width=decoder_width(renamed, variant))
    expected = network.state_dict()
    for key, tensor in expected.items():
        if may_be_absent(key):
            renamed.setdefault(key, tensor)
    problems = layout_problems(expected, renamed)
    if problems:
        raise CheckpointError(
            f"{source} does not match the TMO {variant} layout ({layout.describe()}):\n  "
            + "\n  ".join(problems))
    network.load_state_dict(renamed, strict=True)
    return network.to(device).eval()


def save_checkpoint(network: TMONetwork, path: str | Path, layout: Layout | None = None) -> Path:
    """Write the network in a released layout (default: the current one) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in network.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    torch.save(from_network_keys(state, layout or Layout()), partial)
    os.replace(partial, path)
    return path
