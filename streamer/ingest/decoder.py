"""The decoder process: one per job, so a source that hangs or crashes takes down nothing but itself.

It opens the source (streamer/ingest/sources.py), checks the first-frame mask against it, then sends every
decoded frame, at the source size, to the job's worker (through `FrameSender`, credits) and to the writer;
what each message means on each route is in the protocol table
(`streamer.transport.messages.protocol_table()`, shown in docs/architecture.md).

Why the decoder does not resize: the worker's VideoSession does all preprocessing (normalise, then resize
the normalised tensor, as XMem's eval.py does), exactly as `vosd segment` and `vosd eval` do, so the three
give identical masks by construction. A uint8 resize here cannot reproduce it (it rounds before
normalising), and calling the session's function here would import torch into every decoder (seconds per
job start, hundreds of MiB each) to send float32 tensors that are larger than the uint8 source up to 720p
(docs/architecture.md has the measured bytes and times). One source-size picture also serves worker and
writer, so the decoder converts each frame once and never resizes.

A batch job resumed from a checkpoint at frame N (``outputs["resume_from"]``, streamer/output/resume.py) still
decodes frames 0..N-1, but sends them only to the writer, which re-encodes the overlay from them with the
masks it kept; without an overlay they go nowhere. The worker gets frames N.. only.

Batch jobs are lossless: `FrameSender.send_frame` blocks until the worker has room, so the decoder runs
exactly as fast as the model. Live jobs never block: the sender keeps the newest frame and counts the ones
it drops; a frame goes to the writer only once it was actually handed to the worker,
so the writer never waits for a mask that will not come.

End of stream is a handshake (`FrameSender.finish` waits for the worker's EndAck), so the last frames of a
file are never lost when this process exits. Every failure path reports an Error to the daemon with a
message meant for the job's status, then exits; SIGTERM (cancel or daemon shutdown) cancels the job on
the worker and the writer and exits. SIGUSR1 (`vosd stop`) means "finish now": stop reading and end the
stream normally, so the outputs of every frame so far are completed; stopped before any frame was sent,
there is nothing to keep and the job is reported as an Error with code "stopped".

States: OPENING -> STREAMING -> FINISHING -> DONE, or FAILED / CANCELLED from any of them.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import zmq

from streamer.config import SourcesConfig, TransportConfig
from streamer.lifeline import exit_with_parent
from streamer.transport.messages import Cancel, ErrorMessage, FrameMessage, JobStart, SourceStatus
from streamer.transport.sockets import (
    EventReporter,
    FrameSender,
    JobRejected,
    ResultSender,
    SendOutcome,
    TransportError,
)

logger = logging.getLogger(__name__)

SOURCE_STATUS_EVERY_S = 1.0
"""While streaming, how often the time of the last frame is reported to the daemon."""


class DecoderState(str, Enum):
    """Lifecycle of one job's decoder, logged on every change."""

    OPENING = "opening"
    STREAMING = "streaming"
    FINISHING = "finishing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class DecoderSettings:
    """One job's decoder: what to read, where to send it. Built by the daemon, picklable for spawn."""

    job_id: str
    source: str
    mask_path: str | None
    live: bool
    worker_endpoint: str
    writer_endpoint: str
    events_endpoint: str
    max_objects: int
    """`workers.max_objects`: objects allowed in the first-frame mask."""
    transport: TransportConfig = field(default_factory=TransportConfig)
    """Queue sizes and peer timeouts, the config's own section."""
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    """Opening and reconnecting the source, the config's own section."""
    options: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    max_frames: int | None = None
    """Stop (and finish the job normally) after this many frames; None reads to the end (live: forever)."""


class JobInputError(ValueError):
    """The job's inputs cannot be used (mask file, mask content); the text goes into the job status."""


class _StopFlag:
    """`set` by SIGTERM (cancel), checked between frames and while waiting for the worker; `finish` by
    SIGUSR1 (stop, keeping the outputs), checked between frames and while the source reconnects."""

    def __init__(self) -> None:
        self.set = False
        self.finish = False

    def __call__(self) -> bool:
        return self.set


def load_first_mask(path: str | None, source_size: tuple[int, int], max_objects: int) -> np.ndarray | None:
    """Read and check the first-frame mask; raise `JobInputError` with a sentence a user can act on. None
    for a job without one (modes auto and tmo; the worker refuses a mode xmem job without a mask)."""
    from streamer.masks import FirstMaskError, MaskFileError, check_first_mask, read_index_mask

    if path is None:
        return None
    mask_path = Path(path)
    if not mask_path.is_file():
        raise JobInputError(f"first-frame mask {mask_path} not found")
    try:
        mask = read_index_mask(mask_path)
        check_first_mask(mask, source_size, max_objects, name=f"first-frame mask {mask_path.name}")
    except FirstMaskError as exc:
        raise JobInputError(str(exc)) from None
    except (MaskFileError, OSError, ValueError) as exc:
        raise JobInputError(f"first-frame mask {mask_path} cannot be read: {exc}") from None
    return mask


class DecoderLoop:
    """One job's decode loop; `run` returns the final state."""

    def __init__(self, settings: DecoderSettings, context: zmq.Context, stop: _StopFlag) -> None:
        self.settings = settings
        self.context = context
        self.stop = stop
        self.state = DecoderState.OPENING
        self._source_reported = 0.0
        self._source_state = "connecting"
        self._frames_total: int | None = None
        self.events = EventReporter(
            context,
            settings.events_endpoint,
            settings.transport.queues(),
            sender=f"decoder job={settings.job_id}",
        )
        self.writer = ResultSender(
            context,
            settings.writer_endpoint,
            settings.transport.queues(),
            should_stop=stop,
            peer_timeout_s=settings.transport.peer_timeout_s,
        )

    def run(self) -> DecoderState:
        from streamer.ingest.sources import ReconnectPolicy, SourceError, SourceStopped, open_source

        job_id, sources = self.settings.job_id, self.settings.sources
        self.events.report(SourceStatus(job_id=job_id, state="connecting"))  # also: signals are handled
        try:
            source = open_source(
                self.settings.source,
                live=self.settings.live,
                open_timeout=sources.open_timeout_s,
                reconnect=ReconnectPolicy(
                    stall_timeout=sources.stall_timeout_s,
                    initial_delay=sources.reconnect_initial_delay_s,
                    max_delay=sources.reconnect_max_delay_s,
                    max_attempts=sources.reconnect_attempts or None,
                    give_up_after=sources.reconnect_give_up_s or None,
                ),
                on_change=self._report_source,
                should_end=lambda: self.stop.set or self.stop.finish,
            )
        except SourceStopped:
            return self._cancelled() if self.stop() else self._stopped_empty()
        except SourceError as exc:
            return self._fail("source", str(exc))
        with source:
            info = source.info
            try:
                mask = load_first_mask(
                    self.settings.mask_path, (info.width, info.height), self.settings.max_objects
                )
            except JobInputError as exc:
                return self._fail("mask", str(exc))
            start = JobStart(
                job_id=job_id,
                live=self.settings.live,
                source_size=(info.width, info.height),
                fps=info.fps,
                options=self.settings.options,
                outputs=self.settings.outputs,
                mask=mask,
            )
            total = info.frame_count
            if self.settings.max_frames is not None:
                total = self.settings.max_frames if total is None else min(total, self.settings.max_frames)
            self._frames_total = total
            self._report_source(source.stats)
            try:
                self.writer.send(start)
                return self._stream(source, start)
            except (SourceError, TransportError) as exc:
                self._cancel_writer("decoder stopped")
                if isinstance(exc, SourceError):
                    return self._fail("source", str(exc))
                if self.stop():
                    return self._cancelled()
                code = "rejected" if isinstance(exc, JobRejected) else "transport"
                return self._fail(code, str(exc))

    def _stream(self, source: Any, start: JobStart) -> DecoderState:
        from streamer.ingest.sources import SourceError

        settings = self.settings
        with FrameSender(
            self.context,
            settings.worker_endpoint,
            settings.job_id,
            live=settings.live,
            queues=settings.transport.queues(),
            should_stop=self.stop,
            peer_timeout_s=settings.transport.peer_timeout_s,
        ) as sender:
            sender.open(start, timeout_s=settings.transport.peer_timeout_s)
            self._set_state(DecoderState.STREAMING)
            try:
                return self._send_frames(source, sender)
            except (SourceError, TransportError) as exc:
                sender.cancel(f"decoder stopped: {type(exc).__name__}")
                raise

    def _send_frames(self, source: Any, sender: FrameSender) -> DecoderState:
        """Batch: every frame, waiting for room. Live: the newest frame, counting drops."""
        job_id = self.settings.job_id
        held: FrameMessage | None = None
        resume_from = self.settings.outputs.get("resume_from", 0)
        overlay = self.settings.outputs.get("overlay", False)
        for decoded in source:
            if self.settings.max_frames is not None and decoded.index >= self.settings.max_frames:
                break
            if self.stop() or self.stop.finish:
                break
            if time.monotonic() - self._source_reported >= SOURCE_STATUS_EVERY_S:
                self._report_source(source.stats)
            frame = FrameMessage(
                job_id=job_id,
                index=decoded.index,
                image=decoded.image,
                pts=decoded.pts_seconds,
                capture_time=decoded.wall_time,
                source_size=tuple(decoded.source_size),
                frames_dropped=sender.stats.dropped,
            )
            if not self.settings.live:
                if overlay or decoded.index >= resume_from:
                    self.writer.send(frame)
                if decoded.index >= resume_from:  # earlier frames are in the checkpoint (resume.py)
                    sender.send_frame(frame)
                continue
            # Live: exactly the frames handed to the worker are sent to the writer too.
            sent_before = sender.stats.sent
            outcome = sender.send_frame(frame)
            if outcome is SendOutcome.SENT:
                self.writer.send(frame)
                held = None
            elif outcome is SendOutcome.HELD:
                held = frame
            elif sender.stats.sent > sent_before and held is not None:
                self.writer.send(held)
                held = None
        if self.stop() or (self.stop.finish and sender.stats.sent == 0):
            reason = "cancelled" if self.stop() else "stopped before any frame"
            sender.cancel(reason)
            self._cancel_writer(reason)
            return self._cancelled() if self.stop() else self._stopped_empty()
        if self.stop.finish:
            logger.info("job=%s stopped on request after %d frames", job_id, sender.stats.sent)
        self._set_state(DecoderState.FINISHING)
        if held is not None:
            self.writer.send(held)
        ack = sender.finish(timeout_s=self.settings.transport.end_of_stream_timeout_s)
        logger.info(
            "job=%s end acknowledged frames=%d complete=%s dropped=%d",
            job_id,
            ack.frames_received,
            ack.complete,
            sender.stats.dropped,
        )
        self._set_state(DecoderState.DONE)
        return self.state

    def _report_source(self, stats: Any) -> None:
        """Tell the daemon how the source is doing (SourceStats from streamer/ingest/sources.py)."""
        self._source_reported = time.monotonic()
        job_id = self.settings.job_id
        if stats.state != "streaming" and stats.attempts:
            logger.warning("job=%s source %s: attempt %d failed: %s", job_id, stats.state, stats.attempts,
                           stats.last_error)
        elif stats.state != self._source_state:
            level = logging.WARNING if stats.state == "reconnecting" else logging.INFO
            logger.log(level, "job=%s source %s (%s)", job_id, stats.state, stats.last_error or "no error")
        self._source_state = stats.state
        if stats.state in ("connecting", "streaming", "reconnecting"):
            self.events.report(SourceStatus(job_id=job_id, state=stats.state, attempts=stats.attempts,
                                            error=stats.last_error, last_frame_at=stats.last_frame_at,
                                            frames_total=self._frames_total))

    def _stopped_empty(self) -> DecoderState:
        """Stopped by request before any frame reached the worker: nothing to keep, the job is cancelled."""
        self.events.report(ErrorMessage(
            code="stopped", message="stopped on request before any frame: nothing was produced",
            job_id=self.settings.job_id))
        return self._cancelled()

    def _cancel_writer(self, reason: str) -> None:
        try:
            self.writer.send(Cancel(job_id=self.settings.job_id, reason=reason))
        except TransportError as exc:
            logger.warning("job=%s writer unreachable, cancel not sent: %s", self.settings.job_id, exc)

    def _fail(self, code: str, text: str) -> DecoderState:
        logger.error("job=%s failed code=%s: %s", self.settings.job_id, code, text)
        self.events.report(ErrorMessage(code=code, message=text, job_id=self.settings.job_id))
        self._set_state(DecoderState.FAILED)
        return self.state

    def _cancelled(self) -> DecoderState:
        self._set_state(DecoderState.CANCELLED)
        return self.state

    def _set_state(self, state: DecoderState) -> None:
        self.state = state
        logger.info("job=%s decoder state=%s", self.settings.job_id, state.value)

    def close(self) -> None:
        self.writer.close()
        self.events.close()


def run_decoder(settings: DecoderSettings) -> None:
    """Entry point of the spawned decoder process of one job."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s decoder %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()  # a daemon killed with SIGKILL takes its children along
    stop = _StopFlag()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set = True

    def on_sigusr1(signum: int, frame: FrameType | None) -> None:
        stop.finish = True

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGUSR1, on_sigusr1)
    context = zmq.Context()
    decoder = DecoderLoop(settings, context, stop)
    started = time.monotonic()
    try:
        state = decoder.run()
        logger.info(
            "job=%s decoder exit state=%s after %.1f s",
            settings.job_id,
            state.value,
            time.monotonic() - started,
        )
    finally:
        decoder.close()
        context.term()
