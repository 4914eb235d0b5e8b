"""InferenceCore: XMem's per-frame procedure for one video, on top of a stateless network.

The caller gives normalised frames (3, H, W) and, on frames that introduce objects, one-hot masks
(N, H, W) over every object seen so far; the core pads to multiples of 16, decides which network steps
to run, keeps the memory, and returns probabilities (1 + N, H, W), background first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from workers.xmem.aggregate import aggregate
from workers.xmem.config import InferenceConfig
from workers.xmem.memory import MemoryManager
from workers.xmem.network import XMemNetwork
from workers.xmem.padding import pad, padding_for, unpad


class InferenceCore:
    """Segments one video frame by frame; objects may be added on any frame with a mask."""

    def __init__(self, network: XMemNetwork, config: InferenceConfig | Mapping[str, Any], *,
                 fast: bool = True) -> None:
        """`fast` reads memory through the sparse top-k readout (float-rounding-level differences from the
        dense reference readout, and much less work on large memories); fast=False is the reference path,
        operation for operation the official code's."""
        self.network = network
        self.fast = fast
        self.config = config if isinstance(config, InferenceConfig) else InferenceConfig.from_mapping(config)
        self.all_labels: list[int] = []
        self.clear_memory()

    def clear_memory(self) -> None:
        """Forget everything: the next frame is frame 0 again and must carry a mask."""
        self.curr_ti = -1
        self.last_mem_ti = 0
        self.last_deep_update_ti = -self.config.deep_update_every
        self.memory = MemoryManager(self.config, self.network.spec.hidden_dim, fast=self.fast)

    def set_all_labels(self, labels: list[int]) -> None:
        """Declare every object label (1-based, ascending) known so far, before a step that adds objects."""
        self.all_labels = list(labels)

    def state_dict(self) -> dict:
        """The per-video state: frame counters, labels and memory; with the config it was made under,
        because memory made under other options (top_k, long-term bounds) would not continue identically."""
        return {
            "config": dataclasses.asdict(self.config),
            "curr_ti": self.curr_ti,
            "last_mem_ti": self.last_mem_ti,
            "last_deep_update_ti": self.last_deep_update_ti,
            "all_labels": list(self.all_labels),
            "memory": self.memory.state_dict(),
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Continue a video from `state_dict`: the next `step` is frame curr_ti + 1, as if never stopped."""
        if state["config"] != dataclasses.asdict(self.config):
            raise ValueError(f"checkpoint made with inference options {state['config']}, "
                             f"this core has {dataclasses.asdict(self.config)}")
        self.clear_memory()
        self.memory.load_state_dict(state["memory"], device)
        self.curr_ti = state["curr_ti"]
        self.last_mem_ti = state["last_mem_ti"]
        self.last_deep_update_ti = state["last_deep_update_ti"]
        self.all_labels = list(state["all_labels"])

    def memory_stats(self) -> dict:
        """WM / LT element counts (total and per object group) and objects with sensory memory."""
        return self.memory.stats()

    @torch.inference_mode()
    def step(
        self, image: Tensor, mask: Tensor | None = None, valid_labels: list[int] | None = None,
        end: bool = False,
    ) -> Tensor:
        """One frame: image (3, H, W) normalised; mask (N, H, W) over all labels or None; valid_labels = the
        labels this mask introduces (None = all); end = last frame. Returns (1 + N, H, W) probabilities."""
        self.check_inputs(image, mask)
        self.curr_ti += 1
        padding = padding_for(*image.shape[-2:])
        padded = pad(image, padding)[None]
        config = self.config
        is_mem_frame = (self.curr_ti - self.last_mem_ti >= config.mem_every or mask is not None) and not end
        covers_all = valid_labels is not None and len(self.all_labels) == len(valid_labels)
        need_segment = self.curr_ti > 0 and not covers_all
        if config.deep_update_sync:
            is_deep_update = is_mem_frame
        else:
            is_deep_update = self.curr_ti - self.last_deep_update_ti >= config.deep_update_every and not end
        is_normal_update = (not config.deep_update_sync or not is_deep_update) and not end

        key, shrinkage, selection, f16, f8, f4 = self.network.encode_key(
            padded, need_shrinkage=is_mem_frame, need_selection=config.enable_long_term or need_segment)
        prob = None
        if need_segment:
            memory_readout = self.memory.match_memory(key, selection)[None]
            hidden, _, segmented = self.network.segment(
                f16, f8, f4, self.memory.hidden, memory_readout, update_hidden=is_normal_update)
            prob = segmented[0]
            if is_normal_update:
                self.memory.set_hidden(hidden)
        if mask is not None:
            prob = self.merge_mask(pad(mask, padding), prob, valid_labels)
            self.memory.create_hidden_state(len(self.all_labels), key)
        assert prob is not None, "a frame without a mask is segmented from memory"
        if is_mem_frame:
            assert shrinkage is not None, "encode_key computes it on memory frames"
            value, hidden = self.network.encode_value(
                padded, f16, self.memory.hidden, prob[None, 1:], deep_update=is_deep_update)
            self.memory.add_memory(
                key, shrinkage, value, self.all_labels, selection if config.enable_long_term else None)
            self.last_mem_ti = self.curr_ti
            if is_deep_update:
                self.memory.set_hidden(hidden)
                self.last_deep_update_ti = self.curr_ti
        return unpad(prob, padding)

    def merge_mask(self, mask: Tensor, prob: Tensor | None, valid_labels: list[int] | None) -> Tensor:
        """Aggregate a padded mask (N, H, W) into (1 + N, H, W). Objects the mask does not introduce keep
        their prediction from `prob` (1 + N_mem, H, W), cleared where the mask has an object."""
        if prob is not None and valid_labels is not None:
            predicted = prob[1:].to(mask.dtype) * (mask.sum(dim=0) <= 0.5)
            kept = [i for i in range(predicted.shape[0]) if i + 1 not in valid_labels]
            if kept:
                mask = mask.clone()
                mask[kept] = predicted[kept]
        return aggregate(mask, dim=0)

    def check_inputs(self, image: Tensor, mask: Tensor | None) -> None:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
        if mask is None:
            if self.curr_ti < 0:
                raise ValueError("the first frame of a video needs a mask")
            return
        if mask.dim() != 3 or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask must be (N, H, W) with the image's H, W; got {tuple(mask.shape)} "
                             f"for an image of {tuple(image.shape)}")
        if mask.shape[0] != len(self.all_labels):
            raise ValueError(f"mask has {mask.shape[0]} channels but {len(self.all_labels)} labels are set "
                             "(call set_all_labels with every label first)")
