"""Checkpoints in the official XMem format: a plain state dict (name -> tensor), loaded strictly.

Reading is `torch.load(..., weights_only=True)`, so a checkpoint can never run code. The network's sizes and
variant are read from tensor shapes. The only transformation is the official one: a single-object
checkpoint (value_encoder.conv1 with 4 input channels) gets a zero fifth channel. There is no key renaming.
As a convenience, a dict that wraps a state dict under "state_dict", "model" or "network" (training
checkpoints) is unwrapped; anything else that is not a state dict is refused with a CheckpointError that
says what it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch

from workers.xmem.network import NetworkSpec, Variant, XMemNetwork, empty_network

WRAPPER_KEYS = ("state_dict", "model", "network")
MAX_LISTED = 10
"""At most this many keys are named per kind of layout problem."""
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
VALUE_CONV1 = "value_encoder.conv1.weight"
SINGLE_OBJECT_CHANNELS = 4
RESNET_FIRST_BLOCK = "key_encoder.res2.0.conv1.weight"
LITE_STEM = "key_encoder.stem.0.weight"


class CheckpointError(ValueError):
    """The checkpoint cannot be used; the message names the file or keys and the problem."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file onto the CPU and return its state dict, with clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise CheckpointError(f"not a PyTorch checkpoint (file starts with {head!r}): {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise CheckpointError(describe_load_failure(path, error)) from error
    return as_state_dict(loaded, str(path))


def describe_load_failure(path: Path, error: Exception) -> str:
    """Say whether a file that looks like a checkpoint holds refused objects or is damaged."""
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"checkpoint {path} holds a pickled Python object ({refused.group(1)}) that weights-only "
                f"loading refuses; save a plain state dict instead: torch.save(network.state_dict(), path)")
    lines = text.split("WeightsUnpickler error:")[-1].splitlines()
    detail = next((line for line in lines if line.strip()), type(error).__name__)
    return (f"checkpoint {path} is truncated, corrupt or not written by torch.save "
            f"({type(error).__name__}: {detail.split('. ')[0].strip()})")


def as_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} dict from what torch.load returned, unwrapping one level of WRAPPER_KEYS."""
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{source} holds a {type(loaded).__name__}, not a state dict (name -> tensor)")
    if not is_tensor_mapping(loaded):
        inner = next((loaded[key] for key in WRAPPER_KEYS if key in loaded), None)
        if not is_tensor_mapping(inner):
            keys = sorted(map(str, loaded))[:MAX_LISTED]
            raise CheckpointError(
                f"{source} is a dict but not a state dict: not all values are tensors and none of "
                f"{list(WRAPPER_KEYS)} holds one; its keys include {keys}")
        loaded = inner
    return dict(cast("Mapping[str, torch.Tensor]", loaded))  # is_tensor_mapping checked it


def is_tensor_mapping(value: object) -> bool:
    """True for a non-empty mapping of str -> tensor."""
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def spec_from_state_dict(state: Mapping[str, torch.Tensor]) -> NetworkSpec:
    """Read sizes from tensor shapes; the key encoder's first block gives the variant."""
    required = {
        "key_proj.key_proj.weight": "key_dim",
        "value_encoder.fuser.block2.conv2.weight": "value_dim",
        "decoder.fuser.block2.conv2.weight": "the decoder width at 1/16",
        "decoder.up_16_8.out_conv.conv2.weight": "the decoder width at 1/8",
        "decoder.up_8_4.out_conv.conv2.weight": "the decoder width at 1/4",
    }
    missing = [f"{key} ({meaning})" for key, meaning in required.items() if key not in state]
    variant = key_encoder_variant(state)
    if variant is None:
        missing.insert(2, f"{RESNET_FIRST_BLOCK} or {LITE_STEM} (the key encoder trunk)")
    if missing:
        hint = ""
        if all(key.startswith("module.") for key in state):
            hint = " (every key starts with 'module.': strip that prefix from a DataParallel state dict)"
        raise CheckpointError(
            f"not an XMem state dict: {len(missing)} key(s) needed to infer the network are missing: "
            f"{', '.join(missing)}{hint}")
    assert variant is not None  # else it is listed as missing above
    preset = NetworkSpec.preset(variant)
    transform = state.get("decoder.hidden_update.transform.weight")
    update = state.get("decoder.hidden_update.g16_conv.weight")
    try:
        return NetworkSpec(
            key_dim=state["key_proj.key_proj.weight"].shape[0],
            value_dim=state["value_encoder.fuser.block2.conv2.weight"].shape[0],
            hidden_dim=0 if transform is None else transform.shape[0] // 3,
            variant=variant,
            decoder_dims=(state["decoder.fuser.block2.conv2.weight"].shape[0],
                          state["decoder.up_16_8.out_conv.conv2.weight"].shape[0],
                          state["decoder.up_8_4.out_conv.conv2.weight"].shape[0]),
            update_dim=preset.update_dim if update is None else update.shape[0],
        )
    except (ValueError, IndexError) as error:
        raise CheckpointError(f"not an XMem state dict: inconsistent sizes ({error})") from error


def key_encoder_variant(state: Mapping[str, torch.Tensor]) -> Variant | None:
    """"official" (ResNet-50 bottlenecks), "small" (ResNet-18 basic blocks), "lite" (EfficientNet-Lite0)."""
    if LITE_STEM in state:
        return "lite"
    if RESNET_FIRST_BLOCK in state:
        return "official" if "key_encoder.res2.0.conv3.weight" in state else "small"
    return None


def pad_single_object(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give a single-object checkpoint's value_encoder.conv1 a zero fifth input channel (official loader)."""
    weight = state.get(VALUE_CONV1)
    if weight is None or weight.dim() != 4 or weight.shape[1] != SINGLE_OBJECT_CHANNELS:
        return state
    padded = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])], dim=1)
    return {**state, VALUE_CONV1: padded}


def layout_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected, mis-shaped and non-float keys, each kind as one line with a count."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shaped = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    typed = [f"{k} ({state[k].dtype})" for k in expected
             if k in state and expected[k].is_floating_point() and not state[k].is_floating_point()]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", shaped),
                         ("not floating point", typed)):
        if items:
            more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            problems.append(f"{len(items)} key(s) {label}: {', '.join(items[:MAX_LISTED])}{more}")
    return problems


def load_network(
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor], device: str | torch.device = "cpu",
    *, fast: bool = True,
) -> XMemNetwork:
    """Build the network the checkpoint describes, load it strictly and return it in eval mode on `device`.

    fast=True applies the default inference rewrites (`workers.xmem.acceleration`); fast=False returns the
    reference network, untouched, which is what training and checkpoint tools must use.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = as_state_dict(path_or_state_dict, "the given mapping")
        source = "the given state dict"
    else:
        state = read_state_dict(path_or_state_dict)
        source = str(path_or_state_dict)
    state = pad_single_object(state)
    spec = spec_from_state_dict(state)
    network = empty_network(spec)
    problems = layout_problems(network.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"{source} does not match the XMem layout it implies ({spec}):\n  " + "\n  ".join(problems))
    network.load_state_dict(state, strict=True)
    network = network.to(device).eval()
    if fast:
        from workers.xmem.acceleration import accelerate

        network = accelerate(network)
    return network


def save_state_dict(network: XMemNetwork, path: str | Path) -> Path:
    """Write the official format (a plain dict of contiguous CPU tensors) atomically; returns the path."""
    from workers.xmem.acceleration import is_inference_only

    if is_inference_only(network):
        raise ValueError("this network was rewritten for inference (load_network(fast=True)); "
                         "save the reference network (load_network(..., fast=False))")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in network.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    return path
