"""Shared by the auto-mode tests: synthetic clips with a bright object on a dark textured background, and
`BrightObjectTMO`, a real implementation of TMO's interface for auto mode that finds the primary object by
thresholding brightness (so seeding logic is tested on known masks, without a trained TMO)."""

from __future__ import annotations

import numpy as np

from workers.tmo.session import TMOResult

H, W = 48, 64
BRIGHT = 200
"""Grey level above which BrightObjectTMO calls a pixel foreground."""


class BrightObjectTMO:
    """TMO's per-frame interface: foreground = pixels brighter than BRIGHT; probability 0.95 there, 0.05
    elsewhere. Records the motion frame it was given on each step, as TMO would use it for flow."""

    def __init__(self) -> None:
        self.previous: np.ndarray | None = None
        self.calls = 0
        self.motion_frames: list[np.ndarray | None] = []

    def step(self, frame: np.ndarray) -> TMOResult:
        self.calls += 1
        self.motion_frames.append(self.previous)
        used_flow = self.previous is not None
        self.previous = frame
        mask = (frame.mean(axis=2) > BRIGHT).astype(np.uint8)
        foreground = np.where(mask == 1, 0.95, 0.05).astype(np.float32)
        return TMOResult(mask, foreground, used_flow)


def background(seed: int, low: int, high: int, frames: int) -> np.ndarray:
    """A random texture large enough to slide one pixel per frame for `frames` frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, size=(H + frames, W + frames, 3), dtype=np.uint8)


def clip(frames: int, *, appear: int = 0, cut: int | None = None, size: int = 12) -> list[np.ndarray]:
    """`frames` frames of a dark texture sliding down-right; a bright square (side `size`) moving right
    from frame `appear`; from frame `cut` on (a scene cut) a brighter texture and the square elsewhere."""
    first = background(1, 0, 80, frames)
    second = background(2, 90, 170, frames)
    out = []
    for t in range(frames):
        after_cut = cut is not None and t >= cut
        texture = second if after_cut else first
        frame = texture[t : t + H, t : t + W].copy()
        if t >= appear:
            top, left = (28, 40 - (t % 8)) if after_cut else (8, 4 + t % 20)
            frame[top : top + size, left : left + size] = 240
        out.append(frame)
    return out


def square_mask(frame: np.ndarray) -> np.ndarray:
    """The true object of a `clip` frame."""
    return (frame.mean(axis=2) > BRIGHT).astype(np.uint8)
