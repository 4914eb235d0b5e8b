"""AutoConfig: every threshold and interval of auto mode, with its unit; the one place defaults live.

The daemon's `auto` config section (streamer/config.py) takes its defaults from `AutoConfig()` and builds
one with `AutoSection.auto_config()`, as the `xmem` section does with InferenceConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

ReseedPolicy = Literal["reset", "memory"]
RESEED_POLICIES: tuple[str, ...] = ("reset", "memory")


@dataclass(frozen=True)
class AutoConfig:
    """How TMO seeds XMem and when it re-seeds it. Fractions are of the frame's pixel count."""

    stable_frames: int = 3
    """Seeding: consecutive TMO frames (counted in frames processed by TMO) that must each be plausible
    and agree with the one before (IoU >= stable_iou) before their mask seeds XMem."""
    stable_iou: float = 0.7
    """Seeding and watching: IoU (0-1) between consecutive TMO masks for TMO to count as stable."""
    min_area: float = 0.005
    """Smallest plausible object area, fraction (0-1) of the frame; an XMem mask below it has collapsed."""
    max_area: float = 0.6
    """Largest plausible object area, fraction (0-1) of the frame (larger: TMO took the background)."""
    min_confidence: float = 0.7
    """Mean foreground probability (0-1) of TMO inside its own mask for TMO to count as confident."""
    check_every: int = 5
    """Watching: frames between TMO checks of XMem's mask while tracking (1 = every frame)."""
    drift_iou: float = 0.5
    """Watching: IoU (0-1) between XMem's and TMO's masks below which a check counts as drift."""
    drift_checks: int = 2
    """Watching: consecutive drifting checks (TMO stable and confident) before XMem is re-seeded."""
    cut_threshold: float = 0.11
    """Scene cut: mean absolute difference (0-1 grey levels) of consecutive frames' grey thumbnails above
    which a cut is declared; XMem is dropped and TMO searches again; 1 or more: never. On the DAVIS-2016
    dev clips consecutive frames differ by at most 0.075 and first frames of different clips by at least
    0.135 (median 0.21)."""
    thumbnail: int = 32
    """Scene cut: side in pixels of the square grey thumbnail frames are compared at."""
    component_fraction: float = 0.2
    """Mask cleaning: connected components smaller than this fraction (0-1) of the largest are dropped."""
    reseed: ReseedPolicy = "reset"
    """Re-seeding on drift or collapse: "reset" clears XMem's memory and starts again from TMO's mask;
    "memory" adds TMO's mask as a memory frame and keeps the rest of the memory. Reset is the default: on
    held-out DAVIS-2016 camel, car-roundabout and dog (benchmarks/auto_compare.py, bundled models, 240p)
    it scored J&F 65.8 against 65.2 for memory with the previous bundled XMem (76.0 both with the current
    one: no re-seed happened), and it cannot keep a wrong object alive in memory."""
    objects: int = 1
    """Objects to seed: 1 = all kept components as one object; N > 1 = the N largest connected
    components as objects 1..N, largest first."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("stable_frames", "check_every", "drift_checks", "objects"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.thumbnail < 4:
            problems.append("thumbnail must be at least 4 pixels")
        for name in ("stable_iou", "min_area", "max_area", "min_confidence", "drift_iou",
                     "component_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be between 0 and 1")
        if self.min_area >= self.max_area:
            problems.append("min_area must be below max_area")
        if self.cut_threshold <= 0:
            problems.append("cut_threshold must be above 0")
        if self.reseed not in RESEED_POLICIES:
            problems.append(f"reseed must be one of {', '.join(RESEED_POLICIES)}")
        if self.objects > 255:
            problems.append("objects must be at most 255")
        if problems:
            raise ValueError("invalid auto options: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> AutoConfig:
        """From a mapping of field names (unknown names are a ValueError naming them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown auto options {unknown}; known: {sorted(known)}")
        return cls(**values)
