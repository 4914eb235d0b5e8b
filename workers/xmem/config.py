"""InferenceConfig: XMem's inference options under their official names, with the official defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InferenceConfig:
    """Options of the inference core and its memory manager (defaults are those of XMem's eval.py).

    Attributes:
        mem_every: a frame becomes a working-memory frame when this many frames have passed since the last
            memory frame (annotated frames always become memory frames and restart the count).
        top_k: each query position reads from its k most similar memory elements (top-k softmax); a memory
            (or object group) with fewer elements uses all of them.
        deep_update_every: negative = deep-update the sensory memory with the value encoder on every memory
            frame and use the decoder's update on the other frames (synchronised, XMem's default); zero or
            positive = deep-update on a memory frame at least this many frames after the last deep update,
            and run the decoder's update on every segmented frame.
        enable_long_term: compress working memory into long-term prototypes (XMem); off = XMem without
            long-term memory, where working memory keeps every memory frame and grows with the video, as in
            the official code (the paper's ablation; memory is bounded only with long-term memory on).
        enable_long_term_count_usage: count how much each long-term element is read, so the least used can
            be evicted when long-term memory is full. XMem's eval.py decides this per video: on iff long-term
            is on and num_frames / (max_mid_term_frames - min_mid_term_frames) * num_prototypes >=
            max_long_term_elements (`workers.evaluation.runner.count_usage`). The GUI always counts.
            When off and long-term memory is full, the oldest prototypes are evicted instead (official:
            an error).
        max_mid_term_frames: T_max, working-memory size in frames that triggers a compression.
        min_mid_term_frames: T_min, working-memory size in frames kept after a compression (the first frame
            plus the most recent T_min - 1 memory frames).
        num_prototypes: P, long-term prototypes made per compression (fewer if there are fewer candidates).
        max_long_term_elements: bound on long-term memory elements; before a compression would exceed it the
            least used (or, without usage counting, the oldest) elements are evicted.
    """

    mem_every: int = 5
    top_k: int = 30
    deep_update_every: int = -1
    enable_long_term: bool = True
    enable_long_term_count_usage: bool = True
    max_mid_term_frames: int = 10
    min_mid_term_frames: int = 5
    num_prototypes: int = 128
    max_long_term_elements: int = 10000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = bool if field.type == "bool" else int
            if type(value) is not expected:
                raise TypeError(f"{field.name} must be {expected.__name__}, got {value!r}")
        for name in ("mem_every", "top_k", "min_mid_term_frames", "num_prototypes", "max_long_term_elements"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_mid_term_frames >= self.max_mid_term_frames:
            raise ValueError(
                f"min_mid_term_frames ({self.min_mid_term_frames}) must be smaller than "
                f"max_mid_term_frames ({self.max_mid_term_frames})")
        if self.num_prototypes > self.max_long_term_elements:
            raise ValueError(
                f"num_prototypes ({self.num_prototypes}) must not exceed max_long_term_elements "
                f"({self.max_long_term_elements}): one compression adds that many elements")

    @property
    def deep_update_sync(self) -> bool:
        """Whether deep updates happen exactly on memory frames (deep_update_every < 0)."""
        return self.deep_update_every < 0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> InferenceConfig:
        """Build from a dict with XMem's option names; missing keys take the defaults, unknown keys raise."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown XMem inference options {unknown}; known: {sorted(known)}")
        return cls(**dict(options))
