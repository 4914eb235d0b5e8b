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
  at once; its jobs are re-run from frame 0 on a live worker, and the writer's duplicate handling means
  each frame is still written exactly once. A job re-run `max_attempts` times goes to the dead-letter
  stream and fails with the reason;
* a decoder that crashes re-runs its job the same way; a decoder that reports an error (unopenable,
  corrupt or truncated source, unusable mask) fails its job with that message, and nothing else stops;
* cancel is polled every loop (`LOOP_S`), so a cancelled job is marked cancelled within a second; the
  writer discards its temporary outputs and the decoder is stopped (SIGTERM, then SIGKILL);
* if the whole daemon dies, its claimed jobs are re-taken by the next daemon after the visibility
  timeout; SIGTERM stops taking jobs, interrupts the running ones (left claimed, so they are re-run by
  the next daemon) and stops every child in order.

States: a job here is WAITING (for a ready worker: new, or re-run after a crash), RUNNING (decoder up),
or STOPPING (final state written, waiting for its decoder to exit). A child is STARTING until its first
heartbeat, then READY.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import zmq

from streamer.config import VosdConfig
from streamer.decoder import DecoderSettings, run_decoder
from streamer.jobs import Claim, HeartbeatStatus, JobProgress, JobQueue, JobState, KeyNames
from streamer.messages import Cancel, EndOfStream, ErrorMessage, Heartbeat, Message, Progress, Shutdown
from streamer.redis_server import RedisEndpoint, resolve_redis
from streamer.transport import QueueSettings, ResultCollector, ResultSender, TransportError, send_control
from streamer.writer_process import WriterSettings, output_paths, run_writer
from workers.worker import WorkerSettings, run_worker

logger = logging.getLogger(__name__)

SPAWN = multiprocessing.get_context("spawn")
LOOP_S = 0.1
"""Longest wait for events per loop turn; bounds how late a cancel or a dead process is noticed."""
EVENTS_PER_TURN = 500
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
    peer_timeout_s: float = 30.0
    end_of_stream_timeout_s: float = 30.0
    torch_threads: int = 0
    worker_idle_timeout_s: float = 60.0
    stop_grace_s: float = 1.0
    """How long a decoder gets to exit after SIGTERM before it is killed."""
    finish_timeout_s: float = 60.0
    """After its decoder ended normally, how long a job may wait for the writer to complete its outputs."""

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
            peer_timeout_s=config.transport.peer_timeout_s,
            end_of_stream_timeout_s=config.transport.end_of_stream_timeout_s,
        )
        values.update(overrides)
        return cls(**values)


class ProcessState(str, Enum):
    STARTING = "starting"
    READY = "ready"


class JobPhase(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    STOPPING = "stopping"


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
    frames_done: int = 0
    frames_total: int | None = None
    fps: float = 0.0
    dropped: int = 0
    decoder_ended_at: float | None = None
    stop_deadline: float = 0.0

    @property
    def job_id(self) -> str:
        return self.claim.job.id

    def progress(self) -> JobProgress:
        return JobProgress(self.frames_done, self.fps, self.dropped, self.frames_total)


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
        self._context: zmq.Context | None = None
        self._events: ResultCollector | None = None
        self._writer_tx: ResultSender | None = None
        self.queue: JobQueue | None = None

    def request_stop(self) -> None:
        self.stopping = True

    # ------------------------------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        self._start()
        try:
            while not self.stopping:
                self._pump_events()
                self._supervise_children()
                self._supervise_jobs()
                self._poll_cancels()
                self._heartbeat()
                self._claim()
        finally:
            self._shutdown()

    def _start(self) -> None:
        settings = self.settings
        self._redis_endpoint = resolve_redis(settings.redis_url, settings.data_dir)
        client = redis.Redis.from_url(self._redis_endpoint.url, decode_responses=True)
        self.queue = JobQueue(
            client,
            keys=KeyNames(settings.key_prefix),
            visibility_timeout_s=settings.visibility_timeout_s,
            max_attempts=settings.max_attempts,
        )
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
                idle_timeout_s=settings.worker_idle_timeout_s,
                peer_timeout_s=settings.peer_timeout_s,
            )
            self.workers.append(
                Child(
                    worker_settings.name,
                    worker_settings.inbox_endpoint,
                    lambda s=worker_settings: self._spawn(run_worker, s),
                )
            )
        for child in self._children():
            child.launch()
        logger.info(
            "daemon started consumer=%s redis=%s devices=%s checkpoint=%s",
            self.consumer,
            self._redis_endpoint.url,
            ",".join(settings.devices),
            settings.checkpoint,
        )

    def _shutdown(self) -> None:
        logger.info("daemon stopping: %d running jobs are left claimed for the next daemon", len(self.jobs))
        for job in self.jobs.values():
            self._signal_decoder(job, signal.SIGTERM)
            self._cancel_writer(job.job_id, "daemon shutdown")
        deadline = time.monotonic() + self.settings.stop_grace_s * 3
        for job in self.jobs.values():
            if job.decoder is not None:
                job.decoder.join(max(0.0, deadline - time.monotonic()))
                if job.decoder.is_alive():
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
            self.queue.redis.delete(self.queue.keys.daemon(self.consumer))
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
        if isinstance(message, Progress):
            if message.frames_total is not None:  # the decoder's report of the source length
                job.frames_total = message.frames_total
            else:  # the writer's counters
                job.frames_done = max(job.frames_done, message.frames_done)
                job.dropped = message.frames_dropped
                job.fps = message.fps
        elif isinstance(message, ErrorMessage):
            logger.warning("job=%s failed code=%s: %s", job.job_id, message.code, message.message)
            self._finish(job, JobState.FAILED, error=message.message)
        elif isinstance(message, EndOfStream):
            job.frames_done = message.frames_total
            job.dropped = message.frames_dropped
            self._finish(job, JobState.DONE, outputs=output_paths(job.outputs))

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
                if job.phase is not JobPhase.STOPPING and (child is self.writer or job.worker is child):
                    self._rerun(job, f"{child.name} died (exit code {exitcode})")
            self._publish_processes()

    def _rerun(self, job: DaemonJob, reason: str) -> None:
        """Stop what is left of this run; the job waits for a ready worker and starts again from frame 0."""
        if job.decoder is not None and job.decoder.is_alive():
            job.decoder.kill()
            job.decoder.join(2.0)
        job.decoder = None
        job.decoder_ended_at = None
        if job.runs >= self.settings.max_attempts:
            self._dead_letter(job, f"gave up after {job.runs} runs; last: {reason}")
            return
        logger.warning("job=%s re-run from frame 0 (run %d failed: %s)", job.job_id, job.runs, reason)
        job.phase = JobPhase.WAITING

    def _dead_letter(self, job: DaemonJob, reason: str) -> None:
        assert self.queue is not None
        self.queue.redis.xadd(
            self.queue.keys.dead_letters,
            {"job_id": job.job_id, "reason": reason, "deliveries": str(job.runs), "consumer": self.consumer},
            maxlen=10_000,
            approximate=True,
        )
        logger.error("job=%s dead-lettered: %s", job.job_id, reason)
        self._finish(job, JobState.FAILED, error=reason)

    # ------------------------------------------------------------------------------------------ jobs

    def _supervise_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.phase is JobPhase.WAITING:
                worker = self._pick_worker(job)
                if worker is not None and self.writer is not None and self.writer.state is ProcessState.READY:
                    self._start_decoder(job, worker)
            elif job.phase is JobPhase.RUNNING:
                assert job.decoder is not None
                if job.decoder.is_alive():
                    continue
                if job.decoder.exitcode != 0:
                    self._rerun(job, f"decoder died (exit code {job.decoder.exitcode})")
                elif job.decoder_ended_at is None:
                    job.decoder_ended_at = now
                elif now - job.decoder_ended_at > self.settings.finish_timeout_s:
                    self._finish(
                        job, JobState.FAILED, error="the writer did not complete the outputs in time"
                    )
            elif job.decoder is None or not job.decoder.is_alive():
                if job.decoder is not None:
                    job.decoder.join(0.1)
                del self.jobs[job.job_id]
            elif now > job.stop_deadline:
                job.decoder.kill()

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
        decoder_settings = DecoderSettings(
            job_id=job.job_id,
            source=job.claim.job.source,
            mask_path=job.claim.job.mask_path,
            live=job.claim.job.live,
            worker_endpoint=worker.endpoint,
            writer_endpoint=self.writer.endpoint if self.writer else "",
            events_endpoint=self.events_endpoint,
            queues=settings.queues,
            size=settings.size,
            max_objects=settings.max_objects,
            options=job.inference,
            outputs=dict(job.outputs),
            open_timeout_s=settings.open_timeout_s,
            stall_timeout_s=settings.stall_timeout_s,
            reconnect_attempts=settings.reconnect_attempts,
            reconnect_initial_delay_s=settings.reconnect_initial_delay_s,
            reconnect_max_delay_s=settings.reconnect_max_delay_s,
            peer_timeout_s=settings.peer_timeout_s,
            end_of_stream_timeout_s=settings.end_of_stream_timeout_s,
            max_frames=job.max_frames,
        )
        job.decoder = self._spawn(run_decoder, decoder_settings)
        job.phase = JobPhase.RUNNING
        logger.info(
            "job=%s run=%d worker=%s decoder pid=%s", job.job_id, job.runs, worker.name, job.decoder.pid
        )

    def _finish(
        self,
        job: DaemonJob,
        state: JobState,
        *,
        error: str | None = None,
        outputs: dict[str, str] | None = None,
    ) -> None:
        """Write the final state, then stop the job's processes; outputs are discarded unless DONE."""
        assert self.queue is not None
        self.queue.heartbeat(job.claim, job.progress())
        self.queue.finish(job.claim, state, error=error, outputs=outputs)
        logger.info("job=%s state=%s frames=%d error=%s", job.job_id, state.value, job.frames_done, error)
        self._stop_job(job, cancel_outputs=state is not JobState.DONE)

    def _stop_job(self, job: DaemonJob, *, cancel_outputs: bool) -> None:
        if cancel_outputs:
            self._cancel_writer(job.job_id, "job stopped")
        self._signal_decoder(job, signal.SIGTERM)
        job.phase = JobPhase.STOPPING
        job.stop_deadline = time.monotonic() + self.settings.stop_grace_s

    def _signal_decoder(self, job: DaemonJob, signum: int) -> None:
        if job.decoder is not None and job.decoder.is_alive() and job.decoder.pid is not None:
            try:
                os.kill(job.decoder.pid, signum)
            except ProcessLookupError:
                pass

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
        active = [job for job in self.jobs.values() if job.phase is not JobPhase.STOPPING]
        if not active:
            return
        pipe = self.queue.redis.pipeline(transaction=False)
        for job in active:
            pipe.hget(self.queue.keys.job(job.job_id), "cancel_requested")
        for job, flag in zip(active, pipe.execute()):
            if flag == "1":
                self._finish(job, JobState.CANCELLED, error="cancelled on request")

    def _heartbeat(self) -> None:
        assert self.queue is not None
        now = time.monotonic()
        if now - self._last_heartbeat < self.settings.heartbeat_s:
            return
        self._last_heartbeat = now
        self._publish_processes()
        for job in list(self.jobs.values()):
            if job.phase is JobPhase.STOPPING:
                continue
            status = self.queue.heartbeat(job.claim, job.progress())
            if status is HeartbeatStatus.CANCEL_REQUESTED:
                self._finish(job, JobState.CANCELLED, error="cancelled on request")
            elif status is HeartbeatStatus.LOST:
                logger.warning("job=%s lease lost to another consumer; stopping it here", job.job_id)
                self._stop_job(job, cancel_outputs=True)

    def _publish_processes(self) -> None:
        """Pids of this daemon's children, for `vosd status` and for operators (and tests) to find them."""
        assert self.queue is not None
        key = self.queue.keys.daemon(self.consumer)
        fields = {"pid": str(os.getpid()), "heartbeat_at": repr(time.time())}
        for child in self._children():
            if child.process is not None and child.process.pid is not None:
                fields[child.name] = str(child.process.pid)
        pipe = self.queue.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, int(self.settings.visibility_timeout_s * 1000))
        pipe.execute()

    def _claim(self) -> None:
        assert self.queue is not None
        ready = [w for w in self.workers if w.state is ProcessState.READY]
        active = sum(1 for job in self.jobs.values() if job.phase is not JobPhase.STOPPING)
        if not ready or self.writer is None or self.writer.state is not ProcessState.READY:
            return
        if active >= len(ready) * self.settings.max_jobs_per_worker:
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


def serve(settings: DaemonSettings) -> None:
    """Run the daemon in this process until SIGTERM or SIGINT."""
    daemon = Daemon(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received; shutting down", signal.Signals(signum).name)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run()
