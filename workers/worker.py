"""The worker process: one network on one device, several jobs at once, each with its own VideoSession.

Why one process per device: the network is loaded once and stays resident (no fork per job, no CUDA
re-initialisation), and XMem's per-video memory lives here, so every frame of a job is routed to this
process (streamer/transport/sockets.py) and nowhere else.

Messages in and out (FrameInbox with credit flow control; ResultSender to the writer, lossless): see
the protocol table (`streamer.transport.messages.protocol_table()`, shown in docs/architecture.md).

The loop has explicit states: STARTING (loading the network, nothing bound yet), READY, DRAINING (no new
jobs, finishing the held ones), STOPPED. The inbox is bound only once the network is loaded, so a decoder
can never send frames to a worker that cannot take them yet.

A job leaves this worker by its decoder's EndOfStream or Cancel. A decoder that dies without sending
either (SIGKILL after the daemon's stop grace, a crash) is noticed by the daemon, which sends the Cancel
in its place (`transport.release_job`); so no job holds a session here after its decoder is gone, and
there is no idle timeout that could drop a live job whose camera is reconnecting.

Batch jobs are checkpointed every `checkpoint_every_s` (streamer/output/resume.py): the session state goes
next to the job's outputs, and a JobStart with ``outputs["resume_from"]`` = N loads it and continues at frame
N, bit-identically, instead of starting over from the first-frame mask.

Per-job options are daemon-wide inference options overridden by the job's own (JobStart.options), so one
job can use a different `mem_every` without touching the others. Two job options are not XMem's: `mode`
(streamer/modes.py; absent: xmem with a mask, auto without) and `objects` (auto mode's object count).
Jobs without a mask run an AutoSession (TMO seeds and watches XMem) or a TMOOnlySession (workers/auto);
TMO's network is loaded on the first such job and then shared, like XMem's. Their masks carry the
session's state and seed events (MaskMessage.auto), and their checkpoints hold the whole auto state.
A job whose mask or options cannot be used is rejected at JobStart with a sentence that says why; the
decoder reports it to the daemon.

Size: about 440 lines; job setup (three modes), stepping, checkpoints and heartbeats all act on the one
job table of this loop, and the mode-specific parts are already in workers/auto and workers/xmem.
"""

from __future__ import annotations

import contextlib
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

from streamer.config import AutoSection, TransportConfig, WorkersConfig, XMemConfig
from streamer.lifeline import exit_with_parent
from streamer.masks import FirstMaskError, check_first_mask
from streamer.modes import Mode, ModeError, choose_mode
from streamer.output.resume import checkpoint_path, pending_path, resumable
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
    Shutdown,
)
from streamer.transport.sockets import EventReporter, FrameInbox, ResultSender, TransportError

logger = logging.getLogger(__name__)

RECEIVE_TIMEOUT_S = 0.2
"""Longest wait for a message before the loop checks heartbeats and stop requests again."""


class WorkerState(str, Enum):
    """Lifecycle of a worker process, logged on every change."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs; built by the daemon from `VosdConfig`, picklable for spawn."""

    name: str
    """Process name used in heartbeats and logs, e.g. ``worker-0``."""
    device: str
    """Torch device the network lives on: ``cpu``, ``cuda:0``..."""
    checkpoint: str
    """Path of the XMem checkpoint (official state-dict format)."""
    inbox_endpoint: str
    writer_endpoint: str
    events_endpoint: str
    transport: TransportConfig = field(default_factory=TransportConfig)
    """Queue sizes and peer timeouts, the config's own section."""
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    """Working size, jobs per worker, object limit, checkpoint period: the config's own section."""
    xmem: XMemConfig = field(default_factory=XMemConfig)
    """Daemon-wide XMem inference options; a job's own options override them."""
    auto: AutoSection = field(default_factory=AutoSection)
    """TMO's model and the thresholds of jobs without a mask (modes auto and tmo)."""
    threads: int = 0
    """Torch intra-op threads; 0: on CPU every core but one (`default_threads`), else torch's default."""
    heartbeat_s: float = 1.0


@dataclass
class WorkerJob:
    """One job held by this worker: its session and counters."""

    start: JobStart
    session: Any
    first_mask: np.ndarray | None
    mode: Mode = Mode.XMEM
    frames: int = 0
    seconds: float = 0.0
    checkpoint_due: float | None = None
    """Monotonic time of the next checkpoint; None for jobs that are not checkpointed."""
    pending: Path | None = None
    """The last checkpoint saved here, until the writer promotes it."""


JOB_MODE_OPTIONS = frozenset({"mode", "objects"})
"""Job options that choose the session (streamer/modes.py, auto mode's object count), not XMem options."""


class JobSetupError(ValueError):
    """A job this worker cannot run; the text goes into the job's error field."""


class Worker:
    """One worker loop: receive, step the job's session, send the mask; heartbeat between messages."""

    def __init__(self, settings: WorkerSettings, network: Any, context: zmq.Context) -> None:
        self.settings = settings
        self.network = network
        self.tmo_network: Any = None
        """TMO's network, loaded by the first job without a mask."""
        self.state = WorkerState.STARTING
        self.jobs: dict[str, WorkerJob] = {}
        self._stop_requested = False
        self._last_heartbeat = 0.0
        self._since_heartbeat = (0, 0.0)
        """Frames segmented and model seconds spent since the last heartbeat (its model_fps)."""
        self.events = EventReporter(
            context, settings.events_endpoint, settings.transport.queues(), sender=f"worker={settings.name}")
        self.results = ResultSender(
            context,
            settings.writer_endpoint,
            settings.transport.queues(),
            should_stop=lambda: self._stop_requested and self.state is not WorkerState.DRAINING,
            peer_timeout_s=settings.transport.peer_timeout_s,
        )
        self.inbox = FrameInbox(context, settings.inbox_endpoint, settings.transport.queues())
        self._set_state(WorkerState.READY)

    def request_stop(self, *, drain: bool) -> None:
        """Called from the signal handler or on Shutdown: drain finishes held jobs, otherwise leave now."""
        if drain and self.state is WorkerState.READY:
            self._set_state(WorkerState.DRAINING)
        else:
            self._stop_requested = True

    def run(self) -> None:
        """The loop; returns when stopped, or when draining and no job is left."""
        try:
            while not self._stop_requested and not (self.state is WorkerState.DRAINING and not self.jobs):
                self._heartbeat()
                message = self.inbox.receive(timeout_s=RECEIVE_TIMEOUT_S)
                if message is not None:
                    self._handle(message)
        finally:
            self._set_state(WorkerState.STOPPED)
            self._heartbeat(force=True)
            self.inbox.close()
            self.results.close()
            self.events.close()

    def _handle(self, message: Message) -> None:
        if isinstance(message, FrameMessage):
            self._frame(message)
        elif isinstance(message, JobStart):
            self._open(message)
        elif isinstance(message, (EndOfStream, Cancel)):
            self._close(message)
        elif isinstance(message, Shutdown):
            logger.info(
                "worker=%s shutdown reason=%s drain=%s", self.settings.name, message.reason, message.drain
            )
            self.request_stop(drain=message.drain)
        else:
            logger.warning("worker=%s unexpected message kind=%s", self.settings.name, message.KIND.value)

    def _open(self, start: JobStart) -> None:
        self.jobs.pop(start.job_id, None)  # a re-run of a job this worker held replaces it
        try:
            if self.state is not WorkerState.READY:
                raise JobSetupError(f"worker {self.settings.name} is shutting down")
            limit = self.settings.workers.jobs_per_worker
            if len(self.jobs) >= limit:
                raise JobSetupError(f"worker {self.settings.name} already runs {limit} jobs")
            try:
                mode = choose_mode(start.mask is not None, start.options.get("mode"))
            except ModeError as exc:
                raise JobSetupError(str(exc)) from None
            if start.mask is not None:
                try:
                    check_first_mask(start.mask, start.source_size, self.settings.workers.max_objects)
                except FirstMaskError as exc:
                    raise JobSetupError(str(exc)) from None
            session = self._session(start.options, mode)
            resume_from = start.outputs.get("resume_from", 0)
            if resume_from:
                load_checkpoint(session, start, resume_from)
        except JobSetupError as exc:
            logger.warning("job=%s rejected reason=%s", start.job_id, exc)
            self.inbox.reject(start, str(exc))
            return
        first_mask = None if resume_from else start.mask
        job = WorkerJob(start=start, session=session, first_mask=first_mask, mode=mode)
        if self.settings.workers.checkpoint_every_s > 0 and resumable(start.outputs, start.live):
            job.checkpoint_due = time.monotonic() + self.settings.workers.checkpoint_every_s
        self.jobs[start.job_id] = job
        self.inbox.accept(start)
        logger.info(
            "job=%s accepted worker=%s live=%s mode=%s jobs=%d resume_from=%d",
            start.job_id,
            self.settings.name,
            start.live,
            mode.value,
            len(self.jobs),
            resume_from,
        )

    def _session(self, options: dict[str, Any], mode: Mode) -> Any:
        from workers.xmem.config import InferenceConfig
        from workers.xmem.session import VideoSession

        overrides = {k: v for k, v in options.items() if k not in JOB_MODE_OPTIONS}
        try:
            config = InferenceConfig(**{**self.settings.xmem.model_dump(), **overrides})
        except (TypeError, ValueError) as exc:
            raise JobSetupError(f"invalid inference options {sorted(overrides)}: {exc}") from None
        size, device = self.settings.workers.size, self.settings.device
        fast = self.settings.workers.engine == "fast"
        if mode is Mode.XMEM:
            return VideoSession(self.network, config, size=size, device=device, fast=fast)
        from workers.auto.build import mask_free_session

        try:
            auto = self.settings.auto.auto_config(
                **({"objects": options["objects"]} if "objects" in options else {}))
        except (TypeError, ValueError) as exc:
            raise JobSetupError(f"invalid option 'objects': {exc}") from None
        return mask_free_session(mode.value, tmo=self._tmo(), flow=self.settings.auto.flow, device=device,
                                 xmem=self.network, inference=config, auto=auto, size=size, fast=fast)

    def _tmo(self) -> Any:
        """TMO's network, loaded once; JobSetupError when its checkpoint cannot be used."""
        if self.tmo_network is None:
            from workers.auto.build import load_tmo

            try:
                self.tmo_network = load_tmo(self.settings.auto.model_path, self.settings.device)
            except Exception as exc:  # a missing or broken checkpoint fails this job, not the worker
                raise JobSetupError(f"cannot load the TMO model: {exc}") from None
            logger.info("worker=%s TMO model loaded", self.settings.name)
        return self.tmo_network

    def _frame(self, frame: FrameMessage) -> None:
        job = self.jobs.get(frame.job_id)
        if job is None:
            return  # the job failed here; its decoder is being stopped by the daemon
        started = time.perf_counter()
        mask, job.first_mask = job.first_mask, None
        try:
            # Source-size frame and mask: the session does all preprocessing, as in `vosd segment` and eval.
            if job.mode is Mode.XMEM:
                result, auto = job.session.step(frame.image, mask), None
            else:
                result = job.session.step(frame.image)
                auto = auto_summary(job.mode, job.session, result)
        except Exception as exc:  # any failure of one job must not take the worker down
            logger.exception("job=%s frame=%d step failed", frame.job_id, frame.index)
            self._fail(frame.job_id, "inference", f"segmenting frame {frame.index} failed: {exc}")
            return
        elapsed = time.perf_counter() - started
        job.frames += 1
        job.seconds += elapsed
        frames, seconds = self._since_heartbeat
        self._since_heartbeat = (frames + 1, seconds + elapsed)
        self._send_result(
            frame.job_id,
            MaskMessage(
                job_id=frame.job_id,
                index=frame.index,
                mask=result.index_mask,
                pts=frame.pts,
                capture_time=frame.capture_time,
                timings={"step": elapsed},
                auto=auto,
            ),
        )
        if job.checkpoint_due is not None and time.monotonic() >= job.checkpoint_due:
            self._checkpoint(job, frame.index + 1)

    def _checkpoint(self, job: WorkerJob, frame: int) -> None:
        """Save the session after frames 0..frame-1 and tell the writer, which promotes the file once
        those frames' masks are written (streamer/output/resume.py). A failed save costs only the resume."""
        from workers.xmem.session import save_state

        job_id = job.start.job_id
        started = time.perf_counter()
        path = pending_path(job.start.outputs, frame)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            size = save_state({"job_id": job_id, "frame": frame, "session": job.session.state_dict()}, path)
        except OSError as exc:
            logger.warning("job=%s checkpoint at frame %d not saved: %s", job_id, frame, exc)
        else:
            logger.info("job=%s checkpoint frame=%d bytes=%d ms=%.1f", job_id, frame, size,
                        1000 * (time.perf_counter() - started))
            job.pending = path
            self._send_result(job_id, CheckpointSaved(job_id=job_id, frame=frame))
        job.checkpoint_due = time.monotonic() + self.settings.workers.checkpoint_every_s

    def _close(self, message: EndOfStream | Cancel) -> None:
        job = self.jobs.pop(message.job_id, None)
        if job is not None and job.pending is not None and isinstance(message, Cancel):
            # The writer discards the outputs on this Cancel and may have deleted the checkpoints
            # already: leave nothing behind in the job's directory.
            job.pending.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                job.pending.parent.rmdir()
        if job is not None:
            fps = job.frames / job.seconds if job.seconds else 0.0
            logger.info(
                "job=%s %s frames=%d model_fps=%.1f", message.job_id, message.KIND.value, job.frames, fps
            )
        self._send_result(message.job_id, message)

    def _send_result(self, job_id: str, message: Message) -> None:
        try:
            self.results.send(message)
        except TransportError as exc:
            self._fail(job_id, "writer", f"cannot hand results to the writer: {exc}")

    def _fail(self, job_id: str, code: str, text: str) -> None:
        self.jobs.pop(job_id, None)
        self.events.report(ErrorMessage(code=code, message=text, job_id=job_id))

    def _heartbeat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_heartbeat >= self.settings.heartbeat_s:
            self._last_heartbeat = now
            frames, seconds = self._since_heartbeat
            self._since_heartbeat = (0, 0.0)
            heartbeat = Heartbeat(
                process=self.settings.name,
                sent_at=time.time(),
                jobs=tuple(self.jobs),
                model_fps=frames / seconds if seconds > 0 else None,
                gpu_memory_bytes=gpu_memory_bytes(self.settings.device),
            )
            self.events.report(heartbeat)

    def _set_state(self, state: WorkerState) -> None:
        self.state = state
        logger.info("worker=%s state=%s", self.settings.name, state.value)


def auto_summary(mode: Mode, session: Any, result: Any) -> dict[str, Any]:
    """MaskMessage.auto of a mask-free job's frame: mode, state, seed count and frame, and its event."""
    summary: dict[str, Any] = {"mode": mode.value, "state": result.state, "seeds": session.seeds,
                               "last_seed_frame": session.last_seed}
    if result.event is not None:
        summary["event"] = result.event
    return summary


def gpu_memory_bytes(device: str) -> int | None:
    """Memory torch has allocated on a CUDA `device`, for the daemon's metrics; None on other devices."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.memory_allocated(torch.device(device)))


def default_threads(device: str, cores: int) -> int:
    """Torch threads of a worker on `device` when not configured: on CPU, leave one core to the decoders and
    the writer (decoding, H.264 encoding). Torch's threads wait for each other at every operation, so
    one of them preempted by those processes stalls the rest: on 2 cores the daemon ran at 0.64 of
    `vosd segment`'s FPS with 2 threads and above it with 1 (benchmarks/pipeline.py, docs/architecture.md)."""
    return max(1, cores - 1) if device == "cpu" else cores


def load_checkpoint(session: Any, start: JobStart, frame: int) -> None:
    """Continue `session` from the job's checkpoint at `frame`; JobSetupError when it cannot be used."""
    from workers.xmem.session import load_state

    path = checkpoint_path(start.outputs, frame)
    try:
        state = load_state(path)
        if (state.get("job_id"), state.get("frame")) != (start.job_id, frame):
            raise ValueError(f"it belongs to job {state.get('job_id')} frame {state.get('frame')}")
        session.load_state_dict(state["session"])
    except Exception as exc:  # a missing, foreign or incompatible file: the daemon restarts from frame 0
        raise JobSetupError(f"cannot resume from checkpoint {path}: {exc}") from None


def run_worker(settings: WorkerSettings) -> None:
    """Entry point of the spawned worker process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {settings.name} %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the daemon, which shuts us down in order
    exit_with_parent()  # a daemon killed with SIGKILL takes its children along
    import torch

    from workers.xmem.checkpoint import load_network

    threads = settings.threads or default_threads(settings.device, torch.get_num_threads())
    torch.set_num_threads(threads)
    logger.info("worker=%s torch threads=%d", settings.name, threads)
    fast = settings.workers.engine == "fast"
    network = load_network(settings.checkpoint, device=settings.device, fast=fast)
    context = zmq.Context()
    worker = Worker(settings, network, context)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        worker.request_stop(drain=False)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        worker.run()
    finally:
        context.term()
