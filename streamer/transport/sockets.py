"""ZeroMQ sockets between decoder, worker and writer: per-job routing, credit flow control, live drops.

Topology (one arrow per socket pair; `bind` on the long-lived side)::

    decoder (one per job)                worker (one per device)                  writer (one)
    FrameSender  DEALER id=job_id  --->  FrameInbox  ROUTER bind  --------------->
                 <--- Credit / EndAck / Error             ResultSender PUSH --->  ResultCollector PULL bind

Routing. Each worker binds its own endpoint (``transport.worker_endpoint`` with ``{index}``); the decoder
of a job connects straight to the worker the daemon assigned, with the job id as its socket identity.
All frames of a job therefore reach that worker and no other, in order (one ZeroMQ pipe), without a
broker process in the middle. DEALER/ROUTER rather than PUSH/PULL because the worker must talk back to
one particular decoder (credits, end-of-stream acknowledgement, rejection), addressed by job id.

Backpressure in frames, not messages-that-happen-to-be-frames. ZeroMQ high-water marks count messages,
apply per pipe on both sides and come on top of kernel buffers, so they do not bound memory precisely.
Instead the worker grants credits: `FrameInbox.accept` grants the job's window (batch or live queue size
in frames) and each frame handed to the worker is credited back at the *next* `FrameInbox.receive` call,
that is once the worker is done with it. A sender never has more than `window` frames in flight, so at
most `window` frames of a job exist between decoder and model. Control messages (end of stream, cancel)
need no credit; socket high-water marks are set to the window plus `CONTROL_SLACK`, so they always fit.

Lossless (batch) jobs: `FrameSender.send_frame` blocks until a credit arrives, polling every
``poll_interval_s`` so it can notice a cancel (`should_stop`) and a silent worker (`peer_timeout_s`).
Live jobs: `send_frame` never blocks. Without credit, the frame waits in a one-frame slot; with the
``drop_oldest`` policy a newer frame replaces it (the older is counted as dropped), with ``drop_newest``
the newer frame is dropped instead. A live worker asks for a frame only when it is ready for one, so
with a live window of 1 the frame it gets is never older than one source frame interval.
Every frame is either sent or counted in `SenderStats.dropped`; sent = received + dropped is exact.
A live worker that takes no frame for ``peer_timeout_s`` raises `PeerTimeout` rather than letting the
job drop every frame while looking healthy.

End of stream. `FrameSender.finish` first delivers the held live frame, then sends `EndOfStream` with
the counts, and waits for the worker's `EndAck`. The inbox answers only when the worker asks for the
message after the last frame, so the acknowledgement means every frame reached the worker; the decoder
may exit afterwards without losing the tail of the video.

Closing. Frames left in a closing sender are discarded at once (the job is over), but once a control
message is queued (`cancel`, `finish`) the socket lingers up to `CONTROL_LINGER_S` so it still reaches
the worker. A decoder that dies without sending either (SIGKILL, crash) cannot do that; the daemon then
calls `release_job`, which cancels the job on the worker under the job's own identity, so the worker
frees its session at once.

Wiring, in the order a job runs::

    # worker process
    inbox = FrameInbox(ctx, worker_endpoint, queues)
    results = ResultSender(ctx, writer_endpoint, queues, should_stop=...)
    while running:
        msg = inbox.receive(timeout_s=0.5)
        match msg:
            JobStart:    create the session; inbox.accept(msg) or inbox.reject(msg, why); results.send(msg)
            FrameMessage: step the session; results.send(MaskMessage(...))
            EndOfStream | Cancel: drop the session; results.send(msg)
            Shutdown:    leave the loop

    # decoder process, one per job
    with FrameSender(ctx, worker_endpoint, job_id, live=..., queues=queues, should_stop=cancel_seen) as tx:
        tx.open(JobStart(...))
        for frame in source: tx.send_frame(FrameMessage(...))
        ack = tx.finish()        # or tx.cancel(reason) when the job is cancelled

    # writer process
    collector = ResultCollector(ctx, writer_endpoint, queues)
    while running: msg = collector.receive(timeout_s=0.5) ...

Malformed messages never raise out of `receive`: they are logged, counted in ``rejected`` and skipped.
Sockets are not thread-safe; each process (or thread) makes its own from its own ``zmq.Context``.

Size: FrameSender and FrameInbox are the two ends of one credit protocol (credits, end-of-stream
handshake, live drops) and are read together; the results side (ResultSender, EventReporter,
ResultCollector, about 110 lines) could move out, but every module that imports one imports the others.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from types import TracebackType

import zmq

from streamer.transport.messages import (
    Cancel,
    Credit,
    EndAck,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    JobStart,
    Message,
    MessageError,
    MessageKind,
    decode,
    encode,
)

logger = logging.getLogger(__name__)

CONTROL_SLACK = 8
"""Messages of headroom above the frame window in every high-water mark, so control always fits."""
CONTROL_LINGER_S = 1.5
"""How long a closing socket keeps trying to deliver a control message (Cancel, EndOfStream, Shutdown)
already queued, with the frames ahead of it; bounded, so a process never hangs on a dead peer."""


class LiveDropPolicy(str, Enum):
    """Which frame a live sender gives up when the worker has no room."""

    DROP_OLDEST = "drop_oldest"
    """Keep the newest frame (lowest latency); the held older frame is dropped."""
    DROP_NEWEST = "drop_newest"
    """Keep the frame already held; newer frames are dropped until the worker has room."""


class SendOutcome(str, Enum):
    """What `FrameSender.send_frame` did with a frame."""

    SENT = "sent"
    HELD = "held"
    DROPPED = "dropped"


@dataclass(frozen=True)
class QueueSettings:
    """Queue sizes in frames, shared by both ends of each socket pair (from `VosdConfig.transport`)."""

    batch_frames: int = 8
    live_frames: int = 1
    results_frames: int = 16
    live_policy: LiveDropPolicy = LiveDropPolicy.DROP_OLDEST

    def window(self, *, live: bool) -> int:
        return self.live_frames if live else self.batch_frames

    @property
    def frame_hwm(self) -> int:
        return max(self.batch_frames, self.live_frames) + CONTROL_SLACK


class TransportError(RuntimeError):
    """A peer did not behave: gone, silent for too long, or refused the job."""


class PeerTimeout(TransportError):
    """The peer did not answer (credit, acknowledgement) within the allowed time."""


class JobRejected(TransportError):
    """The worker refused the job (for example, it already holds as many jobs as it may)."""


class SendCancelled(TransportError):
    """`should_stop` became true while a lossless send was waiting for room."""


def ensure_ipc_directory(endpoint: str) -> None:
    """Create the directory of an ``ipc://`` endpoint; ZeroMQ does not, and binding fails without it."""
    if endpoint.startswith("ipc://"):
        Path(endpoint.removeprefix("ipc://")).parent.mkdir(parents=True, exist_ok=True)


def _never_stop() -> bool:
    return False


@dataclass
class SenderStats:
    """Counts for one job's sender: every produced frame ends up sent or dropped."""

    produced: int = 0
    sent: int = 0
    dropped: int = 0


class FrameSender:
    """Decoder side of one job: sends JobStart, frames and the end of stream to the assigned worker."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        job_id: str,
        *,
        live: bool,
        queues: QueueSettings,
        should_stop: Callable[[], bool] = _never_stop,
        peer_timeout_s: float = 30.0,
        poll_interval_s: float = 0.1,
    ) -> None:
        self.job_id = job_id
        self.live = live
        self.stats = SenderStats()
        self._policy = queues.live_policy
        self._should_stop = should_stop
        self._peer_timeout_s = peer_timeout_s
        self._poll_interval_s = poll_interval_s
        self._credits = 0
        self._held: FrameMessage | None = None
        self._starved_since: float | None = None
        self._ack: EndAck | None = None
        self._progress_at = time.monotonic()
        """When the worker last returned a credit: the job's frames are moving."""
        self._opened = False
        self._credited = 0
        """Frames the worker has returned credit for (the first grant opens the window and is not counted)."""
        self._linger_s = 0.0
        self._socket = context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.IDENTITY, job_id.encode())
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.SNDHWM, queues.frame_hwm)
        self._socket.setsockopt(zmq.RCVHWM, queues.frame_hwm)
        self._socket.connect(endpoint)

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self, start: JobStart, *, timeout_s: float = 10.0) -> None:
        """Send the job start and wait until the worker accepts it (grants the first credits)."""
        if start.job_id != self.job_id:
            raise ValueError(f"JobStart for {start.job_id!r} on the sender of {self.job_id!r}")
        self._send(start, timeout_s)
        deadline = time.monotonic() + timeout_s
        while self._credits == 0:
            if time.monotonic() >= deadline:
                raise PeerTimeout(f"job {self.job_id}: worker did not accept the job in {timeout_s:.1f} s")
            self._pump(min(self._poll_interval_s, deadline - time.monotonic()))

    def send_frame(self, frame: FrameMessage) -> SendOutcome:
        """Send one frame: lossless jobs wait for room, live jobs never wait (see module docstring)."""
        if self.live:
            self.stats.produced += 1
            return self._offer_live(frame)
        waited_since = time.monotonic()
        while self._credits == 0:
            if self._should_stop():
                raise SendCancelled(f"job {self.job_id}: stopped while waiting for the worker")
            if time.monotonic() - waited_since > self._peer_timeout_s:
                waited = self._peer_timeout_s
                raise PeerTimeout(f"job {self.job_id}: no room at the worker for {waited:.1f} s")
            self._pump(self._poll_interval_s)
        self._transmit(frame)
        self.stats.produced += 1
        return SendOutcome.SENT

    def finish(self, *, timeout_s: float = 10.0) -> EndAck:
        """Deliver the held live frame, send EndOfStream, and wait for the worker's acknowledgement.

        `timeout_s` bounds the wait *without progress*: every credit the worker returns (a frame of this
        job segmented) restarts it, so a slow worker that still has this job's frames queued behind
        other jobs' frames is waited for, and only a worker that stopped taking frames fails the job.
        """
        while self._held is not None:
            if time.monotonic() - self._progress_at >= timeout_s:
                raise PeerTimeout(f"job {self.job_id}: no room for the last frame within {timeout_s:.1f} s")
            self._pump(self._poll_interval_s)
            self._flush_held()
        self._send(
            EndOfStream(
                job_id=self.job_id,
                frames_total=self.stats.produced,
                frames_sent=self.stats.sent,
                frames_dropped=self.stats.dropped,
            ),
            timeout_s,
        )
        self._progress_at = time.monotonic()
        while self._ack is None:
            if time.monotonic() - self._progress_at >= timeout_s:
                raise PeerTimeout(
                    f"job {self.job_id}: end of stream not acknowledged; the worker segmented none of this "
                    f"job's {self.stats.sent - self._credited} frames still in flight for {timeout_s:.1f} s"
                )
            self._pump(self._poll_interval_s)
        if not self._ack.complete:
            logger.error(
                "job %s: worker received %d of %d sent frames",
                self.job_id,
                self._ack.frames_received,
                self.stats.sent,
            )
        return self._ack

    def cancel(self, reason: str, *, timeout_s: float = 1.0) -> None:
        """Tell the worker to drop the job; best effort, since the worker may already be gone."""
        if self._held is not None:
            self._held = None
            self.stats.dropped += 1
        try:
            self._send(Cancel(job_id=self.job_id, reason=reason), timeout_s)
        except PeerTimeout:
            logger.warning("job %s: cancel not delivered, worker unreachable", self.job_id)

    def close(self) -> None:
        """Close; a queued control message gets `CONTROL_LINGER_S` to leave, frames alone get none."""
        self._socket.close(linger=int(self._linger_s * 1000))

    def _offer_live(self, frame: FrameMessage) -> SendOutcome:
        self._pump(0)
        if self._credits > 0:
            self._starved_since = None
        elif self._starved_since is None:
            self._starved_since = time.monotonic()
        elif time.monotonic() - self._starved_since > self._peer_timeout_s:
            # Dropping forever would look healthy from outside; a worker this silent is gone.
            waited = self._peer_timeout_s
            raise PeerTimeout(f"job {self.job_id}: worker took no frame for {waited:.1f} s")
        if self._held is None:
            self._held = frame
        elif self._policy is LiveDropPolicy.DROP_OLDEST:
            self._held = frame
            self.stats.dropped += 1
        else:
            self.stats.dropped += 1
            self._flush_held()
            return SendOutcome.DROPPED
        return SendOutcome.SENT if self._flush_held() else SendOutcome.HELD

    def _flush_held(self) -> bool:
        if self._held is None or self._credits == 0:
            return False
        held, self._held = self._held, None
        self._transmit(replace(held, frames_dropped=self.stats.dropped))
        return True

    def _transmit(self, frame: FrameMessage) -> None:
        self._send(frame, self._peer_timeout_s)
        self._credits -= 1
        self.stats.sent += 1

    def _send(self, message: Message, timeout_s: float) -> None:
        if not self._socket.poll(int(timeout_s * 1000), zmq.POLLOUT):
            raise PeerTimeout(f"job {self.job_id}: worker not reachable for {timeout_s:.1f} s")
        self._socket.send_multipart(encode(message), flags=zmq.NOBLOCK, copy=False)
        if not isinstance(message, FrameMessage):
            self._linger_s = CONTROL_LINGER_S

    def _pump(self, timeout_s: float) -> None:
        """Read every pending reply from the worker, waiting up to `timeout_s` for the first one."""
        wait_ms = max(0, int(timeout_s * 1000))
        while self._socket.poll(wait_ms, zmq.POLLIN):
            wait_ms = 0
            try:
                message = decode(self._socket.recv_multipart(copy=False))
            except MessageError as exc:
                logger.warning("job %s: malformed reply from worker: %s", self.job_id, exc)
                continue
            if isinstance(message, Credit):
                self._credits += message.credits
                self._progress_at = time.monotonic()
                if self._opened:
                    self._credited += message.credits
                self._opened = True
            elif isinstance(message, EndAck):
                self._ack = message
            elif isinstance(message, ErrorMessage):
                reason = f"{message.code}: {message.message}"
                raise JobRejected(f"job {self.job_id}: worker refused the job: {reason}")
            else:
                logger.warning("job %s: unexpected %s from worker", self.job_id, message.KIND.value)


@dataclass
class _InboxJob:
    """What the inbox knows about one job it routes."""

    live: bool
    window: int
    accepted: bool = False
    received: int = 0


@dataclass
class InboxStats:
    """Counters of one worker inbox."""

    rejected: int = 0
    jobs_opened: int = 0
    jobs_ended: int = 0
    frames_dropped_on_cancel: int = 0


class FrameInbox:
    """Worker side: one ROUTER bound at the worker's endpoint, fed by the decoders of its jobs."""

    def __init__(self, context: zmq.Context, endpoint: str, queues: QueueSettings) -> None:
        self._queues = queues
        self._jobs: dict[str, _InboxJob] = {}
        self._owed: dict[str, int] = {}
        self._ready: deque[Message] = deque()
        """Messages read ahead from the socket, in arrival order, not yet handed to the worker."""
        self.stats = InboxStats()
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._socket.setsockopt(zmq.SNDHWM, queues.frame_hwm)
        self._socket.setsockopt(zmq.RCVHWM, queues.frame_hwm)
        ensure_ipc_directory(endpoint)
        self._socket.bind(endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def __enter__(self) -> FrameInbox:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def jobs(self) -> list[str]:
        """Ids of the jobs this worker currently holds (started and not ended or cancelled)."""
        return list(self._jobs)

    def accept(self, start: JobStart) -> None:
        """Open the job's window: the decoder starts sending frames once this arrives."""
        job = self._jobs[start.job_id]
        job.accepted = True
        self._reply(start.job_id, Credit(job_id=start.job_id, credits=job.window))

    def reject(self, start: JobStart, reason: str) -> None:
        """Refuse the job; the decoder's `open` raises `JobRejected` with `reason`."""
        self._jobs.pop(start.job_id, None)
        self._reply(start.job_id, ErrorMessage(code="rejected", message=reason, job_id=start.job_id))

    def receive(self, *, timeout_s: float) -> Message | None:
        """The next message for the worker, or None after `timeout_s`.

        Frames handed out by the previous call are credited back first: calling `receive` means the
        worker is done with them. Everything already on the socket is read ahead (credits bound it to
        the jobs' windows), so a Cancel queued behind a job's frames drops those frames at once instead
        of the worker segmenting them for a job that is gone.
        """
        self._return_credits()
        deadline = time.monotonic() + timeout_s
        while True:
            self._read_ahead()
            if self._ready:
                return self._hand_out(self._ready.popleft())
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                return None

    def close(self) -> None:
        self._socket.close(linger=0)

    def _read_ahead(self) -> None:
        while self._socket.poll(0, zmq.POLLIN):
            message = self._route(self._socket.recv_multipart(copy=False))
            if message is None:
                continue
            if isinstance(message, Cancel):
                self._drop_queued_frames(message.job_id)
            self._ready.append(message)

    def _drop_queued_frames(self, job_id: str) -> None:
        kept = deque(m for m in self._ready if not (isinstance(m, FrameMessage) and m.job_id == job_id))
        dropped = len(self._ready) - len(kept)
        if dropped:
            self._ready = kept
            self.stats.frames_dropped_on_cancel += dropped
            logger.info("job %s cancelled: %d queued frames dropped unsegmented", job_id, dropped)

    def _hand_out(self, message: Message) -> Message:
        """Account for a message as the worker takes it: a frame owes its credit, an end is acknowledged."""
        job_id = getattr(message, "job_id", "")
        if isinstance(message, FrameMessage):
            self._owed[job_id] = self._owed.get(job_id, 0) + 1
        elif isinstance(message, EndOfStream) and job_id in self._jobs:
            self._end(job_id, self._jobs[job_id], message)
        return message

    def _route(self, parts: list[zmq.Frame]) -> Message | None:
        identity = parts[0].bytes
        job_id = identity.decode("utf-8", errors="replace")
        try:
            message = decode(parts[1:])
            claimed = getattr(message, "job_id", job_id)
            if claimed != job_id:
                kind = message.KIND.value
                raise MessageError(f"{kind}: job id {claimed!r} sent from the socket of {job_id!r}")
            return self._track(job_id, message)
        except MessageError as exc:
            self.stats.rejected += 1
            if job_id in self._jobs and len(parts) > 1 and parts[1].bytes == MessageKind.FRAME.value.encode():
                self._owed[job_id] = self._owed.get(job_id, 0) + 1
            logger.warning("rejected message from %r: %s", job_id, exc)
            return None

    def _track(self, job_id: str, message: Message) -> Message:
        if isinstance(message, JobStart):
            self._jobs[job_id] = _InboxJob(live=message.live, window=self._queues.window(live=message.live))
            self._owed.pop(job_id, None)
            self.stats.jobs_opened += 1
            return message
        if isinstance(message, (FrameMessage, EndOfStream, Cancel)):
            job = self._jobs.get(job_id)
            if job is None or not job.accepted:
                kind = message.KIND.value
                raise MessageError(f"{kind} for job {job_id!r}, which this worker has not accepted")
            if isinstance(message, FrameMessage):
                job.received += 1
            elif isinstance(message, Cancel):
                self._jobs.pop(job_id)
                self._owed.pop(job_id, None)
        return message

    def _end(self, job_id: str, job: _InboxJob, eos: EndOfStream) -> None:
        complete = job.received == eos.frames_sent
        if not complete:
            logger.error(
                "job %s: %d frames received, sender says %d sent", job_id, job.received, eos.frames_sent
            )
        self._jobs.pop(job_id)
        self._owed.pop(job_id, None)
        self.stats.jobs_ended += 1
        self._reply(job_id, EndAck(job_id=job_id, frames_received=job.received, complete=complete))

    def _return_credits(self) -> None:
        owed, self._owed = self._owed, {}
        for job_id, credits in owed.items():
            if job_id in self._jobs:
                self._reply(job_id, Credit(job_id=job_id, credits=credits))

    def _reply(self, job_id: str, message: Message) -> None:
        try:
            self._socket.send_multipart([job_id.encode(), *encode(message)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            kind = message.KIND.value
            logger.warning("job %s: cannot reach its decoder (%s); %s not sent", job_id, exc, kind)


class ResultSender:
    """Worker side of the results channel: lossless PUSH to the writer, blocking while the writer is full."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        queues: QueueSettings,
        *,
        should_stop: Callable[[], bool] = _never_stop,
        peer_timeout_s: float = 30.0,
        poll_interval_s: float = 0.1,
    ) -> None:
        self._should_stop = should_stop
        self._peer_timeout_s = peer_timeout_s
        self._poll_ms = int(poll_interval_s * 1000)
        self._socket = context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.SNDHWM, queues.results_frames)
        self._socket.connect(endpoint)

    def send(self, message: Message) -> None:
        """Send one message; waits while the writer is full, checking `should_stop` between polls."""
        waited_since = time.monotonic()
        while not self._socket.poll(self._poll_ms, zmq.POLLOUT):
            if self._should_stop():
                raise SendCancelled(f"stopped while the writer was full ({message.KIND.value})")
            if time.monotonic() - waited_since > self._peer_timeout_s:
                raise PeerTimeout(f"writer took no message for {self._peer_timeout_s:.1f} s")
        self._socket.send_multipart(encode(message), flags=zmq.NOBLOCK, copy=False)

    def close(self) -> None:
        """Close after a short linger, so results already queued still reach a live writer."""
        self._socket.close(linger=int(self._peer_timeout_s * 1000))


class EventReporter:
    """A process's channel to the daemon's events socket (progress, heartbeats, errors).

    Best effort by design: a daemon that is gone or full is logged and the process carries on, since
    its supervisor restarts or hands back its jobs anyway.
    """

    PEER_TIMEOUT_S = 5.0
    """Longest wait for room at the daemon before a report is given up."""

    def __init__(self, context: zmq.Context, endpoint: str, queues: QueueSettings, *, sender: str) -> None:
        self._sender = ResultSender(context, endpoint, queues, peer_timeout_s=self.PEER_TIMEOUT_S)
        self._name = sender

    def report(self, message: Message) -> None:
        try:
            self._sender.send(message)
        except TransportError as exc:
            logger.warning("%s: daemon unreachable, %s not sent: %s", self._name, message.KIND.value, exc)

    def close(self) -> None:
        self._sender.close()


class ResultCollector:
    """Writer side of the results channel: one PULL bound at the writer endpoint, fair-queued over workers."""

    def __init__(self, context: zmq.Context, endpoint: str, queues: QueueSettings) -> None:
        self.rejected = 0
        self._socket = context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, queues.results_frames)
        ensure_ipc_directory(endpoint)
        self._socket.bind(endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def receive(self, *, timeout_s: float) -> Message | None:
        """The next valid message, or None after `timeout_s`; malformed ones are logged and skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                return None
            try:
                return decode(self._socket.recv_multipart(copy=False))
            except MessageError as exc:
                self.rejected += 1
                logger.warning("rejected result message: %s", exc)

    def close(self) -> None:
        self._socket.close(linger=0)


def send_control(
    context: zmq.Context, endpoint: str, message: Message, *, timeout_s: float = CONTROL_LINGER_S
) -> bool:
    """Deliver one control message (e.g. `Shutdown`) to a worker inbox; False if nobody took it in time."""
    return _deliver(context, endpoint, f"control-{time.monotonic_ns()}", message, timeout_s)


def release_job(
    context: zmq.Context, endpoint: str, job_id: str, reason: str, *, timeout_s: float = 0.5
) -> bool:
    """Cancel a job on its worker for a decoder that died without doing so (only then: the inbox hands
    the job's identity over to this connection). The worker frees the job's session and slot at once."""
    return _deliver(context, endpoint, job_id, Cancel(job_id=job_id, reason=reason), timeout_s)


def _deliver(context: zmq.Context, endpoint: str, identity: str, message: Message, timeout_s: float) -> bool:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, identity.encode())
    socket.setsockopt(zmq.IMMEDIATE, 1)
    try:
        socket.connect(endpoint)
        if not socket.poll(int(timeout_s * 1000), zmq.POLLOUT):
            return False
        socket.send_multipart(encode(message), flags=zmq.NOBLOCK)
        return True
    finally:
        socket.close(linger=int(CONTROL_LINGER_S * 1000))
