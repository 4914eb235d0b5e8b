"""`vosd segment`: one video, segmented on this machine, with a progress bar.

No daemon and no Redis: three threads in one process. A reader decodes frames ahead of the model, the
model runs in the calling thread, and a writer encodes the overlay and saves masks behind it, so decoding
and encoding overlap with inference. Both queues are bounded, so memory stays flat on long videos.
Frames go to the model at source resolution; the session resizes them exactly as XMem's eval does and
returns masks at source resolution.

Without a mask the run is in auto mode (workers/auto): TMO finds the primary object and seeds XMem; frames
before the seed are written with no object, and every seed and re-seed is reported (RLE lines, summary).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from streamer.ingest.sources import DecodedFrame, Source
from streamer.output.writer import OutputWriter, WriterReport

if TYPE_CHECKING:
    from rich.console import Console

    from workers.auto.session import AutoSession, TMOOnlySession
    from workers.xmem.session import VideoSession

QUEUE_FRAMES = 8
"""Frames buffered between reader, model and writer (each way)."""

_END = object()


@dataclass(frozen=True)
class SegmentResult:
    """What a local run produced."""

    frames: int
    seconds: float
    report: WriterReport
    mode: str = "xmem"

    @property
    def events(self) -> list[dict]:
        """Seeds and re-seeds of auto mode, in frame order."""
        return self.report.events

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _Failure:
    """An exception raised in a helper thread, handed to the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _read_ahead(source: Source, frames: queue.Queue, stop: threading.Event) -> None:
    try:
        for frame in source:
            while not stop.is_set():
                try:
                    frames.put(frame, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        frames.put(_END)
    except BaseException as error:  # handed to the main thread, which re-raises it
        frames.put(_Failure(error))


def _frames_with_end_flag(frames: queue.Queue) -> Iterator[tuple[DecodedFrame, bool]]:
    """Yield (frame, is_last), looking one frame ahead so the model knows the last frame."""
    current = frames.get()
    while True:
        if isinstance(current, _Failure):
            raise current.error
        if current is _END:
            return
        following = frames.get()
        yield current, following is _END
        current = following


def _write_behind(writer: OutputWriter, results: queue.Queue, failures: list[BaseException]) -> None:
    while True:
        item = results.get()
        if item is _END:
            return
        if failures:
            continue  # keep draining so the model thread never blocks on a dead writer
        try:
            writer.write(*item)
        except BaseException as error:  # reported by the main thread
            failures.append(error)


def segment_video(
    source: Source,
    first_mask: np.ndarray | None,
    session: VideoSession | AutoSession | TMOOnlySession,
    writer: OutputWriter,
    *,
    on_frame: Callable[[int], None] | None = None,
) -> SegmentResult:
    """Run ``session`` over every frame of ``source``: a VideoSession with ``first_mask``, frame 0's index
    mask; or, with ``first_mask`` None, a mask-free session (AutoSession, TMOOnlySession) whose seed events
    go to the writer with their frames.

    ``on_frame(index)`` is called after each frame (progress). The writer is closed on success and aborted
    on any failure, so no partial output is left under the final names.
    """
    frames: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    results: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()
    write_failures: list[BaseException] = []
    reader = threading.Thread(
        target=_read_ahead, args=(source, frames, stop), name="vosd-reader", daemon=True)
    writer_thread = threading.Thread(
        target=_write_behind, args=(writer, results, write_failures), name="vosd-writer", daemon=True)
    reader.start()
    writer_thread.start()
    started = time.perf_counter()
    count = 0
    try:
        for frame, is_last in _frames_with_end_flag(frames):
            if first_mask is None:
                found = cast("AutoSession | TMOOnlySession", session).step(frame.image, end=is_last)
                item = (frame.index, frame.image, found.index_mask, found.event)
            else:
                mask = first_mask if count == 0 else None
                tracked = cast("VideoSession", session).step(frame.image, mask, end=is_last)
                item = (frame.index, frame.image, tracked.index_mask, None)
            results.put(item)
            count += 1
            if write_failures:
                raise write_failures[0]
            if on_frame is not None:
                on_frame(frame.index)
        if count == 0:
            raise ValueError(f"{source.info.uri} has no frames")
    except BaseException:
        stop.set()
        results.put(_END)
        writer_thread.join()
        writer.abort()
        raise
    results.put(_END)
    writer_thread.join()
    if write_failures:
        writer.abort()
        raise write_failures[0]
    seconds = time.perf_counter() - started
    report = writer.close(expected_frames=count)
    return SegmentResult(frames=count, seconds=seconds, report=report, mode=_mode_of(session))


def _mode_of(session: object) -> str:
    from workers.auto.session import AutoSession, TMOOnlySession

    if isinstance(session, AutoSession):
        return "auto"
    return "tmo" if isinstance(session, TMOOnlySession) else "xmem"


def _user_errors() -> tuple[type[BaseException], ...]:
    from streamer.config import ConfigError
    from streamer.ingest.sources import SourceError
    from streamer.masks import MaskFileError
    from streamer.output.writer import WriterError
    from workers.tmo.checkpoint import CheckpointError as TMOCheckpointError
    from workers.training.weights import WeightsError
    from workers.xmem.checkpoint import CheckpointError
    from workers.xmem.session import SessionInputError

    return (ConfigError, SourceError, MaskFileError, WriterError, WeightsError, CheckpointError,
            TMOCheckpointError, SessionInputError, ValueError, FileNotFoundError)


USER_ERRORS = _user_errors()
"""Failures caused by the input or the setup: reported as one line, not a traceback."""


def run_segment(
    video: str,
    mask_path: Path | None,
    *,
    output: Path | None,
    masks_dir: Path | None,
    rle_path: Path | None,
    model: str | None,
    config_path: Path | None,
    size: int | None,
    device: str | None,
    amp: bool | None,
    console: Console,
    mode: str | None = None,
    objects: int | None = None,
    tmo_model: str | None = None,
) -> SegmentResult:
    """Everything `vosd segment` does: resolve settings, load the model(s), run, report. Without
    `mask_path` the mode is auto (or `mode` tmo); `objects` overrides the auto section's object count."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from streamer.config import load_config
    from streamer.ingest.sources import open_source
    from streamer.masks import FirstMaskError, check_first_mask, read_index_mask
    from streamer.modes import Mode, choose_mode
    from workers.training.weights import model_path
    from workers.xmem.checkpoint import load_network
    from workers.xmem.session import VideoSession

    settings = load_config(config_path)
    chosen = choose_mode(mask_path is not None, mode)
    if objects is not None and chosen is not Mode.AUTO:
        raise ValueError("--objects applies to mode auto only")
    if output is None and masks_dir is None and rle_path is None:
        output = Path(f"{Path(str(video)).stem}-overlay.mp4")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    use_amp = amp if amp is not None else device.startswith("cuda")
    working_size = settings.workers.size if size is None else size
    first_mask = read_index_mask(mask_path) if mask_path is not None else None
    session: VideoSession | AutoSession | TMOOnlySession
    fast = settings.workers.engine == "fast"
    names = []
    network = None
    if chosen is not Mode.TMO:
        checkpoint = model_path(model or settings.workers.model_path)
        network = load_network(checkpoint, device=device, fast=fast)
        names.append(checkpoint.name)
    if chosen is Mode.XMEM:
        assert network is not None
        session = VideoSession(network, settings.xmem.inference_config(), size=working_size, amp=use_amp,
                               device=device, fast=fast)
    else:
        from workers.auto.build import load_tmo, mask_free_session, tmo_model_path

        tmo_path = tmo_model_path(tmo_model or settings.auto.model_path)
        names.append(tmo_path.name)
        auto = settings.auto.auto_config(**({} if objects is None else {"objects": objects}))
        session = mask_free_session(
            chosen.value, tmo=load_tmo(tmo_path, device), flow=settings.auto.flow, device=device,
            xmem=network, inference=settings.xmem.inference_config(), auto=auto, size=working_size,
            amp=use_amp, fast=fast)
    source = open_source(video, live=False)
    info = source.info
    if first_mask is not None:
        try:
            source_size = (info.width, info.height)
            check_first_mask(first_mask, source_size, settings.workers.max_objects,
                             name=f"the mask {mask_path}")
        except FirstMaskError:
            source.close()
            raise
    writer = OutputWriter(fps=info.fps, source_size=(info.width, info.height), overlay_path=output,
                          masks_dir=masks_dir, rle_path=rle_path, alpha=settings.writer.overlay_alpha,
                          crf=settings.writer.crf)
    console.print(f"[bold]vosd segment[/bold] {video}: {info.width}x{info.height} @ {info.fps:.3g} fps, "
                  f"mode {chosen.value}, model {' + '.join(names)} on {device}")
    columns = (TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[fps]} fps"), TimeRemainingColumn())
    with source, Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("frames", total=info.frame_count, fps="-")
        started = time.perf_counter()

        def advance(index: int) -> None:
            rate = (index + 1) / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=index + 1, fps=f"{rate:.1f}")

        result = segment_video(source, first_mask, session, writer, on_frame=advance)
    for path in result.report.outputs:
        console.print(f"wrote {path}")
    for event in result.events:
        console.print(f"{event['kind']} at frame {event['frame']} ({event['reason']})")
    if chosen is Mode.AUTO and not result.events:
        console.print("[yellow]no object was found: TMO never gave a stable, confident mask[/yellow]")
    console.print(f"{result.frames} frames in {result.seconds:.1f} s ({result.fps:.2f} fps)")
    return result
