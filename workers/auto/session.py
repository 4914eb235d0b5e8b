"""AutoSession: a video without a first mask, segmented by TMO-seeded XMem; TMOOnlySession: TMO alone.

States of an AutoSession:

* searching: TMO runs on every frame; the output is empty (no object). Once `stable_frames` TMO masks
  in a row are plausible (area bounds), confident, and each agrees with the one before (IoU), the last
  one, cleaned, seeds XMem: event ``seed`` (or ``reseed`` with reason ``cut`` after a scene cut).
* tracking: XMem segments every frame. Every `check_every` frames TMO runs too (its flow still comes
  from the frame just before). When TMO is confident and stable (agrees with its previous check) and
  XMem's mask has collapsed below `min_area`, or disagreed with TMO (IoU < `drift_iou`) on
  `drift_checks` checks in a row, TMO's mask re-seeds XMem by the `reseed` policy: event ``reseed``.
  "reset" starts XMem again on that frame; "memory" steps the same frame once more with TMO's mask as an
  anchor (a memory frame that overrides what XMem predicted, as an interactive correction would).
* A scene cut (grey thumbnails of consecutive frames differ by more than `cut_threshold`) drops XMem and
  TMO's motion and returns to searching: the first mask of the new scene is found the way the first one was.

`state_dict` / `load_state_dict` carry all of this (with XMem's own state) to another process, so a
checkpointed auto job continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from workers.auto import seed
from workers.auto.config import AutoConfig
from workers.tmo.session import TMOResult
from workers.xmem.session import VideoSession

STATE_FORMAT = 1
"""Version of `AutoSession.state_dict` / `TMOOnlySession.state_dict`; bumped when its layout changes."""

SEARCHING = "searching"
TRACKING = "tracking"


class PrimaryObjectSegmenter(Protocol):
    """What auto mode needs from TMO (workers.tmo.session.TMOSession implements it): one frame in, a
    binary mask and foreground probabilities out; `previous` is the frame its motion input starts from."""

    previous: np.ndarray | None

    def step(self, frame: np.ndarray) -> TMOResult: ...


@dataclass(frozen=True)
class AutoResult:
    """The segmentation of one frame in auto (or tmo) mode.

    Attributes:
        index_mask: uint8 (H, W) object labels (0 = background; all 0 while searching).
        state: "searching" or "tracking" after this frame.
        event: ``{"kind": "seed" | "reseed", "frame": index, "reason": ...}`` when this frame (re)seeded
            XMem, else None.
        used_flow: whether TMO ran on this frame with a flow image as its motion input.
    """

    index_mask: np.ndarray
    state: str
    event: dict[str, Any] | None = None
    used_flow: bool = False


class AutoSession:
    """One video through TMO (to find and re-find the object) and XMem (to follow it)."""

    def __init__(self, tmo: PrimaryObjectSegmenter, video: VideoSession, config: AutoConfig | None = None
                 ) -> None:
        self.tmo = tmo
        self.video = video
        self.config = config or AutoConfig()
        self.state = SEARCHING
        self.frame = 0
        """Index of the next frame."""
        self.stable = 0
        """Searching: TMO frames in a row that passed; tracking: unused."""
        self.drift = 0
        """Tracking: checks in a row on which XMem disagreed with a stable, confident TMO."""
        self.previous_tmo: np.ndarray | None = None
        """TMO's last cleaned mask (the one stability is measured against), or None."""
        self.previous_frame: np.ndarray | None = None
        self.previous_thumbnail: np.ndarray | None = None
        self.seeds = 0
        """Seeds and re-seeds so far."""
        self.last_seed: int | None = None
        self.pending_reason = "first"
        """Why the next seed from searching happens: "first", or "cut" after a scene cut."""

    def step(self, frame: np.ndarray, *, end: bool = False) -> AutoResult:
        """Segment the next frame; `end` marks the last one (XMem then adds no memory)."""
        config = self.config
        index = self.frame
        thumbnail = seed.thumbnail(frame, config.thumbnail)
        if seed.is_cut(self.previous_thumbnail, thumbnail, config):
            self.restart_search("cut")
        self.previous_thumbnail = thumbnail
        try:
            if self.state == SEARCHING:
                return self.search(frame, index, end)
            return self.track(frame, index, end)
        finally:
            self.previous_frame = frame
            self.frame += 1

    def restart_search(self, reason: str) -> None:
        """Drop XMem's objects and TMO's motion and stability: the next seed comes from a new search."""
        if self.state == TRACKING:
            self.video.reset()
        self.state = SEARCHING
        self.stable = 0
        self.drift = 0
        self.previous_tmo = None
        self.previous_frame = None
        self.pending_reason = reason

    def run_tmo(self, frame: np.ndarray) -> tuple[TMOResult, np.ndarray, bool, bool]:
        """TMO on `frame` with motion from the previous frame: (result, cleaned mask, plausible and
        confident, agrees with the previous cleaned mask)."""
        self.tmo.previous = self.previous_frame
        result = self.tmo.step(frame)
        config = self.config
        cleaned = seed.clean_mask(result.index_mask, config)
        good = seed.plausible(cleaned, config) and seed.confident(result.foreground, cleaned, config)
        agrees = self.previous_tmo is not None and seed.iou(self.previous_tmo, cleaned) >= config.stable_iou
        self.previous_tmo = cleaned
        return result, cleaned, good, agrees

    def search(self, frame: np.ndarray, index: int, end: bool) -> AutoResult:
        result, _, good, agrees = self.run_tmo(frame)
        self.stable = 0 if not good else (self.stable + 1 if agrees else 1)
        if self.stable < self.config.stable_frames:
            return AutoResult(np.zeros(frame.shape[:2], dtype=np.uint8), SEARCHING, None, result.used_flow)
        objects = seed.object_mask(result.index_mask, self.config)
        reseed = self.pending_reason != "first"
        event = self.record_seed("reseed" if reseed else "seed", index, self.pending_reason)
        self.state = TRACKING
        self.drift = 0
        output = self.video.step(frame, objects, end=end)
        return AutoResult(output.index_mask, TRACKING, event, result.used_flow)

    def track(self, frame: np.ndarray, index: int, end: bool) -> AutoResult:
        config = self.config
        assert self.last_seed is not None, "tracking starts with a seed"
        if (index - self.last_seed) % config.check_every != 0:
            return AutoResult(self.video.step(frame, end=end).index_mask, TRACKING)
        result, cleaned, good, agrees = self.run_tmo(frame)
        tracked = self.video.step(frame, end=end)
        reason = None
        if good and agrees:
            if seed.area_fraction(tracked.index_mask) < config.min_area:
                reason = "collapse"
            elif seed.iou(tracked.index_mask, cleaned) < config.drift_iou:
                self.drift += 1
                reason = "drift" if self.drift >= config.drift_checks else None
            else:
                self.drift = 0
        if reason is None:
            return AutoResult(tracked.index_mask, TRACKING, None, result.used_flow)
        event = self.record_seed("reseed", index, reason)
        self.drift = 0
        objects = seed.object_mask(result.index_mask, config)
        if config.reseed == "reset":
            self.video.reset()
            output = self.video.step(frame, objects, end=end)
        else:
            output = self.video.step(frame, objects, end=end, anchor=True)
        return AutoResult(output.index_mask, TRACKING, event, result.used_flow)

    def record_seed(self, kind: str, index: int, reason: str) -> dict[str, Any]:
        self.seeds += 1
        self.last_seed = index
        return {"kind": kind, "frame": index, "reason": reason}

    def state_dict(self) -> dict:
        """Everything needed to continue in another process (tensors and plain types, for
        weights_only loading): the auto state, TMO's motion frame, and XMem's state while tracking."""
        return {
            "format": STATE_FORMAT, "mode": "auto", "state": self.state, "frame": self.frame,
            "stable": self.stable, "drift": self.drift, "seeds": self.seeds, "last_seed": self.last_seed,
            "pending_reason": self.pending_reason,
            "previous_tmo": _tensor(self.previous_tmo), "previous_frame": _tensor(self.previous_frame),
            "previous_thumbnail": _tensor(self.previous_thumbnail),
            "video": self.video.state_dict() if self.state == TRACKING else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict`; built with the same networks, options and size."""
        _check_format(state, "auto")
        self.state = state["state"]
        self.frame = state["frame"]
        self.stable = state["stable"]
        self.drift = state["drift"]
        self.seeds = state["seeds"]
        self.last_seed = state["last_seed"]
        self.pending_reason = state["pending_reason"]
        self.previous_tmo = _array(state["previous_tmo"])
        self.previous_frame = _array(state["previous_frame"])
        self.previous_thumbnail = _array(state["previous_thumbnail"])
        if state["video"] is not None:
            self.video.load_state_dict(state["video"])
        else:
            self.video.reset()


class TMOOnlySession:
    """Mode ``tmo``: TMO's own per-frame masks, no XMem (the interface of AutoSession)."""

    def __init__(self, tmo: PrimaryObjectSegmenter) -> None:
        self.tmo = tmo
        self.frame = 0
        self.seeds = 0
        self.last_seed: int | None = None

    def step(self, frame: np.ndarray, *, end: bool = False) -> AutoResult:
        result = self.tmo.step(frame)
        self.frame += 1
        return AutoResult(result.index_mask, TRACKING, None, result.used_flow)

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "mode": "tmo", "frame": self.frame,
                "previous_frame": _tensor(self.tmo.previous)}

    def load_state_dict(self, state: dict) -> None:
        _check_format(state, "tmo")
        self.frame = state["frame"]
        self.tmo.previous = _array(state["previous_frame"])


def _check_format(state: dict, mode: str) -> None:
    if state.get("format") != STATE_FORMAT or state.get("mode") != mode:
        raise ValueError(f"session state format {state.get('format')!r} mode {state.get('mode')!r}, "
                         f"expected {STATE_FORMAT} {mode!r}")


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array).copy())


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.numpy()
