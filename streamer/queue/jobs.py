"""Jobs in Redis: one status hash per job, a Redis Stream with a consumer group as the queue.

The status hash ``<prefix>:job:<id>`` is the one record of a job (`JobRecord`). The stream only carries
job ids to deliver; an entry is acknowledged and deleted in the same server-side script that moves the
job to a final state, so the queue and the record cannot disagree.

Delivery is at least once. A consumer (one per worker process; names must be unique per process
incarnation, e.g. ``f"{host}-{device}-{pid}"``) takes work with `JobQueue.claim`, which

1. re-takes entries that another consumer left idle longer than ``visibility_timeout_s`` (XAUTOCLAIM):
   that consumer died, so the job restarts from the beginning with ``attempts`` one higher; an entry
   delivered more than ``max_attempts`` times goes to the dead-letter stream and its job fails with
   the reason instead. An entry handed back by a stopping holder (`JobQueue.hand_back`) is re-taken
   at once, and that interrupted delivery does not count;
2. otherwise reads a new entry (XREADGROUP), skipping jobs cancelled while they waited.

While it runs a job the holder calls `JobQueue.renew_lease` every ``lease_renewal_s`` (well under
the visibility timeout). The renewal resets the entry's idle time (XCLAIM JUSTID, which does not
count as a delivery), refreshes the consumer's TTL key, stores progress, and answers whether the job
was cancelled or lost (re-taken by another consumer after this one stalled). A dead consumer is thus
detected after ``visibility_timeout_s`` (seconds), not after a job timeout (hours).

State changes are idempotent and checked in Redis, each in one Lua script that also does what the move
means for the queue entry (retire, release, dead-letter): see `TRANSITIONS`. A job leaves a final state
never; a holder (consumer and attempt) whose lease was lost cannot finish the job for the new holder.

Wiring in the worker process::

    queue = JobQueue(redis.Redis.from_url(url, decode_responses=True), keys=KeyNames(prefix), ...)
    claim = queue.claim(consumer, block_s=1.0)          # None when idle
    ... every lease_renewal_s while decoding/segmenting:
        status = queue.renew_lease(claim, JobProgress(frames_done=..., fps=..., frames_dropped=...))
        CANCEL_REQUESTED -> stop the decoder, queue.finish(claim, JobState.CANCELLED)
        LOST             -> stop without finishing; the new holder owns the job
    queue.finish(claim, JobState.DONE, outputs={...})   # or FAILED with error=...
    queue.give_up(claim, reason)                        # FAILED for good, with a dead-letter entry
    queue.hand_back(claim)                              # graceful stop: QUEUED, re-taken at once elsewhere

The CLI uses `submit`, `get`, `list_jobs`, `cancel`, `stop` and `dead_letters` on the same class. `stop`
asks the holder to end a running job early and keep its outputs (DONE with ``stopped_early``); `cancel`
discards them.

Size: the Lua scripts and the Python that calls them must change together (one script per transition),
and the scripts name the record's fields, so the queue protocol and the job record stay in one module.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

import redis
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)


LATENCY_BUCKETS_S: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Upper bounds (seconds) of the live-latency histogram a job's status keeps; one more bucket is +Inf."""


class JobState(str, Enum):
    """Where a job is in its life; DONE, FAILED and CANCELLED are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
"""Allowed moves. RUNNING -> RUNNING is a re-take by another consumer after the holder died;
RUNNING -> QUEUED is a hand-back by a holder that stops gracefully."""


@dataclass(frozen=True)
class KeyNames:
    """Every Redis key and name the daemon uses, derived from one prefix."""

    prefix: str = "vosd"

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def group(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead-letters"

    @property
    def index(self) -> str:
        return f"{self.prefix}:jobs"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def consumer(self, name: str) -> str:
        return f"{self.prefix}:consumer:{name}"

    @property
    def daemon_loads(self) -> str:
        """Hash: daemon consumer name -> "running capacity published_at" (`streamer.daemon` spreads jobs)."""
        return f"{self.prefix}:daemon-loads"

    def daemon(self, name: str) -> str:
        """Hash of a running daemon: its pid and the pids of its processes (expires unless renewed)."""
        return f"{self.prefix}:daemon:{name}"


class JobRecord(BaseModel):
    """The status hash of one job, typed. Times are Unix seconds."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Job id, unique; also the decoder's ZeroMQ identity.")
    source: str = Field(description="File path, URL (rtsp://, http://) or camera index of the video.")
    mask_path: str | None = Field(default=None, description="First-frame index mask PNG, if given.")
    mode: str | None = Field(
        default=None,
        description="How the job is segmented: xmem (from the first-frame mask), auto (TMO seeds and watches "
        "XMem) or tmo (TMO alone); None for jobs submitted before modes (xmem with a mask, auto without).",
    )
    auto_state: str | None = Field(
        default=None,
        description="Modes auto and tmo, while running: searching (TMO looks for the object; frames are "
        "written with none) or tracking.",
    )
    seeds: int = Field(default=0, description="Mode auto: seeds and re-seeds of XMem by TMO so far.")
    last_seed_frame: int | None = Field(
        default=None, description="Mode auto: source frame index of the latest seed or re-seed.",
    )
    live: bool = Field(default=False, description="Live source: keep the newest frames and count drops.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Per-job overrides of XMem/writer options.",
    )
    outputs: dict[str, str] = Field(
        default_factory=dict, description="Output kind -> path, set when written.",
    )
    state: JobState = Field(default=JobState.QUEUED, description="Current state, see TRANSITIONS.")
    frames_done: int = Field(default=0, description="Frames segmented so far.")
    frames_total: int | None = Field(default=None, description="Frames in the source when known (files).")
    fps: float = Field(default=0.0, description="Recent processing rate, frames per second.")
    frames_dropped: int = Field(default=0, description="Frames dropped by the live policy so far.")
    error: str | None = Field(default=None, description="Why the job failed, or who cancelled it.")
    attempts: int = Field(
        default=0,
        description="Deliveries that count against max_attempts: one per holder that took the job; "
        "a hand-back by a stopping daemon does not count. 2 or more means a holder died.",
    )
    runs: int = Field(
        default=0,
        description="Runs from frame 0 so far, over every holder: a daemon's re-run after a worker, "
        "writer or decoder crash, a re-take after a daemon died and a resume after a hand-back each add one.",
    )
    resumed_from: int | None = Field(
        default=None,
        description="Frame the latest run started at: a checkpoint's (streamer/output/resume.py), or 0 when "
        "it started from the first frame.",
    )
    latency_p50_s: float | None = Field(
        default=None,
        description="Live jobs: seconds from a frame's arrival at the decoder to its mask written, median "
        "over the recent frames.",
    )
    latency_p95_s: float | None = Field(
        default=None, description="Live jobs: the same latency, 95th percentile over the recent frames.",
    )
    latency_counts: list[int] | None = Field(
        default=None,
        description="Live jobs: frames per latency bucket (LATENCY_BUCKETS_S, then +Inf) over the whole run "
        "of this holder, for the /metrics histogram.",
    )
    latency_sum_s: float | None = Field(
        default=None, description="Live jobs: the sum of those frames' latencies, seconds.",
    )
    cancel_requested: bool = Field(
        default=False, description="Set by cancel(); the holder stops within a lease renewal.",
    )
    stop_requested: bool = Field(
        default=False, description="Set by stop(); the holder ends the job early, keeping its outputs.",
    )
    stopped_early: bool = Field(
        default=False, description="DONE because stop() ended it: the outputs hold the frames up to then.",
    )
    source_state: str | None = Field(
        default=None,
        description="Running jobs: connecting (first attempt), streaming, or reconnecting (after a failed "
        "attempt or a lost stream).",
    )
    reconnect_attempts: int = Field(
        default=0, description="Failed connect attempts to the source since its last frame.",
    )
    source_error: str | None = Field(
        default=None, description="The source's last connect error, or why its stream was lost.",
    )
    last_frame_at: float | None = Field(default=None, description="When the source last delivered a frame.")
    created_at: float = Field(description="Submission time.")
    started_at: float | None = Field(default=None, description="Start of the current attempt.")
    finished_at: float | None = Field(default=None, description="When the job reached a final state.")
    worker: str | None = Field(default=None, description="Consumer holding (or that last held) the job.")

    def to_fields(self) -> dict[str, str]:
        """Hash fields: JSON for the mappings, text for scalars, absent for None."""
        fields: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if isinstance(value, (dict, list)):
                fields[name] = json.dumps(value)
            elif isinstance(value, bool):
                fields[name] = "1" if value else "0"
            else:
                fields[name] = str(value)
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobRecord:
        data: dict[str, Any] = dict(fields)
        for name in ("options", "outputs", "latency_counts"):
            if name in data:
                data[name] = json.loads(data[name])
        return cls.model_validate(data)


@dataclass(frozen=True)
class Claim:
    """A job delivered to a consumer; `attempt` identifies this delivery in every later call."""

    job: JobRecord
    entry_id: str
    consumer: str
    attempt: int

    @property
    def restarted(self) -> bool:
        """True when an earlier attempt died: outputs must be rewritten from the first frame."""
        return self.attempt > 1


@dataclass(frozen=True)
class JobProgress:
    """Counters the holder reports with each lease renewal."""

    frames_done: int
    fps: float = 0.0
    frames_dropped: int = 0
    frames_total: int | None = None
    runs: int | None = None
    resumed_from: int | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    source_state: str | None = None
    reconnect_attempts: int | None = None
    source_error: str | None = None
    last_frame_at: float | None = None
    latency_counts: tuple[int, ...] | None = None
    latency_sum_s: float | None = None
    auto_state: str | None = None
    seeds: int | None = None
    last_seed_frame: int | None = None

    def fields(self) -> list[str]:
        """Status-hash field/value pairs; counters that are None are left as they are."""
        values: dict[str, object] = {
            "frames_done": self.frames_done,
            "fps": f"{self.fps:.3f}",
            "frames_dropped": self.frames_dropped,
            "frames_total": self.frames_total,
            "runs": self.runs,
            "resumed_from": self.resumed_from,
            "latency_p50_s": None if self.latency_p50_s is None else f"{self.latency_p50_s:.4f}",
            "latency_p95_s": None if self.latency_p95_s is None else f"{self.latency_p95_s:.4f}",
            "source_state": self.source_state,
            "reconnect_attempts": self.reconnect_attempts,
            "source_error": self.source_error,
            "last_frame_at": None if self.last_frame_at is None else repr(self.last_frame_at),
            "latency_counts": None if self.latency_counts is None else json.dumps(list(self.latency_counts)),
            "latency_sum_s": None if self.latency_sum_s is None else f"{self.latency_sum_s:.4f}",
            "auto_state": self.auto_state,
            "seeds": self.seeds,
            "last_seed_frame": self.last_seed_frame,
        }
        return [item for name, value in values.items() if value is not None for item in (name, str(value))]


@dataclass(frozen=True)
class DaemonLoad:
    """What a daemon publishes about itself in `KeyNames.daemon_loads`, for its peers (who takes the next
    job), the metrics and `vosd jobs`."""

    running: int
    capacity: int
    """Jobs it can hold now: 0 while its workers or writer are not ready, or while it is stopping."""
    published_at: float
    """Unix time of the report; older than the visibility timeout means the daemon is gone."""

    def encode(self) -> str:
        return f"{self.running} {self.capacity} {self.published_at:.3f}"

    @classmethod
    def decode(cls, text: str) -> DaemonLoad | None:
        """None for a value that does not parse (written by another version, or damaged)."""
        try:
            running, capacity, published_at = text.split()
            return cls(int(running), int(capacity), float(published_at))
        except ValueError:
            return None

    def fresh(self, visibility_timeout_s: float) -> bool:
        return self.published_at > time.time() - visibility_timeout_s


class LeaseStatus(str, Enum):
    """What the holder of a job must do after renewing its lease."""

    OK = "ok"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"


@dataclass(frozen=True)
class HolderRequests:
    """What a job's holder has been asked to do since it claimed it (`JobQueue.requests`)."""

    cancel: bool
    """`vosd cancel`: stop and discard the outputs."""
    stop: bool
    """`vosd stop`: end the stream now and keep the outputs."""


class JobNotFound(KeyError):
    """No status hash for this job id."""


# KEYS[1] job hash, KEYS[2] index, KEYS[3] queue. ARGV[1] job id, ARGV[2] created_at, ARGV[3..] fields.
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[1])
return 1
"""

RELEASE_IDLE_MS = 365 * 24 * 3600 * 1000
"""Idle time given to a handed-back entry: past any visibility timeout, so the next claim takes it."""


class EntryAction(str, Enum):
    """What a state change does to the job's queue entry, in the same script."""

    KEEP = "keep"
    RETIRE = "retire"
    """Acknowledge and delete: the job is final, or its entry is gone."""
    RELEASE = "release"
    """Leave it pending but idle past any visibility timeout, delivery not counted: re-taken at once."""
    DEAD_LETTER = "dead-letter"
    """Retire it and add the job (id, error, attempts, runs, last holder) to the dead-letter stream."""


# KEYS[1] job hash, KEYS[2] queue, KEYS[3] dead-letter stream. ARGV[1] group, ARGV[2] entry id,
# ARGV[3] EntryAction, ARGV[4] holder attempt or '', ARGV[5] holder consumer or '',
# ARGV[6] comma-separated allowed current states, ARGV[7..] field/value pairs to set.
# Returns 'ok', or the current state when the move is not allowed, or 'lost'/'missing'.
_TRANSITION = f"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if ARGV[4] ~= '' then
  local holder = redis.call('HMGET', KEYS[1], 'attempts', 'worker')
  if holder[1] ~= ARGV[4] or holder[2] ~= ARGV[5] then return 'lost' end
end
local allowed = false
for s in string.gmatch(ARGV[6], '[^,]+') do if s == state then allowed = true end end
if not allowed then return state end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
local action = ARGV[3]
if action == 'dead-letter' then
  local job = redis.call('HMGET', KEYS[1], 'id', 'error', 'attempts', 'runs', 'worker')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*', 'job_id', job[1], 'reason', job[2] or '',
             'attempts', job[3] or '0', 'runs', job[4] or '0', 'worker', job[5] or '')
end
if action == 'retire' or action == 'dead-letter' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
elseif action == 'release' then
  redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[5], 0, ARGV[2], 'IDLE', '{RELEASE_IDLE_MS}',
             'RETRYCOUNT', tostring(tonumber(ARGV[4]) - 1), 'JUSTID')
end
return 'ok'
"""

# KEYS[1] job hash, KEYS[2] queue, KEYS[3] consumer key. ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id,
# ARGV[4] attempt, ARGV[5] consumer key TTL ms, ARGV[6..] progress field/value pairs.
_RENEW_LEASE = """
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
local job = redis.call('HMGET', KEYS[1], 'attempts', 'worker', 'state')
if job[1] ~= ARGV[4] or job[2] ~= ARGV[2] or job[3] ~= 'running' then
  return 'lost'
end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if #ARGV >= 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel_requested' end
return 'ok'
"""

# KEYS[1] job hash. ARGV[1] now, ARGV[2] the flag to raise (cancel_requested or stop_requested), ARGV[3] the
# error of a job that was still queued (it is cancelled at once). Returns the state after the call.
_REQUEST = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', ARGV[2], '1', 'finished_at', ARGV[1], 'error', ARGV[3])
  return 'cancelled'
end
if state == 'running' then redis.call('HSET', KEYS[1], ARGV[2], '1') end
return state
"""


def _allowed_from(target: JobState) -> str:
    return ",".join(state.value for state, moves in TRANSITIONS.items() if target in moves)


_StreamEntry = tuple[str, dict[str, str]]
"""One stream entry as redis-py returns it from a decode_responses=True client: (entry id, fields)."""
_StreamReply = list[tuple[str, list[_StreamEntry]]]
"""XREADGROUP's reply: (stream name, entries) per stream."""


class JobQueue:
    """Submit, claim, renew leases, finish, cancel and list jobs; the module docstring gives the protocol."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: KeyNames | None = None,
        visibility_timeout_s: float = 15.0,
        max_attempts: int = 3,
    ) -> None:
        if not client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("JobQueue needs a Redis client created with decode_responses=True")
        self.redis = client
        self.keys = keys or KeyNames()
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self._submit = client.register_script(_SUBMIT)
        self._transition = client.register_script(_TRANSITION)
        self._renew = client.register_script(_RENEW_LEASE)
        self._request = client.register_script(_REQUEST)
        try:
            client.xgroup_create(self.keys.queue, self.keys.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def submit(
        self,
        source: str,
        *,
        mask_path: str | None = None,
        live: bool = False,
        options: dict[str, Any] | None = None,
        job_id: str | None = None,
        mode: str | None = None,
    ) -> JobRecord:
        """Record a new job and queue it; raises ValueError if `job_id` is already taken or the source's
        URL scheme is not one the ingest opens (`UnsupportedSourceError`)."""
        from streamer.ingest.sources import check_supported

        check_supported(source)
        record = JobRecord(
            id=job_id or uuid.uuid4().hex[:16],
            source=source,
            mask_path=mask_path,
            mode=mode,
            live=live,
            options=options or {},
            created_at=time.time(),
        )
        pairs = [item for pair in record.to_fields().items() for item in pair]
        keys = [self.keys.job(record.id), self.keys.index, self.keys.queue]
        if not self._submit(keys=keys, args=[record.id, record.created_at, *pairs]):
            raise ValueError(f"job id {record.id!r} already exists")
        logger.info("job %s queued (source %s, live=%s)", record.id, source, live)
        return record

    def claim(self, consumer: str, *, block_s: float) -> Claim | None:
        """The next job for `consumer`: an abandoned one first, else a new one; None after `block_s`."""
        deadline = time.monotonic() + block_s
        while True:
            self._touch_consumer(consumer)
            reclaimed = self._reclaim(consumer)
            if reclaimed is not None:
                return reclaimed
            # Wake up often enough to notice entries that become abandoned while we wait.
            wait_s = min(deadline - time.monotonic(), self.visibility_timeout_s / 2)
            wait_ms = max(1, int(wait_s * 1000))
            reply = cast("_StreamReply", self.redis.xreadgroup(
                self.keys.group, consumer, {self.keys.queue: ">"}, count=1, block=wait_ms
            ))
            if reply:
                entry_id, fields = reply[0][1][0]
                claim = self._start(consumer, entry_id, fields, attempt=1)
                if claim is not None:
                    return claim
            if time.monotonic() >= deadline:
                return None

    def renew_lease(self, claim: Claim, progress: JobProgress | None = None) -> LeaseStatus:
        """Keep the lease on a running job, store progress, and say whether to go on."""
        result = self._renew(
            keys=[self.keys.job(claim.job.id), self.keys.queue, self.keys.consumer(claim.consumer)],
            args=[
                self.keys.group,
                claim.consumer,
                claim.entry_id,
                claim.attempt,
                int(self.visibility_timeout_s * 1000),
                *(progress.fields() if progress is not None else []),
            ],
        )
        return LeaseStatus(result)

    def finish(
        self,
        claim: Claim,
        state: JobState,
        *,
        error: str | None = None,
        outputs: dict[str, str] | None = None,
        stopped_early: bool = False,
    ) -> bool:
        """Move the claimed job to a final state and retire its queue entry; False if not allowed
        (already final, or this holder lost the job to another consumer)."""
        if not state.final:
            raise ValueError(f"finish() takes a final state, not {state.value}")
        fields = ["state", state.value, "finished_at", repr(time.time())]
        if stopped_early:
            fields += ["stopped_early", "1"]
        if error is not None:
            fields += ["error", error]
        if outputs is not None:
            fields += ["outputs", json.dumps(outputs)]
        return self._move(
            claim.job.id, state, fields, entry_id=claim.entry_id, holder=claim, action=EntryAction.RETIRE
        )

    def give_up(self, claim: Claim, reason: str) -> bool:
        """Fail the claimed job for good: FAILED with `reason`, retired, and listed in the dead letters."""
        fields = ["state", JobState.FAILED.value, "error", reason, "finished_at", repr(time.time())]
        moved = self._move(
            claim.job.id,
            JobState.FAILED,
            fields,
            entry_id=claim.entry_id,
            holder=claim,
            action=EntryAction.DEAD_LETTER,
        )
        if moved:
            logger.error("job %s: dead-lettered (%s)", claim.job.id, reason)
        return moved

    def hand_back(self, claim: Claim) -> bool:
        """Return a running job to the queue (graceful stop): QUEUED, re-taken by the next claim of any
        consumer without waiting for the visibility timeout, and this delivery does not count."""
        moved = self._move(
            claim.job.id,
            JobState.QUEUED,
            ["state", JobState.QUEUED.value],
            entry_id=claim.entry_id,
            holder=claim,
            action=EntryAction.RELEASE,
        )
        if moved:
            logger.info("job %s: handed back to the queue by %s", claim.job.id, claim.consumer)
        return moved

    def cancel(self, job_id: str) -> JobState:
        """Cancel a job: a queued one at once, a running one by flagging it for its holder."""
        return self._raise_flag(job_id, "cancel_requested", "cancelled while queued")

    def stop(self, job_id: str) -> JobState:
        """End a job early, keeping what it produced: a running one by flagging it for its holder (it
        becomes DONE with ``stopped_early``); a queued one produced nothing and is cancelled at once."""
        return self._raise_flag(job_id, "stop_requested", "stopped while queued: nothing was produced")

    def _raise_flag(self, job_id: str, flag: str, queued_error: str) -> JobState:
        """Flag a running job for its holder; a queued one is cancelled at once with `queued_error`."""
        result = self._request(keys=[self.keys.job(job_id)], args=[repr(time.time()), flag, queued_error])
        if result == "missing":
            raise JobNotFound(job_id)
        return JobState(result)

    def is_cancel_requested(self, job_id: str) -> bool:
        """One cheap read; decoders may call it per frame."""
        return self.redis.hget(self.keys.job(job_id), "cancel_requested") == "1"

    def requests(self, job_ids: list[str]) -> list[HolderRequests]:
        """The cancel and stop requests raised on each job (`cancel`, `stop`), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), "cancel_requested", "stop_requested")
        return [HolderRequests(cancel == "1", stop == "1") for cancel, stop in pipe.execute()]

    def get(self, job_id: str) -> JobRecord:
        fields = cast("dict[str, str]", self.redis.hgetall(self.keys.job(job_id)))
        if not fields:
            raise JobNotFound(job_id)
        return JobRecord.from_fields(fields)

    def list_jobs(self, *, limit: int = 50, offset: int = 0) -> list[JobRecord]:
        """Jobs newest first, for `vosd jobs`."""
        ids = cast("list[str]", self.redis.zrevrange(self.keys.index, offset, offset + limit - 1))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.keys.job(job_id))
        return [JobRecord.from_fields(fields) for fields in pipe.execute() if fields]

    def dead_letters(self, *, count: int = 100) -> list[dict[str, str]]:
        """Jobs given up for good, oldest first: job_id, reason, attempts, runs, worker (the last holder)."""
        entries = cast("list[_StreamEntry]", self.redis.xrange(self.keys.dead_letters, count=count))
        return [fields for _, fields in entries]

    def publish_load(self, daemon: str, load: DaemonLoad) -> None:
        self.redis.hset(self.keys.daemon_loads, daemon, load.encode())

    def daemon_loads(self) -> dict[str, DaemonLoad | None]:
        """Every daemon's last published load (None where it does not parse), fresh or not."""
        raw = cast("dict[str, str]", self.redis.hgetall(self.keys.daemon_loads))
        return {name: DaemonLoad.decode(value) for name, value in raw.items()}

    def forget_daemon(self, daemon: str) -> None:
        self.redis.hdel(self.keys.daemon_loads, daemon)

    def daemon_statuses(self) -> dict[str, dict[str, str]]:
        """Status hashes of the daemons alive now (pid, child pids, restarts, Redis outages)."""
        prefix = self.keys.daemon("")
        keys = sorted(cast("list[str]", list(self.redis.scan_iter(match=f"{prefix}*"))))
        return {key.removeprefix(prefix): cast("dict[str, str]", self.redis.hgetall(key)) for key in keys}

    def live_consumers(self) -> list[str]:
        """Consumers whose liveness key has not expired."""
        prefix = self.keys.consumer("")
        return sorted(key.removeprefix(prefix) for key in self.redis.scan_iter(match=f"{prefix}*"))

    def _touch_consumer(self, consumer: str) -> None:
        self.redis.set(self.keys.consumer(consumer), "idle", px=int(self.visibility_timeout_s * 1000))

    def _reclaim(self, consumer: str) -> Claim | None:
        """Take over the first entry idle past the visibility timeout; dead-letter exhausted ones.

        One entry per XAUTOCLAIM: every entry it claims counts a delivery, so claiming entries this call
        does not start would burn their attempts (and, idle again a timeout later, dead-letter healthy
        jobs that no holder ever ran). The caller claims again for the next orphan once it has room.
        """
        min_idle_ms = int(self.visibility_timeout_s * 1000)
        cursor = "0-0"
        while True:
            reply = self.redis.xautoclaim(
                self.keys.queue, self.keys.group, consumer, min_idle_ms, cursor, count=1
            )
            cursor, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                deliveries = self._deliveries(entry_id)
                if deliveries > self.max_attempts:
                    self._dead_letter(entry_id, fields, deliveries)
                    continue
                claim = self._start(consumer, entry_id, fields, attempt=deliveries)
                if claim is not None:
                    logger.warning("job %s: re-taken by %s, attempt %d", claim.job.id, consumer, deliveries)
                    return claim
            if cursor == "0-0":
                return None

    def _deliveries(self, entry_id: str) -> int:
        pending = self.redis.xpending_range(
            self.keys.queue, self.keys.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    def _start(
        self, consumer: str, entry_id: str, fields: dict[str, str] | None, *, attempt: int
    ) -> Claim | None:
        """Mark the entry's job running for `consumer`; retire entries whose job is gone or final."""
        job_id = (fields or {}).get("job_id")
        if job_id is None:
            self._retire(entry_id)
            return None
        if self.is_cancel_requested(job_id):
            self._cancel_abandoned(job_id, entry_id)
            return None
        started = self._move(
            job_id,
            JobState.RUNNING,
            [
                "state", JobState.RUNNING.value,
                "attempts", str(attempt),
                "worker", consumer,
                "started_at", repr(time.time()),
                "frames_done", "0",
                "frames_dropped", "0",
            ],
        )  # fmt: skip
        if not started:
            self._retire(entry_id)
            return None
        return Claim(job=self.get(job_id), entry_id=entry_id, consumer=consumer, attempt=attempt)

    def _cancel_abandoned(self, job_id: str, entry_id: str) -> None:
        """A job cancelled while its holder was dying is finished as cancelled, never restarted."""
        fields = ["state", JobState.CANCELLED.value, "finished_at", repr(time.time())]
        self._move(job_id, JobState.CANCELLED, fields)
        self._retire(entry_id)
        logger.info("job %s: cancelled while its holder was gone; not restarted", job_id)

    def _dead_letter(self, entry_id: str, fields: dict[str, str] | None, deliveries: int) -> None:
        """An entry whose every holder died: its job fails for good, with a dead-letter entry."""
        job_id = (fields or {}).get("job_id")
        reason = f"gave up after {deliveries - 1} attempts: each holder stopped renewing its lease"
        failed = ["state", JobState.FAILED.value, "error", reason, "finished_at", repr(time.time())]
        if job_id is None or not self._move(
            job_id, JobState.FAILED, failed, entry_id=entry_id, action=EntryAction.DEAD_LETTER
        ):
            self._retire(entry_id)
        logger.error("job %s: dead-lettered (%s)", job_id, reason)

    def _move(
        self,
        job_id: str,
        target: JobState,
        fields: list[str],
        *,
        entry_id: str = "",
        holder: Claim | None = None,
        action: EntryAction = EntryAction.KEEP,
    ) -> bool:
        """Set `fields` if `target` is allowed from the current state (and `holder` still holds the job),
        and apply `action` to the queue entry, in one script; False, logged, when not allowed."""
        if action is not EntryAction.KEEP and not entry_id:
            raise ValueError(f"{action.value} needs the queue entry id")
        result = self._transition(
            keys=[self.keys.job(job_id), self.keys.queue, self.keys.dead_letters],
            args=[
                self.keys.group,
                entry_id,
                action.value,
                "" if holder is None else str(holder.attempt),
                "" if holder is None else holder.consumer,
                _allowed_from(target),
                *fields,
            ],
        )
        if result != "ok":
            logger.info("job %s: not moved to %s (%s)", job_id, target.value, result)
        return result == "ok"

    def _retire(self, entry_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.keys.queue, self.keys.group, entry_id)
        pipe.xdel(self.keys.queue, entry_id)
        pipe.execute()
