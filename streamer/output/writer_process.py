"""The writer process: one OutputWriter per job, fed by the decoders (full-size frames) and workers (masks).

Why a process of its own: H.264 encoding and PNG compression cost CPU that must not slow the model, and
outputs must survive a worker crash: this process keeps a job's half-written outputs while the daemon
restarts the worker and re-runs the job from its last checkpoint or from frame 0.

Checkpoints (streamer/output/resume.py): the worker's `CheckpointSaved` for frame N is promoted once the masks
of frames 0..N-1 are written, so the daemon never resumes ahead of the outputs. A run resumed at N sends
frames 0..N-1 without masks (overlay only; `OutputWriter(resume=True)` reuses the kept PNGs when this
process is not the one that wrote them), and completion expects N + the frames sent to the worker.

Size: about 430 lines, the loop and the per-job join state it owns; encoding and file formats live in
streamer/output/writer.py, checkpoint files in streamer/output/resume.py.

Messages arrive on one PULL socket (`ResultCollector`); who sends what, and what it means here, is in
the protocol table (`streamer.transport.messages.protocol_table()`, shown in docs/architecture.md).

Joining. Masks of a job come from one worker, in index order; full-size frames come from one decoder,
also in index order. A mask is written as soon as its frame is here, so the writer holds at most the
frames the decoder is ahead of the model (bounded by the transport's credit window). A mask whose index
was already written is a duplicate from a re-run and is ignored, so after a worker crash each frame is
still written exactly once. Live jobs skip dropped frames: they are written under consecutive output
indexes, and a re-run of a live job (new connection, indexes from 0 again) continues after the last
written frame instead of being mistaken for duplicates.

A job ends when the worker's EndOfStream has arrived and every mask before it is written: batch outputs
must then hold frames 0..N-1, or the job fails instead of publishing an incomplete result.

Every Cancel gets an answer, because only this loop knows whether a job's outputs were completed just
before the Cancel arrived: OutputsComplete again when they are complete under their final names (too late to
discard them), otherwise Cancel (nothing of the job is kept). The daemon writes a stopping job's final
state from that answer, so a job is never marked cancelled while its outputs stay published.

Every written frame is offered to the job's live preview (streamer/output/preview.py), a small JPEG replaced
at most five times a second that the HTTP API streams; it is removed with the job.

Live jobs report Progress for every written frame, so the daemon sees each frame's latency (decoded to
written) and can keep percentiles over the recent frames; batch jobs report every `progress_interval_s`.

States of a job here: OPEN -> ENDING (EndOfStream seen, masks left to join) -> COMPLETE | CANCELLED | FAILED.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from streamer.config import TransportConfig, WriterConfig
from streamer.lifeline import exit_with_parent
from streamer.output import resume
from streamer.output.preview import PreviewWriter
from streamer.transport.messages import (
    Cancel,
    CheckpointSaved,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    Heartbeat,
    JobStart,
    MaskMessage,
    Message,
    OutputsComplete,
    Progress,
    Shutdown,
)
from streamer.transport.sockets import EventReporter, ResultCollector

logger = logging.getLogger(__name__)

RECEIVE_TIMEOUT_S = 0.1
FINISHED_MEMORY = 512
"""Finished jobs remembered, so late messages of a job are ignored instead of reopening it."""


class OutputPhase(str, Enum):
    OPEN = "open"
    ENDING = "ending"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class WriterSettings:
    """The writer process's endpoints and limits; built by the daemon, picklable for spawn."""

    collector_endpoint: str
    events_endpoint: str
    transport: TransportConfig = field(default_factory=TransportConfig)
    """Queue sizes, the config's own section."""
    writer: WriterConfig = field(default_factory=WriterConfig)
    """Overlay opacity and quality, the config's own section (which outputs to write comes with each job)."""
    name: str = "writer"
    heartbeat_s: float = 1.0
    progress_interval_s: float = 0.5
    """How often a batch job's counters go to the daemon; 0 sends one Progress per written frame (live jobs
    always do)."""
    preset: str = "veryfast"

    @property
    def max_buffered_frames(self) -> int:
        """Full-size frames a job may hold while waiting for masks (far above what credits allow)."""
        queues = self.transport.queues()
        return 4 * (queues.batch_frames + queues.results_frames)


def output_paths(outputs: dict[str, Any]) -> dict[str, str]:
    """Final output paths of a job, from the `outputs` object the daemon puts in JobStart."""
    directory = Path(outputs["dir"])
    paths = {}
    if outputs.get("overlay", True):
        paths["overlay"] = str(directory / "overlay.mp4")
    if outputs.get("masks", True):
        paths["masks"] = str(directory / "masks")
    if outputs.get("rle", True):
        paths["rle"] = str(directory / "masks.jsonl")
    return paths


def remove_if_empty(directory: Path) -> None:
    """Remove a job's output directory that holds nothing (its outputs were discarded), never a file."""
    with contextlib.suppress(OSError):  # not empty (other files, a user's directory) or already gone
        directory.rmdir()


@dataclass
class WriterJob:
    """Join state of one job."""

    start: JobStart
    output: Any
    preview: PreviewWriter
    frames: dict[int, FrameMessage] = field(default_factory=dict)
    masks: deque[MaskMessage] = field(default_factory=deque)
    end: EndOfStream | None = None
    phase: OutputPhase = OutputPhase.OPEN
    last_index: int = -1
    """Highest source index written in the current run."""
    resume_from: int = 0
    """The run started from a checkpoint at this frame: earlier frames come without masks (resume.py)."""
    checkpoints: list[int] = field(default_factory=list)
    """Frames of checkpoints the worker saved that wait for their masks to be written."""
    written: int = 0
    frames_dropped: int = 0
    latency_s: float | None = None
    auto: dict[str, Any] | None = None
    """Modes auto and tmo: the last written frame's summary (MaskMessage.auto, without its event)."""
    opened_at: float = field(default_factory=time.monotonic)
    reported_at: float = 0.0
    reported_written: int = -1


class WriterLoop:
    """Receives, joins, writes; reports progress and completion to the daemon."""

    def __init__(self, settings: WriterSettings, context: zmq.Context) -> None:
        self.settings = settings
        self.jobs: dict[str, WriterJob] = {}
        self.finished: OrderedDict[str, tuple[OutputPhase, OutputsComplete | None]] = OrderedDict()
        self.running = True
        self._last_heartbeat = 0.0
        self.events = EventReporter(
            context, settings.events_endpoint, settings.transport.queues(), sender=f"writer={settings.name}")
        self.collector = ResultCollector(context, settings.collector_endpoint, settings.transport.queues())
        logger.info("writer ready endpoint=%s", self.collector.endpoint)

    def run(self) -> None:
        try:
            while self.running:
                message = self.collector.receive(timeout_s=RECEIVE_TIMEOUT_S)
                if message is not None:
                    self._handle(message)
                self._periodic()
        finally:
            for job_id in list(self.jobs):
                self._abort(job_id, OutputPhase.CANCELLED, "writer stopped")
            self._heartbeat(force=True)
            self.collector.close()
            self.events.close()

    def _handle(self, message: Message) -> None:
        if isinstance(message, Shutdown):
            logger.info("writer shutdown reason=%s", message.reason)
            self.running = False
            return
        if isinstance(message, JobStart):
            self._open(message)
            return
        if isinstance(message, Cancel):
            self._cancel(message)
            return
        job_id = getattr(message, "job_id", None)
        job = self.jobs.get(job_id) if job_id else None
        if job is None:
            if job_id not in self.finished:
                logger.debug("message kind=%s for unknown job=%s ignored", message.KIND.value, job_id)
            return
        try:
            if isinstance(message, FrameMessage):
                self._frame(job, message)
            elif isinstance(message, MaskMessage):
                job.masks.append(message)
            elif isinstance(message, EndOfStream):
                job.end = message
                job.phase = OutputPhase.ENDING
            elif isinstance(message, CheckpointSaved):
                job.checkpoints.append(message.frame)
            else:
                logger.warning("job=%s unexpected kind=%s", job.start.job_id, message.KIND.value)
            self._join(job)
        except Exception as exc:  # one job's broken output must not stop the others
            logger.exception("job=%s writing failed", job.start.job_id)
            self._abort(job.start.job_id, OutputPhase.FAILED, f"cannot write outputs: {exc}")

    def _open(self, start: JobStart) -> None:
        job_id = start.job_id
        previous = self.finished.get(job_id)
        if previous is not None and previous[0] is OutputPhase.COMPLETE:
            assert previous[1] is not None, "a complete job keeps its OutputsComplete"
            self.events.report(previous[1])  # a re-run of a job whose outputs are already complete
            return
        job = self.jobs.get(job_id)
        if job is not None:
            if job.start.live:  # a live re-run is new footage: keep writing after what is written
                job.frames.clear()
                job.masks.clear()
                job.last_index = -1
            job.end, job.phase, job.start = None, OutputPhase.OPEN, start
            job.resume_from = start.outputs.get("resume_from", 0)
            logger.info(
                "job=%s re-run attempt=%s written_so_far=%d",
                job_id,
                start.outputs.get("attempt"),
                job.written,
            )
            return
        self.finished.pop(job_id, None)
        from streamer.output.writer import OutputWriter

        paths = output_paths(start.outputs)
        resume_from = start.outputs.get("resume_from", 0)
        try:
            output = OutputWriter(
                fps=start.fps or 25.0,
                source_size=start.source_size,
                overlay_path=paths.get("overlay"),
                masks_dir=paths.get("masks"),
                rle_path=paths.get("rle"),
                alpha=self.settings.writer.overlay_alpha,
                crf=self.settings.writer.crf,
                preset=self.settings.preset,
                resume=resume_from > 0,
            )
            if output.resume_from < resume_from:
                output.abort()
                raise ValueError(f"only {output.resume_from} masks of the {resume_from} frames before the "
                                 "checkpoint are kept")
        except (OSError, ValueError) as exc:
            error = ErrorMessage(code="writer", message=f"cannot create outputs: {exc}", job_id=job_id)
            self.events.report(error)
            self._remember(job_id, OutputPhase.FAILED, None)
            return
        preview = PreviewWriter(start.outputs["dir"], self.settings.writer.overlay_alpha)
        job = WriterJob(start, output, preview, resume_from=resume_from, written=output.frames_written)
        if "overlay" not in paths:  # frames before the checkpoint are not sent: nothing to re-encode
            job.last_index = resume_from - 1
        self.jobs[job_id] = job
        logger.info("job=%s outputs opened %s resume_from=%d", job_id, paths, resume_from)

    def _cancel(self, cancel: Cancel) -> None:
        """Discard the job's outputs unless already complete, and answer which it was (module docstring)."""
        self._abort(cancel.job_id, OutputPhase.CANCELLED, cancel.reason)
        phase, done = self.finished.get(cancel.job_id, (OutputPhase.CANCELLED, None))
        if phase is OutputPhase.COMPLETE:
            assert done is not None, "a complete job keeps its OutputsComplete"
            self.events.report(done)
        else:
            self.events.report(Cancel(job_id=cancel.job_id, reason=cancel.reason))

    def _frame(self, job: WriterJob, frame: FrameMessage) -> None:
        job.frames_dropped = max(job.frames_dropped, frame.frames_dropped)
        if frame.index <= job.last_index:
            return  # already written by an earlier run
        if frame.index < job.resume_from:  # for the overlay only: its mask is the one kept on disk
            job.output.write(frame.index, frame.image, None)
            job.last_index = frame.index
            job.written = job.output.frames_written
            return
        job.frames[frame.index] = frame
        if len(job.frames) > self.settings.max_buffered_frames:
            oldest = min(job.frames)
            del job.frames[oldest]
            logger.warning("job=%s frame=%d dropped: no mask came for it", job.start.job_id, oldest)

    def _join(self, job: WriterJob) -> None:
        """Write every mask whose frame is here, in arrival (= index) order; finish when the run has ended."""
        while job.masks:
            mask = job.masks[0]
            if mask.index <= job.last_index:
                job.masks.popleft()
                continue
            frame = job.frames.pop(mask.index, None)
            if frame is None:
                if job.frames and max(job.frames) > mask.index:
                    job.masks.popleft()  # frames arrive in order: this one is not coming any more
                    logger.warning(
                        "job=%s frame=%d never arrived; mask dropped", job.start.job_id, mask.index
                    )
                    continue
                break
            job.masks.popleft()
            for stale in [index for index in job.frames if index < mask.index]:
                del job.frames[stale]
            output_index = job.written if job.start.live else mask.index
            event = None
            if mask.auto is not None:
                job.auto = {k: v for k, v in mask.auto.items() if k != "event"}
                event = mask.auto.get("event")
            job.output.write(output_index, frame.image, mask.mask, event)
            job.preview.offer(frame.image, mask.mask)
            job.last_index = mask.index
            job.written = job.output.frames_written
            job.latency_s = time.time() - mask.capture_time
            if self.settings.progress_interval_s == 0 or job.start.live:
                self._send_progress(job)
        self._promote_checkpoint(job)
        if job.phase is OutputPhase.ENDING and not job.masks:
            self._complete(job)

    def _promote_checkpoint(self, job: WriterJob) -> None:
        """Vouch for the newest checkpoint whose frames are all written (streamer/output/resume.py)."""
        ready = [frame for frame in job.checkpoints if frame <= job.last_index + 1]
        if ready:
            job.checkpoints = [frame for frame in job.checkpoints if frame > max(ready)]
            if resume.promote(job.start.outputs, max(ready)):
                logger.info("job=%s checkpoint at frame %d is usable", job.start.job_id, max(ready))

    def _complete(self, job: WriterJob) -> None:
        assert job.end is not None
        job_id = job.start.job_id
        expected = job.resume_from + job.end.frames_sent  # frames before the checkpoint were not sent
        if not job.start.live and job.written != expected:
            self._abort(
                job_id,
                OutputPhase.FAILED,
                f"outputs incomplete: {job.written} of {expected} frames written",
            )
            return
        report = job.output.close()
        job.preview.remove()
        resume.discard(job.start.outputs)
        done = OutputsComplete(
            job_id=job_id, frames_written=report.frames_written, frames_dropped=job.end.frames_dropped
        )
        self._send_progress(job)
        del self.jobs[job_id]
        self._remember(job_id, OutputPhase.COMPLETE, done)
        self.events.report(done)
        logger.info(
            "job=%s complete frames=%d duplicates=%d seconds=%.1f",
            job_id,
            report.frames_written,
            report.duplicates,
            time.monotonic() - job.opened_at,
        )

    def _abort(self, job_id: str, phase: OutputPhase, reason: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        job.output.abort()
        job.preview.remove()
        resume.discard(job.start.outputs)
        remove_if_empty(Path(job.start.outputs["dir"]))
        self._remember(job_id, phase, None)
        if phase is OutputPhase.FAILED:
            self.events.report(ErrorMessage(code="writer", message=reason, job_id=job_id))
        logger.info("job=%s outputs discarded phase=%s reason=%s", job_id, phase.value, reason)

    def _remember(self, job_id: str, phase: OutputPhase, done: OutputsComplete | None) -> None:
        self.finished[job_id] = (phase, done)
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)

    def _periodic(self) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            if (
                now - job.reported_at >= self.settings.progress_interval_s
                and job.written != job.reported_written
            ):
                self._send_progress(job)
        self._heartbeat()

    def _send_progress(self, job: WriterJob) -> None:
        job.reported_at = time.monotonic()
        job.reported_written = job.written
        elapsed = max(job.reported_at - job.opened_at, 1e-6)
        self.events.report(
            Progress(
                job_id=job.start.job_id,
                frames_done=job.written,
                frames_dropped=job.frames_dropped,
                fps=job.written / elapsed,
                latency_s=job.latency_s,
                auto=job.auto,
            )
        )

    def _heartbeat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_heartbeat >= self.settings.heartbeat_s:
            self._last_heartbeat = now
            heartbeat = Heartbeat(process=self.settings.name, sent_at=time.time(), jobs=tuple(self.jobs))
            self.events.report(heartbeat)


def run_writer(settings: WriterSettings) -> None:
    """Entry point of the spawned writer process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {settings.name} %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()  # a daemon killed with SIGKILL takes its children along
    context = zmq.Context()
    loop = WriterLoop(settings, context)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        loop.running = False

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        loop.run()
    finally:
        context.term()
