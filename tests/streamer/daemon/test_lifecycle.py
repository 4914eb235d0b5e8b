"""A claimed job's phases in the daemon move only as the transition table says, and its counters add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.daemon.lifecycle import (
    TRANSITIONS,
    DaemonJob,
    IllegalTransition,
    JobOptionError,
    RunPhase,
    split_options,
)
from streamer.queue.jobs import LATENCY_BUCKETS_S, Claim, JobRecord


def _job() -> DaemonJob:
    record = JobRecord(id="j1", source="clip.mp4", live=True, created_at=0.0)
    claim = Claim(record, entry_id="1-0", consumer="c", attempt=1)
    return DaemonJob(claim=claim, outputs={}, inference={}, max_frames=None)


def test_a_job_runs_is_rerun_and_settles_along_the_table() -> None:
    job = _job()
    for phase in (RunPhase.RUNNING, RunPhase.WAITING, RunPhase.RUNNING, RunPhase.SETTLING, RunPhase.STOPPING):
        job.enter(phase)
    assert job.phase is RunPhase.STOPPING and not job.active


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), RunPhase.WAITING),  # a waiting job has no run to re-run
        ((RunPhase.RUNNING, RunPhase.SETTLING), RunPhase.RUNNING),  # a stopping job never restarts
        ((RunPhase.RUNNING, RunPhase.SETTLING), RunPhase.WAITING),
        ((RunPhase.RUNNING, RunPhase.STOPPING), RunPhase.SETTLING),  # once decided, nothing changes it
    ],
)
def test_moves_the_table_does_not_list_raise(path: tuple[RunPhase, ...], illegal: RunPhase) -> None:
    job = _job()
    for phase in path:
        job.enter(phase)
    before = job.phase
    with pytest.raises(IllegalTransition, match=f"{before.value} -> {illegal.value}"):
        job.enter(illegal)
    assert job.phase is before


def test_stopping_is_the_only_end_and_every_phase_can_reach_it() -> None:
    assert TRANSITIONS[RunPhase.STOPPING] == frozenset()
    for phase in RunPhase:
        reachable, frontier = {phase}, [phase]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()] - reachable:
                reachable.add(nxt)
                frontier.append(nxt)
        assert RunPhase.STOPPING in reachable


def test_live_latencies_fill_the_window_percentiles_and_the_histogram() -> None:
    job = _job()
    for seconds in (0.01, 0.02, 0.03, 0.04, 10.0):
        job.record_latency(seconds)
    progress = job.progress()
    assert progress.latency_p50_s == 0.03 and progress.latency_p95_s == 10.0
    assert progress.latency_counts is not None and sum(progress.latency_counts) == 5
    assert len(progress.latency_counts) == len(LATENCY_BUCKETS_S) + 1
    assert progress.latency_counts[-1] == 1  # 10 s is beyond the last bucket
    assert progress.latency_sum_s == pytest.approx(10.1)


def test_job_options_split_into_outputs_model_options_and_a_frame_limit(tmp_path: Path) -> None:
    outputs, inference, max_frames = split_options(
        "j1", {"masks": False, "mem_every": 3, "max_frames": 10}, tmp_path, ("overlay", "masks")
    )
    assert outputs == {"dir": str(tmp_path / "j1"), "overlay": True, "masks": False, "rle": False}
    assert inference == {"mem_every": 3} and max_frames == 10
    with pytest.raises(JobOptionError, match="no output"):
        split_options("j1", {"overlay": False}, tmp_path, ("overlay",))
    with pytest.raises(JobOptionError, match="max_frames"):
        split_options("j1", {"max_frames": True}, tmp_path, ("overlay",))
