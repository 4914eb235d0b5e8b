"""streamer/queue/jobs.py on a real redis-server: claim/finish, crash recovery, dead letters, cancel,
listing."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

import pytest
import redis

from conftest import SPAWN
from streamer.queue.jobs import (
    JobNotFound,
    JobProgress,
    JobQueue,
    JobRecord,
    JobState,
    KeyNames,
    LeaseStatus,
)

WAIT_S = 15.0
"""Upper bound for waits on other processes; only reached when something is broken."""

VISIBILITY_S = 1.0


def _queue(url: str, *, max_attempts: int = 3) -> JobQueue:
    client = redis.Redis.from_url(url, decode_responses=True)
    return JobQueue(
        client, keys=KeyNames("test"), visibility_timeout_s=VISIBILITY_S, max_attempts=max_attempts
    )


def hold_job(url: str, reports: multiprocessing.Queue) -> None:
    """A consumer process: claims one job and heartbeats until cancelled (then finishes it) or killed."""
    queue = _queue(url)
    claim = queue.claim(f"holder-{os.getpid()}", block_s=WAIT_S)
    if claim is None:
        reports.put({"claimed": None})
        return
    reports.put({"claimed": claim.job.id, "attempt": claim.attempt, "pid": os.getpid()})
    deadline = time.monotonic() + WAIT_S
    frames = 0
    while time.monotonic() < deadline:
        frames += 1
        status = queue.renew_lease(claim, JobProgress(frames_done=frames, fps=10.0))
        if status is LeaseStatus.CANCEL_REQUESTED:
            reports.put({"cancel_seen_at": time.time(), "finished": queue.finish(claim, JobState.CANCELLED)})
            return
        time.sleep(0.1)


def _report(reports: multiprocessing.Queue) -> dict[str, Any]:
    return reports.get(timeout=WAIT_S)


def test_submit_claim_finish(redis_url: str) -> None:
    queue = _queue(redis_url)
    submitted = queue.submit("/videos/a.mp4", mask_path="/masks/a.png", options={"mem_every": 10})
    assert queue.get(submitted.id).state is JobState.QUEUED

    claim = queue.claim("worker-1", block_s=1.0)
    assert claim is not None and claim.job.id == submitted.id
    assert (claim.attempt, claim.restarted) == (1, False)
    running = queue.get(submitted.id)
    assert running.state is JobState.RUNNING and running.worker == "worker-1" and running.started_at

    progress = JobProgress(frames_done=12, fps=24.5, frames_total=100)
    assert queue.renew_lease(claim, progress) is LeaseStatus.OK
    assert queue.finish(claim, JobState.DONE, outputs={"overlay": "/out/a.mp4"})
    done = queue.get(submitted.id)
    assert done.state is JobState.DONE and done.finished_at and done.outputs == {"overlay": "/out/a.mp4"}
    assert (done.frames_done, done.frames_total, done.fps) == (12, 100, 24.5)

    assert queue.claim("worker-1", block_s=0.2) is None, "a finished job is not delivered again"
    assert queue.redis.xlen(queue.keys.queue) == 0, "the entry is retired with the job"


def test_final_states_are_final(redis_url: str) -> None:
    queue = _queue(redis_url)
    job = queue.submit("a.mp4")
    claim = queue.claim("w", block_s=1.0)
    assert claim is not None
    assert queue.finish(claim, JobState.DONE)
    assert not queue.finish(claim, JobState.FAILED, error="late")
    assert queue.cancel(job.id) is JobState.DONE
    assert queue.renew_lease(claim) is LeaseStatus.LOST
    record = queue.get(job.id)
    assert record.state is JobState.DONE and record.error is None
    with pytest.raises(ValueError, match="final state"):
        queue.finish(claim, JobState.RUNNING)
    with pytest.raises(ValueError, match="already exists"):
        queue.submit("b.mp4", job_id=job.id)


def test_status_hash_round_trip(redis_url: str) -> None:
    queue = _queue(redis_url)
    record = JobRecord(
        id="j1",
        source="rtsp://cam/1",
        live=True,
        options={"size": 360, "nested": {"a": [1, 2]}},
        outputs={"masks": "/out/j1"},
        state=JobState.RUNNING,
        frames_done=7,
        frames_total=None,
        fps=29.97,
        frames_dropped=3,
        error="x: y",
        attempts=2,
        cancel_requested=True,
        created_at=1_700_000_000.25,
        started_at=1_700_000_001.5,
        worker="gpu0-123",
    )
    queue.redis.hset("test:job:j1", mapping=record.to_fields())
    assert queue.get("j1") == record
    assert "frames_total" not in queue.redis.hgetall("test:job:j1")
    with pytest.raises(JobNotFound):
        queue.get("nope")


def test_listing_is_newest_first(redis_url: str) -> None:
    queue = _queue(redis_url)
    ids = [queue.submit(f"v{i}.mp4").id for i in range(5)]
    listed = queue.list_jobs(limit=3)
    assert [job.id for job in listed] == ids[::-1][:3]
    assert [job.id for job in queue.list_jobs(limit=10, offset=3)] == ids[1::-1]
    assert all(job.state is JobState.QUEUED for job in listed)


def test_killed_consumer_job_is_retaken_after_visibility_timeout(redis_url: str, start_process) -> None:
    queue = _queue(redis_url)
    job = queue.submit("long.mp4")
    reports = SPAWN.Queue()
    holder = start_process(hold_job, redis_url, reports)
    first = _report(reports)
    assert first["claimed"] == job.id and first["attempt"] == 1

    # While the holder heartbeats, its job is not taken even though it runs past the visibility timeout.
    assert queue.claim("rescuer", block_s=VISIBILITY_S * 2) is None
    assert queue.get(job.id).frames_done > 0

    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=WAIT_S)
    claim = queue.claim("rescuer", block_s=VISIBILITY_S * 4)
    assert claim is not None and claim.job.id == job.id
    assert (claim.attempt, claim.restarted) == (2, True)
    record = queue.get(job.id)
    assert record.state is JobState.RUNNING
    assert (record.worker, record.attempts, record.frames_done) == ("rescuer", 2, 0)
    assert queue.finish(claim, JobState.DONE)


def test_stalled_holder_loses_the_job_and_cannot_finish_it(redis_url: str) -> None:
    queue = _queue(redis_url)
    job = queue.submit("a.mp4")
    stalled = queue.claim("slow", block_s=1.0)
    assert stalled is not None
    time.sleep(VISIBILITY_S * 1.2)
    rescuer = queue.claim("rescuer", block_s=1.0)
    assert rescuer is not None and rescuer.attempt == 2
    assert queue.renew_lease(stalled) is LeaseStatus.LOST
    assert not queue.finish(stalled, JobState.DONE)
    assert queue.finish(rescuer, JobState.DONE)
    assert queue.get(job.id).worker == "rescuer"


def test_every_orphan_of_a_dead_holder_is_retaken_promptly_on_its_second_attempt(redis_url: str) -> None:
    """A dead daemon held three jobs: a survivor takes all three over right after the visibility timeout,
    one claim each, attempt 2 each, and none is dead-lettered for deliveries nobody ran."""
    queue = _queue(redis_url)
    jobs = [queue.submit(f"clip-{index}.mp4") for index in range(3)]
    for _ in jobs:
        assert queue.claim("dead-daemon", block_s=1.0) is not None  # then it never heartbeats again
    time.sleep(VISIBILITY_S * 1.2)
    taken = [queue.claim("survivor", block_s=0.0) for _ in jobs]
    assert all(claim is not None for claim in taken)
    assert sorted(claim.job.id for claim in taken) == sorted(job.id for job in jobs)
    assert [claim.attempt for claim in taken] == [2, 2, 2]
    # Held and heartbeated by the survivor, none is lost or dead-lettered however long it runs.
    for _ in range(6):
        time.sleep(VISIBILITY_S * 0.4)
        assert all(queue.renew_lease(claim) is LeaseStatus.OK for claim in taken)
        assert queue.claim("another", block_s=0.0) is None
    assert queue.dead_letters() == []
    assert [queue.get(job.id).attempts for job in jobs] == [2, 2, 2]
    for claim in taken:
        assert queue.finish(claim, JobState.DONE)


def test_exhausted_attempts_go_to_dead_letters(redis_url: str) -> None:
    queue = _queue(redis_url, max_attempts=2)
    job = queue.submit("crashes-the-worker.mp4")
    for attempt in (1, 2):
        abandoned = queue.claim(f"doomed-{attempt}", block_s=VISIBILITY_S * 3)
        assert abandoned is not None and abandoned.attempt == attempt
        time.sleep(VISIBILITY_S * 1.2)  # the holder never heartbeats again, as if killed
    assert queue.claim("next", block_s=0.2) is None
    record = queue.get(job.id)
    assert record.state is JobState.FAILED
    assert "2 attempts" in (record.error or "")
    letters = queue.dead_letters()
    assert [(d["job_id"], d["attempts"], d["worker"]) for d in letters] == [(job.id, "2", "doomed-2")]
    assert queue.redis.xlen(queue.keys.queue) == 0


def test_running_job_sees_cancel(redis_url: str, start_process) -> None:
    queue = _queue(redis_url)
    job = queue.submit("rtsp://camera", live=True)
    reports = SPAWN.Queue()
    start_process(hold_job, redis_url, reports)
    assert _report(reports)["claimed"] == job.id

    requested_at = time.time()
    assert queue.cancel(job.id) is JobState.RUNNING
    assert queue.is_cancel_requested(job.id)
    seen = _report(reports)
    assert seen["finished"] is True
    # The holder heartbeats every 0.1 s; one second is the promise to users, with a wide margin.
    assert seen["cancel_seen_at"] - requested_at < 1.0
    record = queue.get(job.id)
    assert record.state is JobState.CANCELLED and record.finished_at is not None
    assert queue.claim("other", block_s=VISIBILITY_S * 2) is None, "a cancelled job is not restarted"


def test_queued_job_cancelled_is_never_delivered(redis_url: str) -> None:
    queue = _queue(redis_url)
    cancelled = queue.submit("a.mp4")
    kept = queue.submit("b.mp4")
    assert queue.cancel(cancelled.id) is JobState.CANCELLED
    claim = queue.claim("w", block_s=1.0)
    assert claim is not None and claim.job.id == kept.id
    assert queue.get(cancelled.id).state is JobState.CANCELLED
    with pytest.raises(JobNotFound):
        queue.cancel("missing")


def test_job_cancelled_while_its_holder_died_is_not_restarted(redis_url: str) -> None:
    queue = _queue(redis_url)
    job = queue.submit("a.mp4")
    assert queue.claim("dies", block_s=1.0) is not None
    queue.cancel(job.id)
    time.sleep(VISIBILITY_S * 1.2)
    assert queue.claim("rescuer", block_s=0.2) is None
    assert queue.get(job.id).state is JobState.CANCELLED


def test_consumers_announce_themselves_with_expiring_keys(redis_url: str) -> None:
    queue = _queue(redis_url)
    assert queue.claim("gpu0", block_s=0.05) is None
    assert queue.live_consumers() == ["gpu0"]
    time.sleep(VISIBILITY_S * 1.3)
    assert queue.live_consumers() == []


def test_queue_requires_decoded_responses(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        JobQueue(redis.Redis.from_url(redis_url))


def test_give_up_fails_the_job_and_lists_it_in_the_dead_letters_atomically(redis_url: str) -> None:
    queue = _queue(redis_url)
    job = queue.submit("keeps-crashing.mp4")
    claim = queue.claim("daemon-1", block_s=1.0)
    assert claim is not None
    assert queue.renew_lease(claim, JobProgress(frames_done=7, runs=3)) is LeaseStatus.OK
    assert queue.give_up(claim, "gave up after 3 runs; last: worker-0 died")
    record = queue.get(job.id)
    assert (record.state, record.error, record.runs) == (
        JobState.FAILED,
        "gave up after 3 runs; last: worker-0 died",
        3,
    )
    assert record.finished_at is not None
    assert queue.dead_letters() == [
        {
            "job_id": job.id,
            "reason": "gave up after 3 runs; last: worker-0 died",
            "attempts": "1",
            "runs": "3",
            "worker": "daemon-1",
        }
    ]
    assert queue.redis.xlen(queue.keys.queue) == 0
    assert not queue.give_up(claim, "again"), "a final job is given up once"
    assert len(queue.dead_letters()) == 1


def test_hand_back_requeues_at_once_without_counting_the_attempt(redis_url: str) -> None:
    queue = _queue(redis_url)
    job = queue.submit("long.mp4")
    first = queue.claim("stopping-daemon", block_s=1.0)
    assert first is not None and first.attempt == 1
    assert queue.hand_back(first)
    record = queue.get(job.id)
    assert record.state is JobState.QUEUED and record.attempts == 1
    # Claimable at once by the next consumer, well before the visibility timeout would have expired.
    taken_at = time.monotonic()
    second = queue.claim("next-daemon", block_s=VISIBILITY_S / 4)
    assert second is not None and second.job.id == job.id
    assert time.monotonic() - taken_at < VISIBILITY_S / 2
    assert (second.attempt, queue.get(job.id).attempts, queue.get(job.id).worker) == (1, 1, "next-daemon")
    # The same attempt number, but another holder: the one that handed the job back cannot touch it.
    assert queue.renew_lease(first) is LeaseStatus.LOST
    assert not queue.finish(first, JobState.DONE)
    assert not queue.hand_back(first)
    assert queue.renew_lease(second) is LeaseStatus.OK
    assert queue.finish(second, JobState.DONE)
    assert queue.redis.xlen(queue.keys.queue) == 0


def test_handed_back_job_cancelled_while_queued_is_not_restarted(redis_url: str) -> None:
    queue = _queue(redis_url)
    job = queue.submit("long.mp4")
    claim = queue.claim("stopping-daemon", block_s=1.0)
    assert claim is not None and queue.hand_back(claim)
    assert queue.cancel(job.id) is JobState.CANCELLED
    assert queue.claim("next-daemon", block_s=0.2) is None
    assert queue.get(job.id).state is JobState.CANCELLED
    assert queue.redis.xlen(queue.keys.queue) == 0


def test_stop_cancels_a_queued_job_and_flags_a_running_one(redis_url: str) -> None:
    queue = _queue(redis_url)
    waiting = queue.submit("a.mp4")
    assert queue.stop(waiting.id) is JobState.CANCELLED
    record = queue.get(waiting.id)
    assert record.stop_requested and record.error == "stopped while queued: nothing was produced"
    running = queue.submit("b.mp4")
    claim = queue.claim("c1", block_s=1.0)
    assert claim is not None and claim.job.id == running.id  # the stopped job is never delivered
    assert queue.stop(running.id) is JobState.RUNNING
    assert queue.get(running.id).stop_requested and not queue.get(running.id).cancel_requested
    assert queue.finish(claim, JobState.DONE, outputs={"rle": "x"}, stopped_early=True)
    assert queue.get(running.id).stopped_early and queue.stop(running.id) is JobState.DONE
    with pytest.raises(JobNotFound):
        queue.stop("nope")


def test_source_status_travels_with_the_heartbeat(redis_url: str) -> None:
    queue = _queue(redis_url)
    job = queue.submit("rtsp://cam/1", live=True)
    claim = queue.claim("c1", block_s=1.0)
    assert claim is not None
    progress = JobProgress(0, source_state="reconnecting", reconnect_attempts=3, source_error="refused",
                           last_frame_at=1700000000.25)
    assert queue.renew_lease(claim, progress) is LeaseStatus.OK
    record = queue.get(job.id)
    assert (record.source_state, record.reconnect_attempts, record.source_error, record.last_frame_at) == (
        "reconnecting", 3, "refused", 1700000000.25)


@pytest.mark.parametrize("source", ["gopher://x", "ftp://host/a.mp4"])
def test_submit_refuses_unsupported_schemes(redis_url: str, source: str) -> None:
    queue = _queue(redis_url)
    with pytest.raises(ValueError, match="unsupported source scheme"):
        queue.submit(source)
    assert queue.list_jobs() == [] and queue.redis.xlen(queue.keys.queue) == 0
