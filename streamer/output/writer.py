"""Job outputs: overlay MP4 (H.264), palette PNG masks, RLE JSON lines; written atomically and in order.

:class:`OutputWriter` takes ``(index, RGB frame at source size or None, index mask)`` in any order and
writes each index exactly once, in index order. This module knows nothing about ZeroMQ or Redis; the
writer process is a thin loop around it.

Ordering: frames that arrive early wait in a bounded reorder buffer; an index that was already written
or is already buffered is a duplicate and ignored (a restarted worker resends from frame 0). When the
buffer is full and the next index still has not come, the missing indexes are given up as a gap
(recorded in the report) and writing continues; a frame that shows up after its gap was given up is
counted as late and dropped, since the outputs are append-only.

Atomic outputs: nothing exists under a final name before ``close()``. The overlay is written to
``<overlay>.part``, the RLE lines to ``<rle>.part``, the PNGs into the directory ``<masks_dir>.part``;
``close()`` finishes the MP4 (moov moved to the front, ``+faststart``) and renames all three into place
(an existing output of an earlier run is replaced). ``abort()`` deletes them.

Resuming a long batch job: each PNG is written to a temporary name and renamed as soon as its frame is
written, so after a crash ``<masks_dir>.part`` holds frames 0..N-1 complete. ``OutputWriter(...,
resume=True)`` keeps them and sets ``resume_from = N``; the RLE part file keeps its lines for those
frames. The overlay MP4 is not resumable (an unfinished MP4 has no index) and is re-encoded from frame
0: the caller sends frames 0..N-1 again, with ``mask=None`` to reuse the saved PNG (or with a mask, which
is then used for the overlay only). Without an overlay, writing continues directly at index N. The
caller can re-seed the model with the mask of frame N-1 (``read_index_mask``) instead of recomputing.
PNGs are durable against a process crash, not fsynced against power loss.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import cv2
import numpy as np

from streamer.masks import overlay, read_index_mask, rle_encode, write_index_mask

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
MASK_NAME = "{:05d}.png"


class WriterError(RuntimeError):
    """A frame that cannot be written (wrong shape, missing frame for the overlay, writer closed)."""


@dataclass
class WriterReport:
    """What happened, for the job result."""

    frames_written: int = 0
    duplicates: int = 0
    late: int = 0
    """Frames that arrived after their index had been given up as a gap."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """Missing index ranges, ``(first, last)`` inclusive."""
    resumed_from: int = 0
    outputs: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    """Seed and re-seed events of auto mode written with their frames (``{"kind", "frame", "reason"}``)."""

    @property
    def missing_frames(self) -> int:
        return sum(last - first + 1 for first, last in self.gaps)


@dataclass
class _Pending:
    frame: np.ndarray | None
    mask: np.ndarray | None
    event: dict | None = None


def _part(path: Path) -> Path:
    return path.with_name(path.name + PART_SUFFIX)


def durable_frames(masks_dir: str | Path) -> int:
    """How many masks ``0..N-1`` an interrupted run left complete in ``<masks_dir>.part``."""
    part = _part(Path(masks_dir))
    count = 0
    while (part / MASK_NAME.format(count)).is_file():
        count += 1
    return count


class _OverlayEncoder:
    """H.264 yuv420p MP4 at the source size (padded to even), timestamps from frame indexes."""

    def __init__(self, path: Path, fps: float, width: int, height: int, crf: int, preset: str) -> None:
        self.path = path
        self.rate = Fraction(fps).limit_denominator(1001)
        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": preset}
        self.pad = (height % 2, width % 2)

    def encode(self, index: int, rgb: np.ndarray) -> None:
        if any(self.pad):
            rgb = np.pad(rgb, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = index, 1 / self.rate
        self.container.mux(self.stream.encode(frame))

    def finish(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()

    def discard(self) -> None:
        try:
            self.container.close()
        except av.FFmpegError as error:  # an encoder that never got a frame may fail to write a trailer
            log.debug("closing discarded overlay %s: %s", self.path, error)


class OutputWriter:
    """Writes a job's outputs in index order, exactly once per index, under temporary names until ``close()``.

    Give ``out_dir`` for all three outputs under standard names (``overlay.mp4``, ``masks/``,
    ``masks.jsonl``), or any of ``overlay_path``, ``masks_dir``, ``rle_path`` for just those.
    ``source_size`` is ``(width, height)``; masks of another size are scaled to it (nearest neighbour).
    """

    def __init__(
        self,
        out_dir: str | Path | None = None,
        *,
        fps: float,
        source_size: tuple[int, int],
        overlay_path: str | Path | None = None,
        masks_dir: str | Path | None = None,
        rle_path: str | Path | None = None,
        alpha: float = 0.5,
        crf: int = 20,
        preset: str = "veryfast",
        reorder_window: int = 64,
        resume: bool = False,
        palette: np.ndarray | None = None,
    ) -> None:
        if out_dir is not None:
            out_dir = Path(out_dir)
            overlay_path = overlay_path or out_dir / "overlay.mp4"
            masks_dir = masks_dir or out_dir / "masks"
            rle_path = rle_path or out_dir / "masks.jsonl"
        if overlay_path is None and masks_dir is None and rle_path is None:
            raise ValueError("OutputWriter needs out_dir or one of overlay_path, masks_dir, rle_path")
        if not 0.0 <= alpha <= 1.0 or reorder_window < 1 or fps <= 0:
            raise ValueError(f"invalid writer settings: {alpha=}, {reorder_window=}, {fps=}")
        self.width, self.height = (int(v) for v in source_size)
        self.alpha, self.palette, self.reorder_window = alpha, palette, reorder_window
        self.overlay_path = Path(overlay_path) if overlay_path else None
        self.masks_dir = Path(masks_dir) if masks_dir else None
        self.rle_path = Path(rle_path) if rle_path else None
        self.report = WriterReport()
        self._pending: dict[int, _Pending] = {}
        self._closed = False

        self.resume_from = self._prepare_masks(resume)
        self._rle: IO[str] | None = self._open_rle() if self.rle_path else None
        self._overlay = None
        if self.overlay_path:
            self.overlay_path.parent.mkdir(parents=True, exist_ok=True)
            part = _part(self.overlay_path)
            self._overlay = _OverlayEncoder(part, fps, self.width, self.height, crf, preset)
        self.report.resumed_from = self.resume_from
        self.next_index = 0 if self._overlay else self.resume_from
        self.report.frames_written = self.next_index

    # ------------------------------------------------------------------------------------------ set-up

    def _prepare_masks(self, resume: bool) -> int:
        """Create (or, when resuming, keep) the masks part directory; returns how many masks are durable."""
        if self.masks_dir is None:
            return 0
        part = _part(self.masks_dir)
        if resume and part.is_dir():
            count = durable_frames(self.masks_dir)
            kept = {MASK_NAME.format(index) for index in range(count)}
            for stale in part.iterdir():  # temp files and masks after a hole are not trustworthy
                if stale.name not in kept:
                    stale.unlink()
            log.info("%s: resuming after %d durable masks", self.masks_dir, count)
            return count
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        return 0

    def _open_rle(self) -> IO[str]:
        assert self.rle_path is not None
        part = _part(self.rle_path)
        part.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if self.resume_from and part.is_file():
            for line in part.read_text().splitlines():
                try:
                    if json.loads(line)["frame"] < self.resume_from:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    break  # a line cut by the crash ends what can be kept
        handle = part.open("w")
        handle.writelines(kept)
        return handle

    # ------------------------------------------------------------------------------------------ writing

    @property
    def frames_written(self) -> int:
        return self.report.frames_written

    def write(self, index: int, frame: np.ndarray | None, mask: np.ndarray | None,
              event: dict | None = None) -> None:
        """Accept one frame in any order; writes everything that is now in order. `event` (auto mode's
        seed or re-seed on this frame) goes into the frame's RLE line as ``"event"`` and into the report."""
        if self._closed:
            raise WriterError("writer is closed")
        if index < self.next_index or index in self._pending:
            if index < self.next_index and not self._written(index):
                self.report.late += 1
                log.warning("frame %d arrived after it was given up as a gap; dropped", index)
            else:
                self.report.duplicates += 1
            return
        self._validate(index, frame, mask)
        self._pending[index] = _Pending(frame, mask, event)
        self._drain()
        if len(self._pending) > self.reorder_window:
            self._give_up_gap()

    def _validate(self, index: int, frame: np.ndarray | None, mask: np.ndarray | None) -> None:
        if index < 0:
            raise WriterError(f"frame index must be >= 0, got {index}")
        if mask is None and index >= self.resume_from:
            raise WriterError(f"frame {index}: a mask is required (only resumed frames reuse saved masks)")
        if mask is not None and (mask.dtype != np.uint8 or mask.ndim != 2):
            raise WriterError(f"frame {index}: masks are uint8 (H, W), got {mask.dtype} {mask.shape}")
        if self._overlay is not None:
            if frame is None:
                raise WriterError(f"frame {index}: the overlay video needs the RGB frame, got None")
            if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
                raise WriterError(
                    f"frame {index}: expected RGB uint8 {(self.height, self.width, 3)} at the source size, "
                    f"got {frame.dtype} {frame.shape}"
                )

    def _written(self, index: int) -> bool:
        return not any(first <= index <= last for first, last in self.report.gaps)

    def _drain(self) -> None:
        while self.next_index in self._pending:
            pending = self._pending.pop(self.next_index)
            self._commit(self.next_index, pending)
            self.next_index += 1

    def _give_up_gap(self) -> None:
        first_buffered = min(self._pending)
        self._record_gap(self.next_index, first_buffered - 1)
        self.next_index = first_buffered
        self._drain()

    def _record_gap(self, first: int, last: int) -> None:
        self.report.gaps.append((first, last))
        log.warning("frames %d-%d never arrived; writing continues without them", first, last)

    def _commit(self, index: int, pending: _Pending) -> None:
        resumed = index < self.resume_from
        mask = self._full_size(pending.mask) if pending.mask is not None else self._saved_mask(index)
        if self._overlay is not None:
            assert pending.frame is not None
            self._overlay.encode(index, overlay(pending.frame, mask, self.alpha, self.palette))
        if not resumed:
            if self.masks_dir is not None:
                part = _part(self.masks_dir)
                temporary = part / (MASK_NAME.format(index) + ".tmp")
                write_index_mask(temporary, mask, self.palette)
                os.replace(temporary, part / MASK_NAME.format(index))
            if self._rle is not None:
                record = _rle_record(index, mask)
                if pending.event is not None:
                    record["event"] = pending.event
                self._rle.write(json.dumps(record, separators=(",", ":")) + "\n")
                self._rle.flush()
            if pending.event is not None:
                self.report.events.append(pending.event)
        self.report.frames_written += 1

    def _full_size(self, mask: np.ndarray) -> np.ndarray:
        if mask.shape == (self.height, self.width):
            return mask
        return cv2.resize(mask, (self.width, self.height), interpolation=cv2.INTER_NEAREST)

    def _saved_mask(self, index: int) -> np.ndarray:
        if self.masks_dir is None:
            raise WriterError(f"frame {index}: no mask given and no saved masks to resume from")
        return read_index_mask(_part(self.masks_dir) / MASK_NAME.format(index))

    # ------------------------------------------------------------------------------------------ finishing

    def close(self, expected_frames: int | None = None) -> WriterReport:
        """Write what is buffered (gaps recorded), finish the files and move them to their final names."""
        if self._closed:
            raise WriterError("writer is already closed")
        while self._pending:
            self._give_up_gap()
        if expected_frames is not None and self.next_index < expected_frames:
            self._record_gap(self.next_index, expected_frames - 1)
        self._closed = True
        try:
            if self._overlay is not None:
                self._overlay.finish()
            if self._rle is not None:
                self._rle.close()
        except Exception:
            self._remove_parts()
            raise
        for final in (self.overlay_path, self.rle_path, self.masks_dir):
            if final is not None:
                _publish(_part(final), final)
                self.report.outputs.append(str(final))
        log.info("outputs complete: %d frames, %d duplicates ignored, gaps %s",
                 self.report.frames_written, self.report.duplicates, self.report.gaps or "none")
        return self.report

    def abort(self) -> None:
        """Drop everything written so far; final names are left as they were."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        if self._overlay is not None:
            self._overlay.discard()
        if self._rle is not None:
            self._rle.close()
        self._remove_parts()

    def _remove_parts(self) -> None:
        for final in (self.overlay_path, self.rle_path):
            if final is not None:
                _part(final).unlink(missing_ok=True)
        if self.masks_dir is not None:
            shutil.rmtree(_part(self.masks_dir), ignore_errors=True)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Close on success, abort on an exception (a job that failed leaves no outputs)."""
        if exc_type is None:
            if not self._closed:
                self.close()
        else:
            self.abort()


def _rle_record(index: int, mask: np.ndarray) -> dict:
    labels = [int(label) for label in np.unique(mask) if label]
    return {
        "frame": index,
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "objects": [{"id": label, "rle": rle_encode(mask == label)} for label in labels],
    }


def _publish(part: Path, final: Path) -> None:
    """Rename into place; an earlier complete output under the final name is replaced."""
    if part.is_dir():
        if final.exists():
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            part.rename(final)
            shutil.rmtree(old)
        else:
            part.rename(final)
    else:
        os.replace(part, final)


__all__ = ["OutputWriter", "WriterError", "WriterReport", "durable_frames"]
