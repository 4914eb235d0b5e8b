"""`vosd serve`: the supervisor. Claims jobs from Redis, runs each through decoder -> worker -> writer.

Processes (spawned, never forked; see docs/architecture.md)::

    supervisor (this module)  one loop: events -> processes -> jobs -> cancels -> heartbeats -> claims
    writer                    streamer/writer_process.py, one
    worker-<i>                workers/worker.py, one per configured device
    decoder                   streamer/decoder.py, one per running job

Every child reports on one PULL socket bound here (`events_endpoint`): Heartbeat, Progress, Error, and
the writer's EndOfStream, which means a job's outputs are complete under their final names. The
supervisor is the only Redis client: it claims jobs (streamer/jobs.py), keeps their leases alive with
heartbeats that also carry progress, and writes final states.

Failure handling, the part users of other queues complain about:

* a worker or the writer that dies (or stops sending heartbeats for `process_timeout_s`) is restarted
  at once; its jobs are re-run on a live worker, from their last checkpoint when the outputs still hold
  its frames (streamer/resume.py; `resumed_from` in the status) or else from frame 0, and the writer's
  duplicate handling means each frame is still written exactly once. A job re-run `max_attempts` times is
  given up (`JobQueue.give_up`: failed, with a dead-letter entry). The status hash counts every run (`runs`);
* a decoder that crashes re-runs its job the same way; a decoder that reports an error (unopenable,
  corrupt or truncated source, unusable mask) fails its job with that message, and nothing else stops.
  A decoder that died without cancelling its job on the worker (crash, SIGKILL) is replaced there by
  `transport.release_job`, so the worker frees the job's session at once;
* cancel is polled every loop (`LOOP_S`), so a cancelled job is stopped within a second; so is stop
  (`vosd stop`), which SIGUSR1s the decoder once it is up: it ends the stream normally and the job becomes
  DONE with ``stopped_early`` (cancelled if no frame had been sent yet);
* if the whole daemon dies, its claimed jobs are re-taken by the next daemon after the visibility
  timeout. SIGTERM drains instead: no more claims, every job here is stopped and handed back to the
  queue (`JobQueue.hand_back`: queued, re-taken at once by the next daemon, the attempt not counted),
  then every child is stopped in order and the process exits 0.

One place decides how a stopping job ends. Stopping (cancel, failure, give-up, hand-back) SIGTERMs the
decoder and asks the writer to discard the outputs; the job waits in SETTLING for the writer's answer,
which is serialised with its own completion of the outputs: Cancel (discarded) applies the intended
ending, EndOfStream (completed just before) makes the job DONE with its outputs. So the final state and
the files on disk always agree, whichever of cancel and completion came first.

Live jobs: every written frame's latency (decoded to mask written) comes with the writer's Progress;
the median and 95th percentile over the last `LATENCY_WINDOW` frames go into the status hash.

States: a job here is WAITING (for a ready worker: new, or re-run after a crash), RUNNING (decoder up),
SETTLING (stopping; waiting for the writer's answer), or STOPPING (Redis updated, waiting for its
decoder to exit). A child is STARTING until its first heartbeat, then READY.

Size: over 1,000 lines, to be split (structure issue #12) into the job lifecycle with its transition
table, child-process supervision, and settings; kept whole this stop so the reliability fixes stayed one
reviewable change.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import math
import multiprocessing
import multiprocessing.context
import os
import shutil
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any, cast

import psutil
import redis
import zmq
from redis.typing import EncodableT, FieldT

from streamer import resume
from streamer.config import VosdConfig, redact_url
from streamer.decoder import DecoderSettings, run_decoder
from streamer.jobs import (
    LATENCY_BUCKETS_S,
    Claim,
    DaemonLoad,
    HeartbeatStatus,
    JobNotFound,
    JobProgress,
    JobQueue,
    JobState,
    KeyNames,
)
from streamer.messages import (
    Cancel,
    EndOfStream,
    ErrorMessage,
    Heartbeat,
    Message,
    Progress,
    Shutdown,
    SourceStatus,
)
from streamer.redis_link import REDIS_ERRORS, RedisLink
from streamer.redis_server import RedisEndpoint, RedisStartError, Role, resolve_redis
from streamer.transport import (
    QueueSettings,
    ResultCollector,
    ResultSender,
    TransportError,
    release_job,
    send_control,
)
from streamer.writer import PART_SUFFIX
from streamer.writer_process import WriterSettings, output_paths, remove_if_empty, run_writer
from workers.worker import WorkerSettings, run_worker

logger = logging.getLogger(__name__)

SPAWN = multiprocessing.get_context("spawn")
LOOP_S = 0.1
"""Longest wait for events per loop turn; bounds how late a cancel or a dead process is noticed."""
REDIS_SOCKET_TIMEOUT_S = 5.0
"""Longest a Redis call may block the supervisor loop before it counts as an outage."""
EVENTS_PER_TURN = 500
STALE_LOAD_S = 3600.0
"""A peer's published load older than this (beyond the visibility timeout) is removed from the registry."""
LATENCY_WINDOW = 300
"""Recent frames of a live job whose latencies give the percentiles in its status (about 10 s of video)."""
WRITER_OPTIONS = frozenset({"output_dir", "overlay", "masks", "rle"})
"""Per-job options the writer uses; `max_frames` goes to the decoder; everything else is an XMem option."""


@dataclass(frozen=True)
class DaemonSettings:
    """Everything `vosd serve` needs, typed; `commands.serve_command` builds it from `VosdConfig`."""

    checkpoint: str
    """XMem checkpoint every worker loads."""
    data_dir: Path
    output_dir: Path
    """Job outputs go to ``<output_dir>/<job id>/`` unless the job names its own directory."""
    worker_endpoint: str
    """Endpoint template each worker binds; ``{index}`` is the worker number."""
    writer_endpoint: str
    events_endpoint: str
    redis_url: str = ""
    """Empty: a private embedded Redis under ``<data_dir>/redis``."""
    key_prefix: str = "vosd"
    devices: tuple[str, ...] = ("cpu",)
    """One worker process per entry."""
    inference: dict[str, Any] = field(default_factory=dict)
    size: int = 480
    max_jobs_per_worker: int = 2
    max_objects: int = 16
    queues: QueueSettings = field(default_factory=QueueSettings)
    outputs: tuple[str, ...] = ("overlay", "masks", "rle")
    """Outputs a job writes unless its options say otherwise."""
    overlay_alpha: float = 0.5
    crf: int = 20
    heartbeat_s: float = 0.5
    """Lease refresh and status-hash update period for running jobs."""
    visibility_timeout_s: float = 15.0
    max_attempts: int = 3
    process_timeout_s: float = 60.0
    """A worker or the writer silent for this long is killed and restarted."""
    open_timeout_s: float = 10.0
    stall_timeout_s: float = 10.0
    reconnect_attempts: int | None = None
    reconnect_initial_delay_s: float = 0.5
    reconnect_max_delay_s: float = 10.0
    reconnect_give_up_s: float | None = 300.0
    peer_timeout_s: float = 30.0
    end_of_stream_timeout_s: float = 30.0
    torch_threads: int = 0
    stop_grace_s: float = 1.0
    """How long a decoder gets to exit after SIGTERM before it is killed."""
    settle_timeout_s: float = 5.0
    """How long a stopping job waits for the writer's answer (outputs discarded or already complete);
    past it, the writer is presumed gone and the job ends as intended."""
    finish_timeout_s: float = 60.0
    """After its decoder ended normally, how long a job may wait for the writer to write another frame
    (each frame written restarts the wait) or complete its outputs."""
    checkpoint_every_s: float = 30.0
    """How often workers checkpoint a batch job's session, so a re-run resumes there; 0 = never."""

    @classmethod
    def from_config(cls, config: VosdConfig, **overrides: Any) -> DaemonSettings:
        """The daemon's view of `VosdConfig`; `overrides` set fields the config file does not have."""
        from workers.training.weights import model_path

        checkpoint = str(model_path(config.workers.model_path))
        writer = config.writer
        outputs = tuple(
            name
            for name, on in (
                ("overlay", writer.write_overlay),
                ("masks", writer.write_pngs),
                ("rle", writer.write_rle_json),
            )
            if on
        )
        values: dict[str, Any] = dict(
            checkpoint=checkpoint,
            data_dir=config.data_dir,
            output_dir=config.data_dir / "outputs",
            worker_endpoint=config.transport.worker_endpoint.replace("{data_dir}", str(config.data_dir)),
            writer_endpoint=config.writer_endpoint(),
            events_endpoint=config.events_endpoint(),
            redis_url=config.redis.url,
            key_prefix=config.redis.key_prefix,
            devices=tuple(config.workers.devices),
            inference=config.xmem.model_dump(),
            size=config.workers.size,
            max_jobs_per_worker=config.workers.jobs_per_worker,
            max_objects=config.workers.max_objects,
            queues=config.transport.queues(),
            outputs=outputs,
            overlay_alpha=writer.overlay_alpha,
            crf=writer.crf,
            heartbeat_s=config.redis.heartbeat_interval_s,
            visibility_timeout_s=config.redis.visibility_timeout_s,
            max_attempts=config.redis.max_attempts,
            open_timeout_s=config.sources.open_timeout_s,
            stall_timeout_s=config.sources.stall_timeout_s,
            reconnect_attempts=config.sources.reconnect_attempts or None,
            reconnect_initial_delay_s=config.sources.reconnect_initial_delay_s,
            reconnect_max_delay_s=config.sources.reconnect_max_delay_s,
            reconnect_give_up_s=config.sources.reconnect_give_up_s or None,
            peer_timeout_s=config.transport.peer_timeout_s,
            end_of_stream_timeout_s=config.transport.end_of_stream_timeout_s,
            checkpoint_every_s=config.workers.checkpoint_every_s,
        )
        values.update(overrides)
        return cls(**values)


class ProcessState(str, Enum):
    STARTING = "starting"
    READY = "ready"


class JobPhase(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SETTLING = "settling"
    STOPPING = "stopping"


class Outcome(str, Enum):
    """How a stopping job leaves this daemon, unless the writer answers that its outputs are complete."""

    FAILED = "failed"
    GIVEN_UP = "given_up"
    """Failed for good, with a dead-letter entry (too many runs)."""
    CANCELLED = "cancelled"
    HANDED_BACK = "handed_back"
    """Back to the queue for the next daemon (graceful stop)."""


@dataclass(frozen=True)
class Ending:
    """Why and how a job is being stopped; applied once the writer has answered (module docstring)."""

    outcome: Outcome
    reason: str


@dataclass
class Child:
    """A long-lived child (worker or writer) and what the supervisor knows about it."""

    name: str
    endpoint: str
    start: Callable[[], multiprocessing.context.SpawnProcess]
    process: multiprocessing.context.SpawnProcess | None = None
    state: ProcessState = ProcessState.STARTING
    started_at: float = 0.0
    last_heartbeat: float = 0.0
    restarts: int = 0
    model_fps: float | None = None
    """A worker's frames per second of model time, from its last heartbeat (None: the writer, or idle)."""
    gpu_memory_bytes: int | None = None
    """A CUDA worker's allocated GPU memory, from its last heartbeat."""

    def launch(self) -> None:
        self.process = self.start()
        self.state = ProcessState.STARTING
        self.started_at = self.last_heartbeat = time.monotonic()


@dataclass
class DaemonJob:
    """A claimed job: where it runs, its decoder, and the counters sent with each heartbeat."""

    claim: Claim
    outputs: dict[str, Any]
    inference: dict[str, Any]
    max_frames: int | None
    phase: JobPhase = JobPhase.WAITING
    worker: Child | None = None
    decoder: multiprocessing.context.SpawnProcess | None = None
    runs: int = 0
    """Runs started by this daemon; the status hash adds the runs of earlier holders."""
    resumed_from: int | None = None
    """Frame the latest run here started at (a checkpoint's, or 0); None before the first run."""
    frames_done: int = 0
    frames_total: int | None = None
    fps: float = 0.0
    dropped: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    latency_counts: list[int] | None = None
    """Frames per bucket of `LATENCY_BUCKETS_S` (+Inf last), over this daemon's runs of a live job."""
    latency_sum_s: float = 0.0
    decoder_ended_at: float | None = None
    ending: Ending | None = None
    final: tuple[JobState | Outcome, str | None] | None = None
    """How the job left this daemon, once decided; kept until written to Redis (it may be away)."""
    settle_deadline: float = 0.0
    stop_deadline: float = 0.0
    source: SourceStatus | None = None
    """The current run's decoder's last report; None until it is up (and can take SIGUSR1)."""
    stop_requested: bool = False
    stop_signalled: bool = False
    """SIGUSR1 sent to the current run's decoder (`vosd stop`)."""

    @property
    def job_id(self) -> str:
        return self.claim.job.id

    @property
    def active(self) -> bool:
        """Still meant to run here: not stopping."""
        return self.phase in (JobPhase.WAITING, JobPhase.RUNNING)

    def record_latency(self, seconds: float) -> None:
        """One written frame of a live job: into the recent window (percentiles) and the histogram."""
        self.latencies.append(seconds)
        if self.latency_counts is None:
            self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds

    def progress(self) -> JobProgress:
        ordered = sorted(self.latencies)
        return JobProgress(
            self.frames_done,
            self.fps,
            self.dropped,
            self.frames_total,
            runs=self.claim.job.runs + self.runs,
            latency_p50_s=percentile(ordered, 0.50),
            latency_p95_s=percentile(ordered, 0.95),
            source_state=self.source.state if self.source else None,
            reconnect_attempts=self.source.attempts if self.source else None,
            source_error=self.source.error if self.source else None,
            last_frame_at=self.source.last_frame_at if self.source else None,
            resumed_from=self.resumed_from,
            latency_counts=None if self.latency_counts is None else tuple(self.latency_counts),
            latency_sum_s=None if self.latency_counts is None else self.latency_sum_s,
        )


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values; None when there are none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class JobOptionError(ValueError):
    """A per-job option the daemon cannot use; the text becomes the job's error."""


def split_options(
    job_id: str, options: dict[str, Any], output_dir: Path, default_outputs: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """(writer outputs, XMem overrides, max_frames) from a job's options."""
    outputs: dict[str, Any] = {"dir": str(options.get("output_dir") or output_dir / job_id)}
    for name in ("overlay", "masks", "rle"):
        value = options.get(name, name in default_outputs)
        if not isinstance(value, bool):
            raise JobOptionError(f"option {name!r} must be true or false, got {value!r}")
        outputs[name] = value
    if not (outputs["overlay"] or outputs["masks"] or outputs["rle"]):
        raise JobOptionError("the job asks for no output: enable at least one of overlay, masks, rle")
    max_frames = options.get("max_frames")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1
    ):
        raise JobOptionError(f"option 'max_frames' must be a positive integer, got {max_frames!r}")
    inference = {k: v for k, v in options.items() if k not in WRITER_OPTIONS and k != "max_frames"}
    return outputs, inference, max_frames


class Daemon:
    """The supervisor loop; `run` blocks until `request_stop` (SIGTERM/SIGINT in `serve`)."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.stopping = False
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.jobs: dict[str, DaemonJob] = {}
        self.workers: list[Child] = []
        self.writer: Child | None = None
        self.events_endpoint = settings.events_endpoint
        self._last_heartbeat = 0.0
        self._redis_endpoint: RedisEndpoint | None = None
        self.link: RedisLink | None = None
        self._redis_stop_wait_s = settings.visibility_timeout_s
        """On SIGTERM with Redis away, how long to wait for it before exiting without handing jobs back."""
        self._context: zmq.Context | None = None
        self._events: ResultCollector | None = None
        self._writer_tx: ResultSender | None = None
        self.queue: JobQueue | None = None

    def request_stop(self) -> None:
        """Begin the drain (SIGTERM/SIGINT): see the module docstring."""
        self.stopping = True

    # ------------------------------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """The loop; after `request_stop` it goes on until every job here is handed back and reaped."""
        self._start()
        try:
            while not (self.stopping and not self.jobs):
                self._drain()
                self._pump_events()
                self._supervise_children()
                self._supervise_jobs()
                self._sync_redis()
                if self.stopping and self.link is not None and self.link.away_for() > self._redis_stop_wait_s:
                    logger.error(
                        "redis still away after %.0f s; exiting without handing back %d job(s): they are "
                        "re-taken from the queue after the visibility timeout",
                        self.link.away_for(),
                        len(self.jobs),
                    )
                    break
        finally:
            self._shutdown()

    def _sync_redis(self) -> None:
        """Every Redis read and write of a loop turn, in one place: an outage pauses only this step
        (streamer/redis_link.py), and claims wait for the first full round after Redis is back, so
        this daemon's own jobs get their leases refreshed before anything could take them over."""
        assert self.link is not None
        if not self.link.due():
            return
        recovering = not self.link.up
        try:
            self._write_finals()
            self._poll_cancels()
            self._heartbeat(force=recovering)
            if not recovering:
                self._claim()
        except REDIS_ERRORS as exc:
            self.link.failed(exc)
            return
        self.link.succeeded()

    def _start(self) -> None:
        settings = self.settings
        self._redis_endpoint = resolve_redis(settings.redis_url, settings.data_dir, role=Role.DAEMON)
        self.link = RedisLink(self._redis_endpoint)
        client = redis.Redis.from_url(
            self._redis_endpoint.url,
            decode_responses=True,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        )
        while self.queue is None:
            try:
                self.queue = JobQueue(
                    client,
                    keys=KeyNames(settings.key_prefix),
                    visibility_timeout_s=settings.visibility_timeout_s,
                    max_attempts=settings.max_attempts,
                )
            except redis.AuthenticationError as exc:  # waiting would not help: stop with the reason
                raise RedisStartError(
                    f"Redis at {redact_url(self._redis_endpoint.url)} refused the credentials ({exc}); check "
                    "the password (and ACL user) in redis.url / VOSD_REDIS__URL"
                ) from None
            except REDIS_ERRORS as exc:  # an external server not up yet: wait for it, as for an outage
                if self.stopping:
                    raise
                self.link.failed(exc)
                self.link.wait_until_due()
        self.link.succeeded()
        self._sweep_leftovers()
        self._context = zmq.Context()
        self._events = ResultCollector(self._context, self.events_endpoint, settings.queues)
        writer_settings = WriterSettings(
            collector_endpoint=settings.writer_endpoint,
            events_endpoint=self.events_endpoint,
            queues=settings.queues,
            alpha=settings.overlay_alpha,
            crf=settings.crf,
        )
        self.writer = Child(
            "writer", writer_settings.collector_endpoint, lambda: self._spawn(run_writer, writer_settings)
        )
        self._writer_tx = ResultSender(
            self._context, self.writer.endpoint, settings.queues, peer_timeout_s=2.0
        )
        for index, device in enumerate(settings.devices):
            worker_settings = WorkerSettings(
                name=f"worker-{index}",
                device=device,
                checkpoint=settings.checkpoint,
                inbox_endpoint=settings.worker_endpoint.format(index=index),
                writer_endpoint=self.writer.endpoint,
                events_endpoint=self.events_endpoint,
                queues=settings.queues,
                inference=settings.inference,
                size=settings.size,
                max_jobs=settings.max_jobs_per_worker,
                max_objects=settings.max_objects,
                threads=settings.torch_threads,
                peer_timeout_s=settings.peer_timeout_s,
                checkpoint_every_s=settings.checkpoint_every_s,
            )
            self.workers.append(
                Child(
                    worker_settings.name,
                    worker_settings.inbox_endpoint,
                    functools.partial(self._spawn, run_worker, worker_settings),
                )
            )
        for child in self._children():
            child.launch()
        logger.info(
            "daemon started consumer=%s redis=%s devices=%s checkpoint=%s",
            self.consumer,
            redact_url(self._redis_endpoint.url),
            ",".join(settings.devices),
            settings.checkpoint,
        )

    def _sweep_leftovers(self) -> None:
        """Remove temporary outputs (``*.part``) that an earlier daemon on this data_dir left when it was
        killed, for jobs that have ended since (finished by another daemon, failed, cancelled). A job that is
        still queued or running keeps them: whoever resumes it may use them."""
        assert self.queue is not None
        output_dir = self.settings.output_dir
        if not output_dir.is_dir():
            return
        for directory in sorted(p for p in output_dir.iterdir() if p.is_dir()):
            parts = [  # checkpoints (streamer/resume.py) are only worth anything with the .part outputs
                p for p in directory.iterdir() if p.name.endswith(PART_SUFFIX) or p.name == resume.DIRECTORY
            ]
            if not parts:
                continue
            try:
                state = self.queue.get(directory.name).state
            except JobNotFound:
                state = None
            if state is not None and not state.final:
                continue
            for part in parts:
                if part.is_dir():
                    shutil.rmtree(part, ignore_errors=True)
                else:
                    part.unlink(missing_ok=True)
            remove_if_empty(directory)
            logger.info("removed %d leftover temporary output(s) of ended job %s", len(parts), directory.name)

    def _drain(self) -> None:
        if self.stopping:
            for job in list(self.jobs.values()):
                if job.active:
                    self._end(job, Ending(Outcome.HANDED_BACK, "daemon stopping"))

    def _shutdown(self) -> None:
        """Stop every child in order; jobs are all handed back by now unless `run` failed."""
        logger.info("daemon stopping: %d jobs still here", len(self.jobs))
        for job in self.jobs.values():
            if job.decoder is not None and job.decoder.is_alive():
                job.decoder.kill()
                job.decoder.join(1.0)
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive() and self._context is not None:
                send_control(self._context, worker.endpoint, Shutdown(reason="daemon shutdown", drain=False))
        if self._writer_tx is not None:
            self._send_writer(Shutdown(reason="daemon shutdown", drain=False))
        for child in self._children():
            if child.process is not None:
                child.process.join(5.0)
                if child.process.is_alive():
                    child.process.kill()
                    child.process.join(2.0)
        if self.queue is not None:
            try:
                self.queue.redis.delete(self.queue.keys.daemon(self.consumer))
                self.queue.forget_daemon(self.consumer)
            except REDIS_ERRORS as exc:
                logger.warning("daemon key not removed (redis away: %s); it expires by itself", exc)
            self.queue.redis.close()
        for closable in (self._writer_tx, self._events):
            if closable is not None:
                closable.close()
        if self._context is not None:
            self._context.term()
        if self._redis_endpoint is not None:
            self._redis_endpoint.close()
        logger.info("daemon stopped")

    def _spawn(self, target: Callable[[Any], None], argument: Any) -> multiprocessing.context.SpawnProcess:
        process = SPAWN.Process(target=target, args=(argument,), daemon=True)
        process.start()
        return process

    def _children(self) -> list[Child]:
        return ([self.writer] if self.writer else []) + self.workers

    # ------------------------------------------------------------------------------------------ events

    def _pump_events(self) -> None:
        assert self._events is not None
        timeout = LOOP_S
        for _ in range(EVENTS_PER_TURN):
            message = self._events.receive(timeout_s=timeout)
            if message is None:
                return
            timeout = 0.0
            self._on_event(message)

    def _on_event(self, message: Message) -> None:
        if isinstance(message, Heartbeat):
            for child in self._children():
                if child.name == message.process:
                    child.last_heartbeat = time.monotonic()
                    child.model_fps = message.model_fps
                    child.gpu_memory_bytes = message.gpu_memory_bytes
                    if child.state is ProcessState.STARTING:
                        child.state = ProcessState.READY
                        logger.info(
                            "process=%s ready pid=%s",
                            child.name,
                            child.process.pid if child.process else None,
                        )
            return
        job = self.jobs.get(getattr(message, "job_id", None) or "")
        if job is None or job.phase is JobPhase.STOPPING:
            return
        if isinstance(message, EndOfStream):  # the writer's: outputs complete under their final names
            self._settle(job, complete=message)
        elif isinstance(message, Cancel):  # the writer's answer to a Cancel: outputs discarded
            if job.phase is JobPhase.SETTLING:
                self._settle(job, complete=None)
        elif isinstance(message, ErrorMessage):
            if message.code == "rejected" and job.outputs.get("resume_from"):
                resume.discard(job.outputs)  # the worker could not use the checkpoint: start over
                self._rerun(job, f"resuming was refused: {message.message}")
                return
            logger.warning("job=%s failed code=%s: %s", job.job_id, message.code, message.message)
            outcome = Outcome.CANCELLED if message.code == "stopped" else Outcome.FAILED
            self._end(job, Ending(outcome, message.message))
        elif isinstance(message, SourceStatus):
            job.source = message
            self._stop_early(job)
        elif isinstance(message, Progress):
            if message.frames_total is not None:  # the decoder's report of the source length
                job.frames_total = message.frames_total
            else:  # the writer's counters
                if message.frames_done > job.frames_done and job.decoder_ended_at is not None:
                    job.decoder_ended_at = time.monotonic()  # the writer is still making progress
                job.frames_done = max(job.frames_done, message.frames_done)
                job.dropped = message.frames_dropped
                job.fps = message.fps
                if job.claim.job.live and message.latency_s is not None:
                    job.record_latency(message.latency_s)

    # ------------------------------------------------------------------------------------------ children

    def _supervise_children(self) -> None:
        now = time.monotonic()
        for child in self._children():
            assert child.process is not None
            silent = now - child.last_heartbeat
            if child.process.is_alive() and silent < self.settings.process_timeout_s:
                continue
            if child.process.is_alive():
                logger.error("process=%s silent for %.0f s; killing it", child.name, silent)
                child.process.kill()
            child.process.join(2.0)
            exitcode = child.process.exitcode
            logger.error("process=%s died exitcode=%s; restarting", child.name, exitcode)
            child.restarts += 1
            child.launch()
            for job in list(self.jobs.values()):
                if job.active and (child is self.writer or job.worker is child):
                    self._rerun(job, f"{child.name} died (exit code {exitcode})")
            self._last_heartbeat = 0.0  # publish the new pid with the next Redis round

    def _rerun(self, job: DaemonJob, reason: str) -> None:
        """Stop what is left of this run; the job waits for a ready worker and starts again from frame 0."""
        if job.decoder is not None:
            if job.decoder.is_alive():
                job.decoder.kill()
            job.decoder.join(2.0)
            self._release_worker(job)
        job.decoder = None
        job.decoder_ended_at = None
        if job.runs >= self.settings.max_attempts:
            self._end(job, Ending(Outcome.GIVEN_UP, f"gave up after {job.runs} runs; last: {reason}"))
            return
        logger.warning("job=%s re-run (run %d failed: %s)", job.job_id, job.runs, reason)
        job.phase = JobPhase.WAITING

    def _release_worker(self, job: DaemonJob) -> None:
        """After a decoder died without ending its job (killed, crashed), cancel the job on its worker."""
        worker = job.worker
        if job.decoder is None or job.decoder.exitcode == 0 or worker is None or self._context is None:
            return
        if worker.state is ProcessState.READY and worker.process is not None and worker.process.is_alive():
            reason = f"decoder exited with code {job.decoder.exitcode}"
            if not release_job(self._context, worker.endpoint, job.job_id, reason):
                logger.warning("job=%s could not be released on %s", job.job_id, worker.name)

    # ------------------------------------------------------------------------------------------ jobs

    def _supervise_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.phase is JobPhase.WAITING:
                worker = self._pick_worker(job)
                if worker is not None and self.writer is not None and self.writer.state is ProcessState.READY:
                    self._start_decoder(job, worker)
                continue
            if job.phase is JobPhase.RUNNING:
                assert job.decoder is not None
                if job.decoder.is_alive():
                    continue
                if job.decoder.exitcode != 0:
                    self._rerun(job, f"decoder died (exit code {job.decoder.exitcode})")
                elif job.decoder_ended_at is None:
                    job.decoder_ended_at = now
                elif now - job.decoder_ended_at > self.settings.finish_timeout_s:
                    self._end(job, Ending(Outcome.FAILED, "the writer did not complete the outputs in time"))
                continue
            decoder_alive = job.decoder is not None and job.decoder.is_alive()
            if decoder_alive and now > job.stop_deadline:
                assert job.decoder is not None
                job.decoder.kill()
            if job.phase is JobPhase.SETTLING and now > job.settle_deadline:
                logger.warning("job=%s: no answer from the writer; ending it as intended", job.job_id)
                self._settle(job, complete=None)
            elif job.phase is JobPhase.STOPPING and not decoder_alive and job.final is None:
                if job.decoder is not None:
                    job.decoder.join(0.1)
                    self._release_worker(job)
                del self.jobs[job.job_id]

    def _pick_worker(self, job: DaemonJob) -> Child | None:
        load = {id(w): 0 for w in self.workers}
        for other in self.jobs.values():
            if other.worker is not None and other is not job and other.phase is not JobPhase.WAITING:
                load[id(other.worker)] += 1
        ready = [
            w
            for w in self.workers
            if w.state is ProcessState.READY and load[id(w)] < self.settings.max_jobs_per_worker
        ]
        return min(ready, key=lambda w: load[id(w)], default=None)

    def _start_decoder(self, job: DaemonJob, worker: Child) -> None:
        settings = self.settings
        job.runs += 1
        job.worker = worker
        job.outputs["attempt"] = job.runs
        ran_before = job.runs > 1 or job.claim.job.runs > 0
        resumable = ran_before and resume.resumable(job.outputs, job.claim.job.live)
        job.resumed_from = resume.resume_point(job.outputs) if resumable else 0
        job.outputs["resume_from"] = job.resumed_from
        decoder_settings = DecoderSettings(
            job_id=job.job_id,
            source=job.claim.job.source,
            mask_path=job.claim.job.mask_path,
            live=job.claim.job.live,
            worker_endpoint=worker.endpoint,
            writer_endpoint=self.writer.endpoint if self.writer else "",
            events_endpoint=self.events_endpoint,
            queues=settings.queues,
            max_objects=settings.max_objects,
            options=job.inference,
            outputs=dict(job.outputs),
            open_timeout_s=settings.open_timeout_s,
            stall_timeout_s=settings.stall_timeout_s,
            reconnect_attempts=settings.reconnect_attempts,
            reconnect_initial_delay_s=settings.reconnect_initial_delay_s,
            reconnect_max_delay_s=settings.reconnect_max_delay_s,
            reconnect_give_up_s=settings.reconnect_give_up_s,
            peer_timeout_s=settings.peer_timeout_s,
            end_of_stream_timeout_s=settings.end_of_stream_timeout_s,
            max_frames=job.max_frames,
        )
        job.source, job.stop_signalled = None, False
        job.decoder = self._spawn(run_decoder, decoder_settings)
        job.phase = JobPhase.RUNNING
        logger.info(
            "job=%s run=%d worker=%s decoder pid=%s from frame %d",
            job.job_id, job.runs, worker.name, job.decoder.pid, job.resumed_from,
        )
        self._last_heartbeat = 0.0  # records the new run in the status hash with the next Redis round

    def _end(self, job: DaemonJob, ending: Ending) -> None:
        """Stop the job here: SIGTERM its decoder, ask the writer to discard its outputs, and wait in
        SETTLING for the writer's answer (module docstring), at most `settle_timeout_s`."""
        if not job.active:
            return
        now = time.monotonic()
        job.ending = ending
        job.phase = JobPhase.SETTLING
        job.settle_deadline = now + self.settings.settle_timeout_s
        job.stop_deadline = now + self.settings.stop_grace_s
        self._signal_decoder(job, signal.SIGTERM)
        self._cancel_writer(job.job_id, ending.reason)

    def _settle(self, job: DaemonJob, *, complete: EndOfStream | None) -> None:
        """Decide how the job leaves this daemon: DONE when the writer completed its outputs (`complete`),
        whatever else was intended; otherwise the intended ending. `_write_finals` records it in Redis;
        meanwhile the decoder is stopped."""
        if complete is not None:
            job.frames_done = complete.frames_total
            job.dropped = complete.frames_dropped
            job.final = (JobState.DONE, None)
        else:
            assert job.ending is not None
            job.final = (job.ending.outcome, job.ending.reason)
        resume.discard(job.outputs)  # ended here (or handed back with its outputs discarded)
        if job.phase is not JobPhase.SETTLING:  # completed while running: the decoder is exiting by itself
            job.stop_deadline = time.monotonic() + self.settings.stop_grace_s
            self._signal_decoder(job, signal.SIGTERM)
        job.phase = JobPhase.STOPPING

    def _write_finals(self) -> None:
        """Write the decided endings (`_settle`) to Redis; a job leaves `self.jobs` only once written."""
        assert self.queue is not None
        for job in self.jobs.values():
            if job.final is None:
                continue
            self.queue.heartbeat(job.claim, job.progress())
            outcome, reason = job.final
            if outcome is JobState.DONE:
                outputs = output_paths(job.outputs)
                self.queue.finish(job.claim, JobState.DONE, outputs=outputs, stopped_early=job.stop_signalled)
            elif outcome is Outcome.HANDED_BACK:
                self.queue.hand_back(job.claim)
            elif outcome is Outcome.GIVEN_UP:
                self.queue.give_up(job.claim, reason or "")
            else:
                state = JobState.CANCELLED if outcome is Outcome.CANCELLED else JobState.FAILED
                self.queue.finish(job.claim, state, error=reason)
            logger.info(
                "job=%s state=%s frames=%d reason=%s", job.job_id, outcome.value, job.frames_done, reason
            )
            job.final = None

    def _stop_lost(self, job: DaemonJob) -> None:
        """Another consumer holds the job now: stop here without touching its status or its outputs' fate."""
        logger.warning("job=%s lease lost to another consumer; stopping it here", job.job_id)
        self._cancel_writer(job.job_id, "lease lost")
        self._signal_decoder(job, signal.SIGTERM)
        job.phase = JobPhase.STOPPING
        job.stop_deadline = time.monotonic() + self.settings.stop_grace_s

    def _signal_decoder(self, job: DaemonJob, signum: int) -> None:
        if job.decoder is not None and job.decoder.is_alive() and job.decoder.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.decoder.pid, signum)

    def _cancel_writer(self, job_id: str, reason: str) -> None:
        self._send_writer(Cancel(job_id=job_id, reason=reason))

    def _send_writer(self, message: Message) -> None:
        assert self._writer_tx is not None
        try:
            self._writer_tx.send(message)
        except TransportError as exc:
            logger.warning("writer unreachable, %s not sent: %s", message.KIND.value, exc)

    # ------------------------------------------------------------------------------------------ Redis

    def _poll_cancels(self) -> None:
        assert self.queue is not None
        active = [job for job in self.jobs.values() if job.active]
        if not active:
            return
        pipe = self.queue.redis.pipeline(transaction=False)
        for job in active:
            pipe.hmget(self.queue.keys.job(job.job_id), "cancel_requested", "stop_requested")
        for job, (cancel, stop) in zip(active, pipe.execute(), strict=True):
            if cancel == "1":
                self._end(job, Ending(Outcome.CANCELLED, "cancelled on request"))
            elif stop == "1":
                job.stop_requested = True
                self._stop_early(job)

    def _stop_early(self, job: DaemonJob) -> None:
        """`vosd stop`: a job not started yet is cancelled (nothing produced); a running one's decoder,
        once up (its first SourceStatus), gets SIGUSR1 and ends the stream normally, keeping the outputs."""
        if not job.stop_requested or job.stop_signalled:
            return
        if job.phase is JobPhase.WAITING:
            reason = "stopped on request before it started: nothing was produced"
            self._end(job, Ending(Outcome.CANCELLED, reason))
        elif job.phase is JobPhase.RUNNING and job.source is not None:
            logger.info("job=%s stop requested: the decoder finishes the stream now", job.job_id)
            job.stop_signalled = True
            self._signal_decoder(job, signal.SIGUSR1)

    def _heartbeat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.settings.heartbeat_s:
            return
        self._last_heartbeat = now
        self._publish_processes()
        for job in list(self.jobs.values()):
            if job.phase is not JobPhase.STOPPING:
                self._keep_lease(job)

    def _keep_lease(self, job: DaemonJob) -> None:
        """Heartbeat one job with its progress; act on a cancel request or a lost lease."""
        assert self.queue is not None
        status = self.queue.heartbeat(job.claim, job.progress())
        if status is HeartbeatStatus.CANCEL_REQUESTED:
            self._end(job, Ending(Outcome.CANCELLED, "cancelled on request"))
        elif status is HeartbeatStatus.LOST:
            self._stop_lost(job)

    def _publish_processes(self) -> None:
        """Pids of this daemon's children, for `vosd status` and for operators (and tests) to find them."""
        assert self.queue is not None
        key = self.queue.keys.daemon(self.consumer)
        fields = {"pid": str(os.getpid()), "heartbeat_at": repr(time.time())}
        if self.link is not None:
            fields.update(self.link.status_fields())
        for child in self._children():
            if child.process is not None and child.process.pid is not None:
                fields[child.name] = str(child.process.pid)
                with contextlib.suppress(psutil.Error):  # exiting right now: no figure this round
                    fields[f"rss:{child.name}"] = str(psutil.Process(child.process.pid).memory_info().rss)
            fields[f"restarts:{child.name}"] = str(child.restarts)  # for /metrics (streamer/api)
            if child.model_fps is not None:
                fields[f"model_fps:{child.name}"] = f"{child.model_fps:.3f}"
            if child.gpu_memory_bytes is not None:
                fields[f"gpu_memory:{child.name}"] = str(child.gpu_memory_bytes)
        pipe = self.queue.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=cast("dict[FieldT, EncodableT]", fields))
        pipe.pexpire(key, int(self.settings.visibility_timeout_s * 1000))
        pipe.execute()
        self._publish_load()

    def _running(self) -> int:
        return sum(1 for job in self.jobs.values() if job.phase is not JobPhase.STOPPING)

    def _capacity(self) -> int:
        ready = sum(1 for w in self.workers if w.state is ProcessState.READY)
        writer_ready = self.writer is not None and self.writer.state is ProcessState.READY
        return ready * self.settings.max_jobs_per_worker if writer_ready and not self.stopping else 0

    def _publish_load(self) -> None:
        """Running jobs and capacity, for peers sharing the queue to decide who takes the next job."""
        assert self.queue is not None
        self.queue.publish_load(self.consumer, DaemonLoad(self._running(), self._capacity(), time.time()))

    def _less_loaded_peer(self) -> str | None:
        """A live peer with room and fewer running jobs than this daemon, which should take the next job
        instead: without this, whichever daemon polls first takes every job (4 jobs went 3 to 1)."""
        assert self.queue is not None
        running = self._running()
        if running == 0:
            return None
        peer = None
        for name, load in self.queue.daemon_loads().items():
            if load is None or not load.fresh(self.settings.visibility_timeout_s + STALE_LOAD_S):
                self.queue.forget_daemon(name)  # long gone, or unreadable
            elif (
                name != self.consumer
                and load.fresh(self.settings.visibility_timeout_s)
                and load.running < min(running, load.capacity)
            ):
                peer = name
        return peer

    def _claim(self) -> None:
        assert self.queue is not None
        if self._running() >= self._capacity() or self._less_loaded_peer() is not None:
            return
        claim = self.queue.claim(self.consumer, block_s=0.0)
        if claim is None:
            return
        logger.info("job=%s claimed attempt=%d source=%s", claim.job.id, claim.attempt, claim.job.source)
        try:
            outputs, inference, max_frames = split_options(
                claim.job.id, claim.job.options, self.settings.output_dir, self.settings.outputs
            )
        except JobOptionError as exc:
            self.queue.finish(claim, JobState.FAILED, error=str(exc))
            return
        self.jobs[claim.job.id] = DaemonJob(
            claim=claim, outputs=outputs, inference=inference, max_frames=max_frames
        )
        self._publish_load()  # at once, so a peer deciding right now sees this job


def serve(settings: DaemonSettings) -> None:
    """Run the daemon in this process until SIGTERM or SIGINT."""
    daemon = Daemon(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received; shutting down", signal.Signals(signum).name)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run()
