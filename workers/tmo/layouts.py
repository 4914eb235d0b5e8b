"""The key layouts TMO checkpoints were released in, and the mapping to TMONetwork's own names.

* prefix: "current" (`vos.app_encoder.*`, `vos.mo_encoder.*`, `vos.decoder.*`, saved from the model) or
  "wacv" (`vos.img_encoder.*`, `vos.flow_encoder.*`), each with or without a DataParallel `module.` prefix;
* mitb1 backbones: Hugging Face names of transformers 4.x (`encoder.block.i.j`, `encoder.patch_embeddings.i`,
  what TMO pins and what TMONetwork uses) or 5.x (`encoder.stages.i.{patch_embeddings,blocks.j,layer_norm}`
  with `layernorm_before/after`, `q/k/v/o_proj` and `fc1/fc2`).
Both directions are plain renames, so any layout can be written (tests, conversions) and read back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

Prefix = Literal["current", "wacv"]
Naming = Literal["hf4", "hf5"]
ENCODER_NAMES: dict[Prefix, tuple[str, str]] = {"current": ("app_encoder", "mo_encoder"),
                                             "wacv": ("img_encoder", "flow_encoder")}
BACKBONE = "backbone.encoder."
HF5_BLOCK_PARTS = (
    # (transformers 5.x name inside a block, 4.x name)
    ("layernorm_before.", "layer_norm_1."),
    ("layernorm_after.", "layer_norm_2."),
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("attention.sr.", "attention.self.sr."),
    ("attention.layer_norm.", "attention.self.layer_norm."),
    ("mlp.fc1.", "mlp.dense1."),
    ("mlp.fc2.", "mlp.dense2."),
    ("mlp.dwconv.", "mlp.dwconv."),
)
HF5_STAGE = re.compile(r"stages\.(\d+)\.(patch_embeddings\.|layer_norm\.|blocks\.(\d+)\.)(.*)")
HF4_PART = re.compile(r"(patch_embeddings|layer_norm)\.(\d+)\.(.*)|block\.(\d+)\.(\d+)\.(.*)")


@dataclass(frozen=True)
class Layout:
    """One released layout: which encoder names, whether `module.` leads, which HF naming (mitb1 only)."""

    prefix: Prefix = "current"
    data_parallel: bool = False
    naming: Naming = "hf4"

    def describe(self) -> str:
        return f"{self.prefix}{' with module.' if self.data_parallel else ''}, {self.naming} names"


def detect_layout(keys: list[str]) -> Layout | None:
    """The layout the keys are in, or None when no key starts like a TMO checkpoint's."""
    data_parallel = bool(keys) and all(key.startswith("module.") for key in keys)
    bare = [key.removeprefix("module.") if data_parallel else key for key in keys]
    prefix = next((name for name, (app, _) in ENCODER_NAMES.items()
                   if any(key.startswith(f"vos.{app}.") for key in bare)), None)
    if prefix is None:
        return None
    hf5 = any(f".{BACKBONE}stages." in key for key in bare)
    return Layout(prefix, data_parallel, "hf5" if hf5 else "hf4")


def hf5_to_hf4(rest: str) -> str:
    """A backbone key after `backbone.encoder.` from 5.x to 4.x names (unknown names pass unchanged)."""
    match = HF5_STAGE.fullmatch(rest)
    if match is None:
        return rest
    stage, part, block, tail = match.groups()
    if block is None:
        return f"{part}{stage}.{tail}"
    for new, old in HF5_BLOCK_PARTS:
        if tail.startswith(new):
            return f"block.{stage}.{block}.{old}{tail[len(new):]}"
    return f"block.{stage}.{block}.{tail}"


def hf4_to_hf5(rest: str) -> str:
    """The inverse of hf5_to_hf4."""
    match = HF4_PART.fullmatch(rest)
    if match is None:
        return rest
    part, stage, tail, block_stage, block, block_tail = match.groups()
    if part is not None:
        return f"stages.{stage}.{part}.{tail}"
    for new, old in HF5_BLOCK_PARTS:
        if block_tail.startswith(old):
            return f"stages.{block_stage}.blocks.{block}.{new}{block_tail[len(old):]}"
    return f"stages.{block_stage}.blocks.{block}.{block_tail}"


def rename_backbone(key: str, convert: Callable[[str], str]) -> str:
    head, found, rest = key.partition(BACKBONE)
    return f"{head}{found}{convert(rest)}" if found else key


def to_network_keys(state: Mapping[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """Checkpoint keys in `layout` -> TMONetwork keys (`app_encoder.*`, `mo_encoder.*`, `decoder.*`).

    Keys outside the layout's `vos.` tree keep their names, so the strict check reports them as unexpected.
    """
    app, motion = ENCODER_NAMES[layout.prefix]
    renamed = {}
    for key, tensor in state.items():
        name = key.removeprefix("module.") if layout.data_parallel else key
        if name.startswith("vos."):
            name = name.removeprefix("vos.")
            for old, new in ((app, "app_encoder"), (motion, "mo_encoder")):
                if name.startswith(f"{old}."):
                    name = new + name[len(old):]
            if layout.naming == "hf5":
                name = rename_backbone(name, hf5_to_hf4)
        renamed[name] = tensor
    return renamed


def checkpoint_key(key: str, layout: Layout) -> str:
    """One TMONetwork key as the checkpoints of `layout` name it."""
    app, motion = ENCODER_NAMES[layout.prefix]
    if layout.naming == "hf5":
        key = rename_backbone(key, hf4_to_hf5)
    for old, new in (("app_encoder", app), ("mo_encoder", motion)):
        if key.startswith(f"{old}."):
            key = new + key[len(old):]
    return f"{'module.' if layout.data_parallel else ''}vos.{key}"


def from_network_keys(state: Mapping[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """TMONetwork keys -> the checkpoint keys of `layout` (what a release in that layout would hold)."""
    return {checkpoint_key(key, layout): tensor for key, tensor in state.items()}
