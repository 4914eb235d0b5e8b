"""The supervisor loop of `vosd serve`: events in, children and jobs supervised, Redis synced.

One loop, five steps a turn (`Daemon.run`): hand every job back when stopping, take in the children's
events, restart dead children, move jobs through their phases (streamer/daemon/lifecycle.py), then one
Redis round (`_sync_redis`). Only that last step talks to Redis, so an outage pauses it alone; every
other step keeps the running jobs going. The reasons behind each rule are in the package docstring.

Size: about 580 lines, all of them the loop's steps. The Redis round acts on job phases (a cancel ends a
job, a lost lease stops it) and the event handlers do too, so both stay with the transitions they drive;
what has no such tie lives beside it (settings, lifecycle, children, presence).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from types import FrameType

import redis
import zmq

from streamer.config import redact_url
from streamer.daemon.children import Child, spawn
from streamer.daemon.lifecycle import (
    DaemonJob,
    Ending,
    JobOptionError,
    Outcome,
    RunPhase,
    split_options,
)
from streamer.daemon.presence import Presence
from streamer.daemon.settings import DaemonSettings
from streamer.ingest.decoder import run_decoder
from streamer.output import resume
from streamer.output.writer import PART_SUFFIX
from streamer.output.writer_process import output_paths, remove_if_empty, run_writer
from streamer.queue.jobs import JobNotFound, JobQueue, JobState, KeyNames, LeaseStatus
from streamer.queue.redis_link import REDIS_ERRORS, RedisLink
from streamer.queue.redis_server import RedisEndpoint, RedisStartError, Role, resolve_redis
from streamer.transport.messages import (
    Cancel,
    ErrorMessage,
    Heartbeat,
    Message,
    OutputsComplete,
    Progress,
    Shutdown,
    SourceStatus,
)
from streamer.transport.sockets import (
    ResultCollector,
    ResultSender,
    TransportError,
    release_job,
    send_control,
)
from workers.worker import run_worker

logger = logging.getLogger(__name__)

LOOP_S = 0.1
"""Longest wait for events per loop turn; bounds how late a cancel or a dead process is noticed."""
REDIS_SOCKET_TIMEOUT_S = 5.0
"""Longest a Redis call may block the supervisor loop before it counts as an outage."""
EVENTS_PER_TURN = 500


class Daemon:
    """The supervisor loop; `run` blocks until `request_stop` (SIGTERM/SIGINT in `serve`)."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.stopping = False
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.jobs: dict[str, DaemonJob] = {}
        self.workers: list[Child] = []
        self.writer: Child | None = None
        self._last_renewal = 0.0
        self._redis_endpoint: RedisEndpoint | None = None
        self.link: RedisLink | None = None
        self._redis_stop_wait_s = self.config.redis.visibility_timeout_s
        """On SIGTERM with Redis away, how long to wait for it before exiting without handing jobs back."""
        self._context: zmq.Context | None = None
        self._events: ResultCollector | None = None
        self._writer_tx: ResultSender | None = None
        self.queue: JobQueue | None = None
        self.presence: Presence | None = None

    def request_stop(self) -> None:
        """Begin the graceful stop (SIGTERM/SIGINT): every job here is handed back, then children stop."""
        self.stopping = True

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> None:
        """The loop; after `request_stop` it goes on until every job here is handed back and reaped."""
        self._start()
        try:
            while not (self.stopping and not self.jobs):
                self._hand_back_all()
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

    def _start(self) -> None:
        redis_config = self.config.redis
        self._redis_endpoint = resolve_redis(redis_config.url, self.config.data_dir, role=Role.DAEMON)
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
                    keys=KeyNames(redis_config.key_prefix),
                    visibility_timeout_s=redis_config.visibility_timeout_s,
                    max_attempts=redis_config.max_attempts,
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
        self.presence = Presence(self.queue, self.consumer, redis_config.visibility_timeout_s)
        self._sweep_leftovers()
        self._context = zmq.Context()
        queues = self.config.transport.queues()
        self._events = ResultCollector(self._context, self.config.events_endpoint(), queues)
        writer_settings = self.settings.writer_settings()
        self.writer = Child(
            "writer", writer_settings.collector_endpoint, lambda: spawn(run_writer, writer_settings)
        )
        self._writer_tx = ResultSender(self._context, self.writer.endpoint, queues, peer_timeout_s=2.0)
        for index in range(len(self.config.workers.devices)):
            worker_settings = self.settings.worker_settings(index)
            self.workers.append(
                Child(
                    worker_settings.name,
                    worker_settings.inbox_endpoint,
                    lambda settings=worker_settings: spawn(run_worker, settings),  # type: ignore[misc]
                )
            )
        for child in self._children():
            child.launch()
        logger.info(
            "daemon started consumer=%s redis=%s devices=%s checkpoint=%s",
            self.consumer,
            redact_url(self._redis_endpoint.url),
            ",".join(self.config.workers.devices),
            self.settings.checkpoint,
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
            # checkpoints (streamer/output/resume.py) are only worth anything with the .part outputs
            parts = [
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

    def _hand_back_all(self) -> None:
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
            if worker.alive and self._context is not None:
                send_control(self._context, worker.endpoint, Shutdown(reason="daemon shutdown", drain=False))
        if self._writer_tx is not None:
            self._send_writer(Shutdown(reason="daemon shutdown", drain=False))
        for child in self._children():
            child.join_or_kill(5.0)
        if self.queue is not None:
            assert self.presence is not None
            try:
                self.presence.withdraw()
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
                    child.on_heartbeat(message)
            return
        job = self.jobs.get(getattr(message, "job_id", None) or "")
        if job is None or job.phase is RunPhase.STOPPING:
            return
        if isinstance(message, OutputsComplete):
            self._settle(job, complete=message)
        elif isinstance(message, Cancel):  # the writer's answer to a Cancel: outputs discarded
            if job.phase is RunPhase.SETTLING:
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
            if message.frames_total is not None:
                job.frames_total = message.frames_total
            self._stop_early(job)
        elif isinstance(message, Progress):
            if message.frames_done > job.frames_done and job.decoder_ended_at is not None:
                job.decoder_ended_at = time.monotonic()  # the writer is still making progress
            job.frames_done = max(job.frames_done, message.frames_done)
            job.frames_dropped = message.frames_dropped
            job.fps = message.fps
            if job.claim.job.live and message.latency_s is not None:
                job.record_latency(message.latency_s)
            if message.auto is not None:
                job.auto = message.auto

    # ------------------------------------------------------------------------------------------ children

    def _supervise_children(self) -> None:
        for child in self._children():
            reason = child.restart_if_dead(self.settings.process_timeout_s)
            if reason is None:
                continue
            for job in list(self.jobs.values()):
                if job.active and (child is self.writer or job.worker is child):
                    self._rerun(job, reason)
            self._last_renewal = 0.0  # publish the new pid with the next Redis round

    def _release_worker(self, job: DaemonJob) -> None:
        """After a decoder died without ending its job (killed, crashed), cancel the job on its worker."""
        worker = job.worker
        if job.decoder is None or job.decoder.exitcode == 0 or worker is None or self._context is None:
            return
        if worker.ready and worker.alive:
            reason = f"decoder exited with code {job.decoder.exitcode}"
            if not release_job(self._context, worker.endpoint, job.job_id, reason):
                logger.warning("job=%s could not be released on %s", job.job_id, worker.name)

    # ------------------------------------------------------------------------------------------ jobs

    def _supervise_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.phase is RunPhase.WAITING:
                worker = self._pick_worker(job)
                if worker is not None and self.writer is not None and self.writer.ready:
                    self._start_decoder(job, worker)
                continue
            if job.phase is RunPhase.RUNNING:
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
            if job.phase is RunPhase.SETTLING and now > job.settle_deadline:
                logger.warning("job=%s: no answer from the writer; ending it as intended", job.job_id)
                self._settle(job, complete=None)
            elif job.phase is RunPhase.STOPPING and not decoder_alive and job.final is None:
                if job.decoder is not None:
                    job.decoder.join(0.1)
                    self._release_worker(job)
                del self.jobs[job.job_id]

    def _pick_worker(self, job: DaemonJob) -> Child | None:
        load = {id(w): 0 for w in self.workers}
        for other in self.jobs.values():
            if other.worker is not None and other is not job and other.phase is not RunPhase.WAITING:
                load[id(other.worker)] += 1
        limit = self.config.workers.jobs_per_worker
        ready = [w for w in self.workers if w.ready and load[id(w)] < limit]
        return min(ready, key=lambda w: load[id(w)], default=None)

    def _start_decoder(self, job: DaemonJob, worker: Child) -> None:
        job.runs += 1
        job.worker = worker
        job.outputs["attempt"] = job.runs
        ran_before = job.runs > 1 or job.claim.job.runs > 0
        resumable = ran_before and resume.resumable(job.outputs, job.claim.job.live)
        job.resumed_from = resume.resume_point(job.outputs) if resumable else 0
        job.outputs["resume_from"] = job.resumed_from
        decoder_settings = self.settings.decoder_settings(
            job.claim.job,
            worker.endpoint,
            options=job.inference,
            outputs=dict(job.outputs),
            max_frames=job.max_frames,
        )
        job.source, job.stop_signalled = None, False
        job.decoder = spawn(run_decoder, decoder_settings)
        job.enter(RunPhase.RUNNING)
        logger.info(
            "job=%s run=%d worker=%s decoder pid=%s from frame %d",
            job.job_id, job.runs, worker.name, job.decoder.pid, job.resumed_from,
        )
        self._last_renewal = 0.0  # records the new run in the status hash with the next Redis round

    def _rerun(self, job: DaemonJob, reason: str) -> None:
        """Stop what is left of this run; the job waits for a ready worker and starts again, from its last
        checkpoint when there is one (streamer/output/resume.py) or else from frame 0."""
        if job.phase is RunPhase.WAITING:  # no run to stop: it already waits for a worker
            return
        if job.decoder is not None:
            if job.decoder.is_alive():
                job.decoder.kill()
            job.decoder.join(2.0)
            self._release_worker(job)
        job.decoder = None
        job.decoder_ended_at = None
        if job.runs >= self.config.redis.max_attempts:
            self._end(job, Ending(Outcome.GIVEN_UP, f"gave up after {job.runs} runs; last: {reason}"))
            return
        logger.warning("job=%s re-run (run %d failed: %s)", job.job_id, job.runs, reason)
        job.enter(RunPhase.WAITING)

    def _end(self, job: DaemonJob, ending: Ending) -> None:
        """Stop the job here: SIGTERM its decoder, ask the writer to discard its outputs, and wait in
        SETTLING for the writer's answer (streamer/daemon/lifecycle.py), at most `settle_timeout_s`."""
        if not job.active:
            return
        now = time.monotonic()
        job.ending = ending
        job.enter(RunPhase.SETTLING)
        job.settle_deadline = now + self.settings.settle_timeout_s
        job.stop_deadline = now + self.settings.stop_grace_s
        self._signal_decoder(job, signal.SIGTERM)
        self._cancel_writer(job.job_id, ending.reason)

    def _settle(self, job: DaemonJob, *, complete: OutputsComplete | None) -> None:
        """Decide how the job leaves this daemon: DONE when the writer completed its outputs (`complete`),
        whatever else was intended; otherwise the intended ending. `_write_finals` records it in Redis;
        meanwhile the decoder is stopped."""
        if complete is not None:
            job.frames_done = complete.frames_written
            job.frames_dropped = complete.frames_dropped
            job.final = (JobState.DONE, None)
        else:
            assert job.ending is not None
            job.final = (job.ending.outcome, job.ending.reason)
        resume.discard(job.outputs)  # ended here (or handed back with its outputs discarded)
        if job.phase is not RunPhase.SETTLING:  # completed while running: the decoder is exiting by itself
            job.stop_deadline = time.monotonic() + self.settings.stop_grace_s
            self._signal_decoder(job, signal.SIGTERM)
        job.enter(RunPhase.STOPPING)

    def _stop_lost(self, job: DaemonJob) -> None:
        """Another consumer holds the job now: stop here without touching its status or its outputs' fate."""
        logger.warning("job=%s lease lost to another consumer; stopping it here", job.job_id)
        self._cancel_writer(job.job_id, "lease lost")
        self._signal_decoder(job, signal.SIGTERM)
        job.enter(RunPhase.STOPPING)
        job.stop_deadline = time.monotonic() + self.settings.stop_grace_s

    def _stop_early(self, job: DaemonJob) -> None:
        """`vosd stop`: a job not started yet is cancelled (nothing produced); a running one's decoder,
        once up (its first SourceStatus), gets SIGUSR1 and ends the stream normally, keeping the outputs."""
        if not job.stop_requested or job.stop_signalled:
            return
        if job.phase is RunPhase.WAITING:
            reason = "stopped on request before it started: nothing was produced"
            self._end(job, Ending(Outcome.CANCELLED, reason))
        elif job.phase is RunPhase.RUNNING and job.source is not None:
            logger.info("job=%s stop requested: the decoder finishes the stream now", job.job_id)
            job.stop_signalled = True
            self._signal_decoder(job, signal.SIGUSR1)

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

    def _sync_redis(self) -> None:
        """Every Redis read and write of a loop turn, in one place: an outage pauses only this step
        (streamer/queue/redis_link.py), and claims wait for the first full round after Redis is back, so
        this daemon's own jobs get their leases renewed before anything could take them over."""
        assert self.link is not None
        if not self.link.due():
            return
        recovering = not self.link.up
        try:
            self._write_finals()
            self._poll_requests()
            self._renew_leases(force=recovering)
            if not recovering:
                self._claim()
        except REDIS_ERRORS as exc:
            self.link.failed(exc)
            return
        self.link.succeeded()

    def _write_finals(self) -> None:
        """Write the decided endings (`_settle`) to Redis; a job leaves `self.jobs` only once written."""
        assert self.queue is not None
        for job in self.jobs.values():
            if job.final is None:
                continue
            self.queue.renew_lease(job.claim, job.progress())
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

    def _poll_requests(self) -> None:
        """Cancel and stop requests (`vosd cancel`, `vosd stop`) for the jobs still meant to run here."""
        assert self.queue is not None
        active = [job for job in self.jobs.values() if job.active]
        for job, request in zip(active, self.queue.requests([job.job_id for job in active]), strict=True):
            if request.cancel:
                self._end(job, Ending(Outcome.CANCELLED, "cancelled on request"))
            elif request.stop:
                job.stop_requested = True
                self._stop_early(job)

    def _renew_leases(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_renewal < self.config.redis.lease_renewal_s:
            return
        self._last_renewal = now
        self._publish()
        for job in list(self.jobs.values()):
            if job.phase is not RunPhase.STOPPING:
                self._renew_lease(job)

    def _renew_lease(self, job: DaemonJob) -> None:
        """Renew one job's lease with its progress; act on a cancel request or a lost lease."""
        assert self.queue is not None
        status = self.queue.renew_lease(job.claim, job.progress())
        if status is LeaseStatus.CANCEL_REQUESTED:
            self._end(job, Ending(Outcome.CANCELLED, "cancelled on request"))
        elif status is LeaseStatus.LOST:
            self._stop_lost(job)

    def _publish(self) -> None:
        assert self.presence is not None
        link_fields = self.link.status_fields() if self.link is not None else {}
        self.presence.publish_processes(self._children(), link_fields)
        self.presence.publish_load(self._running(), self._capacity())

    def _running(self) -> int:
        return sum(1 for job in self.jobs.values() if job.phase is not RunPhase.STOPPING)

    def _capacity(self) -> int:
        ready = sum(1 for w in self.workers if w.ready)
        writer_ready = self.writer is not None and self.writer.ready
        return ready * self.config.workers.jobs_per_worker if writer_ready and not self.stopping else 0

    def _claim(self) -> None:
        assert self.queue is not None and self.presence is not None
        if self._running() >= self._capacity() or self.presence.less_loaded_peer(self._running()) is not None:
            return
        claim = self.queue.claim(self.consumer, block_s=0.0)
        if claim is None:
            return
        logger.info("job=%s claimed attempt=%d source=%s", claim.job.id, claim.attempt, claim.job.source)
        try:
            outputs, inference, max_frames = split_options(
                claim.job.id, claim.job.options, self.settings.output_dir, self.settings.default_outputs
            )
        except JobOptionError as exc:
            self.queue.finish(claim, JobState.FAILED, error=str(exc))
            return
        self.jobs[claim.job.id] = DaemonJob(
            claim=claim, outputs=outputs, inference=inference, max_frames=max_frames
        )
        self.presence.publish_load(self._running(), self._capacity())  # at once, so a peer sees this job


def serve(settings: DaemonSettings) -> None:
    """Run the daemon in this process until SIGTERM or SIGINT."""
    daemon = Daemon(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received; shutting down", signal.Signals(signum).name)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run()
