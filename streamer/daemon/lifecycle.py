"""One job's life inside a daemon: its phases, the transitions allowed between them, and its counters.

A claimed job is::

    WAITING  --decoder started-->  RUNNING  --decoder died / process died-->  WAITING (a re-run)
    WAITING, RUNNING  --cancel, failure, give-up, hand-back (`Daemon._end`)-->  SETTLING
    RUNNING, SETTLING  --the writer answered (`Daemon._settle`)-->  STOPPING
    any phase but STOPPING  --lease lost to another daemon-->  STOPPING
    STOPPING  --ending written to Redis, decoder reaped-->  (removed)

SETTLING waits for the writer's answer to a Cancel, which is serialised with its completion of the
outputs: Cancel (discarded) applies the intended `Ending`, OutputsComplete (completed just before) makes the
job DONE with its outputs. So the final state and the files on disk always agree. `TRANSITIONS` is the
table `DaemonJob.enter` enforces; a move it does not list is a bug and raises.
"""

from __future__ import annotations

import bisect
import math
import multiprocessing.context
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.queue.jobs import LATENCY_BUCKETS_S, Claim, JobProgress, JobState
from streamer.transport.messages import SourceStatus

if TYPE_CHECKING:
    from streamer.daemon.children import Child

LATENCY_WINDOW = 300
"""Recent frames of a live job whose latencies give the percentiles in its status (about 10 s of video)."""
WRITER_OPTIONS = frozenset({"output_dir", "overlay", "masks", "rle"})
"""Per-job options the writer uses; `max_frames` goes to the decoder; everything else is an XMem option."""


class RunPhase(str, Enum):
    """Where a claimed job stands in this daemon (the queue's `JobState` is what Redis shows)."""

    WAITING = "waiting"
    """For a ready worker: new, or re-run after a crash."""
    RUNNING = "running"
    """Its decoder is up."""
    SETTLING = "settling"
    """Being stopped; waiting for the writer's answer (outputs discarded, or completed just before)."""
    STOPPING = "stopping"
    """Ending decided; waiting for Redis to record it and for the decoder to exit."""


TRANSITIONS: dict[RunPhase, frozenset[RunPhase]] = {
    RunPhase.WAITING: frozenset({RunPhase.RUNNING, RunPhase.SETTLING, RunPhase.STOPPING}),
    RunPhase.RUNNING: frozenset({RunPhase.WAITING, RunPhase.SETTLING, RunPhase.STOPPING}),
    RunPhase.SETTLING: frozenset({RunPhase.STOPPING}),
    RunPhase.STOPPING: frozenset(),
}
"""Phase -> the phases it may move to (module docstring)."""


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


class IllegalTransition(RuntimeError):
    """A phase change `TRANSITIONS` does not allow: a bug in the daemon, never a user error."""


@dataclass
class DaemonJob:
    """A claimed job: its phase, where it runs, its decoder, and the counters sent with each lease renewal."""

    claim: Claim
    outputs: dict[str, Any]
    inference: dict[str, Any]
    max_frames: int | None
    phase: RunPhase = RunPhase.WAITING
    worker: Child | None = None
    decoder: multiprocessing.context.SpawnProcess | None = None
    runs: int = 0
    """Runs started by this daemon; the status hash adds the runs of earlier holders."""
    resumed_from: int | None = None
    """Frame the latest run here started at (a checkpoint's, or 0); None before the first run."""
    frames_done: int = 0
    frames_total: int | None = None
    fps: float = 0.0
    frames_dropped: int = 0
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
    auto: dict[str, Any] | None = None
    """Modes auto and tmo: the writer's last Progress.auto (state, seeds, last seed frame)."""
    stop_requested: bool = False
    stop_signalled: bool = False
    """SIGUSR1 sent to the current run's decoder (`vosd stop`)."""

    @property
    def job_id(self) -> str:
        return self.claim.job.id

    @property
    def active(self) -> bool:
        """Still meant to run here: not stopping."""
        return self.phase in (RunPhase.WAITING, RunPhase.RUNNING)

    def enter(self, phase: RunPhase) -> None:
        """Move to `phase`, as `TRANSITIONS` allows."""
        if phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"job {self.job_id}: {self.phase.value} -> {phase.value} is not allowed")
        self.phase = phase

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
            self.frames_dropped,
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
            auto_state=_text(self.auto, "state"),
            seeds=_count(self.auto, "seeds"),
            last_seed_frame=_count(self.auto, "last_seed_frame"),
        )


def _text(summary: dict[str, Any] | None, name: str) -> str | None:
    value = None if summary is None else summary.get(name)
    return value if isinstance(value, str) else None


def _count(summary: dict[str, Any] | None, name: str) -> int | None:
    value = None if summary is None else summary.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
