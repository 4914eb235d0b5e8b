"""streamer/transport/sockets.py across real processes: lossless backpressure, live drops, routing, EOS
handshake."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from conftest import SPAWN
from streamer.transport.messages import (
    Cancel,
    EndOfStream,
    FrameMessage,
    JobStart,
    MaskMessage,
    Shutdown,
    encode,
)
from streamer.transport.sockets import (
    FrameInbox,
    FrameSender,
    JobRejected,
    LiveDropPolicy,
    PeerTimeout,
    QueueSettings,
    ResultCollector,
    ResultSender,
    SendCancelled,
    SendOutcome,
    release_job,
    send_control,
)

WAIT_S = 20.0
"""Upper bound for any blocking wait in these tests; only reached when something is broken."""

SHAPE = (96, 128, 3)


def _image(job_id: str, index: int) -> np.ndarray:
    """Pixels that identify the job and the frame, so a mixed-up or corrupted frame is detected."""
    seed = sum(job_id.encode()) * 100_003 + index
    return np.random.default_rng(seed).integers(0, 256, size=SHAPE, dtype=np.uint8)


def _frame(job_id: str, index: int) -> FrameMessage:
    return FrameMessage(
        job_id=job_id,
        index=index,
        image=_image(job_id, index),
        pts=index / 30,
        capture_time=time.time(),
        source_size=(SHAPE[1] * 2, SHAPE[0] * 2),
    )


def _endpoint(directory: Path, name: str) -> str:
    return f"ipc://{directory}/{name}.sock"


def run_worker(
    endpoint: str,
    writer_endpoint: str | None,
    queues: QueueSettings,
    delay_s: float,
    pause_after_accept_s: float,
    reports: multiprocessing.Queue,
) -> None:
    """A worker process: accepts jobs, checks every frame's pixels, optionally forwards masks to a writer.

    A drain-style Shutdown: it arrives on its own socket, so messages of other peers may still be queued;
    the worker leaves once it holds no job and the socket is idle.
    """
    context = zmq.Context()
    inbox = FrameInbox(context, endpoint, queues)
    results = ResultSender(context, writer_endpoint, queues) if writer_endpoint else None
    seen: dict[str, list[int]] = {}
    cancelled: list[str] = []
    corrupt: list[tuple[str, int]] = []
    zero_copy = True
    deadline = time.monotonic() + WAIT_S
    draining, message = False, None
    while time.monotonic() < deadline and not (draining and message is None and not inbox.jobs):
        message = inbox.receive(timeout_s=0.2)
        if isinstance(message, Shutdown):
            draining = True  # other peers' messages may still be queued: leave once no job is held
        elif isinstance(message, JobStart):
            if message.job_id.startswith("refuse"):
                inbox.reject(message, "worker is full")
                continue
            inbox.accept(message)
            seen[message.job_id] = []
            time.sleep(pause_after_accept_s)
        elif isinstance(message, Cancel):
            cancelled.append(message.job_id)
        elif isinstance(message, FrameMessage):
            seen[message.job_id].append(message.index)
            if not np.array_equal(message.image, _image(message.job_id, message.index)):
                corrupt.append((message.job_id, message.index))
            zero_copy &= not message.image.flags.owndata
            time.sleep(delay_s)
        if results is not None and message is not None:
            if isinstance(message, FrameMessage):
                mask = (message.image[..., 0] % 7).astype(np.uint8)
                results.send(
                    MaskMessage(
                        job_id=message.job_id,
                        index=message.index,
                        mask=mask,
                        pts=message.pts,
                        capture_time=message.capture_time,
                        timings={"step": delay_s},
                    )
                )
            else:
                results.send(message)
    reports.put(
        {
            "seen": seen,
            "cancelled": cancelled,
            "held": inbox.jobs,
            "corrupt": corrupt,
            "rejected": inbox.stats.rejected,
            "zero_copy": zero_copy,
        }
    )
    if results is not None:
        results.close()
    inbox.close()
    context.destroy(linger=0)


def run_decoder(
    endpoint: str, job_id: str, frames: int, queues: QueueSettings, reports: multiprocessing.Queue
) -> None:
    """A decoder process: sends `frames` frames of one lossless job and reports the end acknowledgement."""
    context = zmq.Context()
    with FrameSender(context, endpoint, job_id, live=False, queues=queues, peer_timeout_s=WAIT_S) as sender:
        sender.open(JobStart(job_id=job_id, live=False, source_size=(256, 192)), timeout_s=WAIT_S)
        for index in range(frames):
            sender.send_frame(_frame(job_id, index))
        ack = sender.finish(timeout_s=WAIT_S)
    reports.put({"job_id": job_id, "ack": (ack.frames_received, ack.complete)})
    context.destroy(linger=0)


def run_stuck_decoder(
    endpoint: str, job_id: str, queues: QueueSettings, reports: multiprocessing.Queue
) -> None:
    """A decoder that opens its job, sends two frames and then hangs, until it is killed."""
    context = zmq.Context()
    sender = FrameSender(context, endpoint, job_id, live=False, queues=queues, peer_timeout_s=WAIT_S)
    sender.open(JobStart(job_id=job_id, live=False, source_size=(256, 192)), timeout_s=WAIT_S)
    for index in range(2):
        sender.send_frame(_frame(job_id, index))
    reports.put({"pid": os.getpid()})
    time.sleep(WAIT_S * 2)


@pytest.fixture
def context() -> Any:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _report(reports: multiprocessing.Queue) -> dict[str, Any]:
    return reports.get(timeout=WAIT_S)


def test_lossless_pipeline_delivers_every_frame_once_in_order(ipc_dir: Path, start_process, context) -> None:
    queues = QueueSettings(batch_frames=4, results_frames=4)
    worker_endpoint, writer_endpoint = _endpoint(ipc_dir, "w0"), _endpoint(ipc_dir, "writer")
    collector = ResultCollector(context, writer_endpoint, queues)
    reports = SPAWN.Queue()
    start_process(run_worker, worker_endpoint, writer_endpoint, queues, 0.005, 0.0, reports)
    start_process(run_decoder, worker_endpoint, "job-a", 40, queues, reports)

    received: list[Any] = []
    while not (received and isinstance(received[-1], EndOfStream)):
        message = collector.receive(timeout_s=WAIT_S)
        assert message is not None, "writer side timed out"
        received.append(message)
    assert isinstance(received[0], JobStart)
    masks = received[1:-1]
    assert [m.index for m in masks] == list(range(40))
    for mask in masks:
        np.testing.assert_array_equal(mask.mask, _image("job-a", mask.index)[..., 0] % 7)
    assert received[-1].frames_sent == 40
    assert _report(reports) == {"job_id": "job-a", "ack": (40, True)}

    assert send_control(context, worker_endpoint, Shutdown(reason="test"))
    worker = _report(reports)
    assert worker["seen"] == {"job-a": list(range(40))}
    assert worker["corrupt"] == [] and worker["zero_copy"]
    collector.close()


def test_lossless_sender_stops_after_its_window_when_the_worker_stalls(
    ipc_dir: Path, start_process, context
) -> None:
    queues = QueueSettings(batch_frames=3)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 2.0, reports)
    with FrameSender(context, endpoint, "job-a", live=False, queues=queues, peer_timeout_s=0.5) as sender:
        sender.open(JobStart(job_id="job-a", live=False, source_size=(256, 192)), timeout_s=WAIT_S)
        for index in range(3):
            assert sender.send_frame(_frame("job-a", index)) is SendOutcome.SENT
        with pytest.raises(PeerTimeout, match="no room at the worker"):
            sender.send_frame(_frame("job-a", 3))
        assert (sender.stats.sent, sender.stats.produced) == (3, 3)
        # A timed-out send can be retried: once the worker resumes, the frame goes through, nothing lost.
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                assert sender.send_frame(_frame("job-a", 3)) is SendOutcome.SENT
                break
            except PeerTimeout:
                continue
        ack = sender.finish(timeout_s=WAIT_S)
    assert (ack.frames_received, ack.complete) == (4, True)
    assert send_control(context, endpoint, Shutdown(reason="test"))
    assert _report(reports)["seen"] == {"job-a": [0, 1, 2, 3]}


def test_end_of_stream_waits_for_a_slow_worker_that_keeps_making_progress(
    ipc_dir: Path, start_process, context
) -> None:
    """The in-flight window takes 8 x 0.25 s to segment, far longer than the 1 s end-of-stream timeout; each
    segmented frame restarts the wait, so the job still ends complete (a slow worker is no failure)."""
    queues = QueueSettings(batch_frames=8)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.25, 0.0, reports)
    with FrameSender(context, endpoint, "job-a", live=False, queues=queues, peer_timeout_s=WAIT_S) as sender:
        sender.open(JobStart(job_id="job-a", live=False, source_size=(256, 192)), timeout_s=WAIT_S)
        for index in range(8):
            assert sender.send_frame(_frame("job-a", index)) is SendOutcome.SENT
        started = time.monotonic()
        ack = sender.finish(timeout_s=1.0)
        assert time.monotonic() - started > 1.0  # it did wait past the timeout, on progress
    assert (ack.frames_received, ack.complete) == (8, True)
    assert send_control(context, endpoint, Shutdown(reason="test"))
    assert _report(reports)["seen"] == {"job-a": list(range(8))}


def test_end_of_stream_fails_when_the_worker_stops_segmenting(ipc_dir: Path, start_process, context) -> None:
    queues = QueueSettings(batch_frames=3)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 3.0, reports)  # stalls 3 s after accepting
    with FrameSender(context, endpoint, "job-a", live=False, queues=queues, peer_timeout_s=WAIT_S) as sender:
        sender.open(JobStart(job_id="job-a", live=False, source_size=(256, 192)), timeout_s=WAIT_S)
        for index in range(3):
            sender.send_frame(_frame("job-a", index))
        with pytest.raises(PeerTimeout, match="segmented none of this job's 3 frames"):
            sender.finish(timeout_s=0.5)
    assert send_control(context, endpoint, Shutdown(reason="test"))
    _report(reports)


def test_lossless_wait_notices_cancel(ipc_dir: Path, start_process, context) -> None:
    queues = QueueSettings(batch_frames=2)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 1.5, reports)
    cancel_at = time.monotonic() + 0.3
    with FrameSender(
        context,
        endpoint,
        "job-a",
        live=False,
        queues=queues,
        should_stop=lambda: time.monotonic() > cancel_at,
    ) as sender:
        sender.open(JobStart(job_id="job-a", live=False, source_size=(256, 192)), timeout_s=WAIT_S)
        sender.send_frame(_frame("job-a", 0))
        sender.send_frame(_frame("job-a", 1))
        with pytest.raises(SendCancelled):
            sender.send_frame(_frame("job-a", 2))
        sender.cancel("user asked")
    assert send_control(context, endpoint, Shutdown(reason="test"))
    report = _report(reports)
    # The worker was paused: by the time it reads, the cancel is queued behind frames 0 and 1, which it drops.
    assert (report["seen"], report["cancelled"]) == ({"job-a": []}, ["job-a"])


@pytest.mark.parametrize("policy", [LiveDropPolicy.DROP_OLDEST, LiveDropPolicy.DROP_NEWEST])
def test_live_sender_drops_without_blocking_and_counts_exactly(
    ipc_dir: Path, start_process, context, policy: LiveDropPolicy
) -> None:
    queues = QueueSettings(live_frames=1, live_policy=policy)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.03, 0.0, reports)
    total = 60
    with FrameSender(context, endpoint, "cam", live=True, queues=queues) as sender:
        sender.open(JobStart(job_id="cam", live=True, source_size=(256, 192)), timeout_s=WAIT_S)
        for index in range(total):
            sender.send_frame(_frame("cam", index))
            time.sleep(0.004)
        ack = sender.finish(timeout_s=WAIT_S)
        stats = sender.stats
    assert send_control(context, endpoint, Shutdown(reason="test"))
    seen = _report(reports)["seen"]["cam"]

    assert stats.produced == total
    assert stats.sent + stats.dropped == total
    assert stats.dropped > 0, "a consumer 7x slower than the source must cause drops"
    assert (ack.frames_received, ack.complete) == (len(seen), True)
    assert len(seen) == stats.sent
    assert seen == sorted(set(seen)), "frames arrive once each, in order"
    if policy is LiveDropPolicy.DROP_OLDEST:
        assert seen[-1] == total - 1, "the newest frame is kept"


def test_live_sender_fails_when_the_worker_takes_nothing(ipc_dir: Path, start_process, context) -> None:
    queues = QueueSettings(live_frames=1)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 2.0, reports)
    with FrameSender(context, endpoint, "cam", live=True, queues=queues, peer_timeout_s=0.5) as sender:
        sender.open(JobStart(job_id="cam", live=True, source_size=(256, 192)), timeout_s=WAIT_S)
        with pytest.raises(PeerTimeout, match="took no frame"):
            for index in range(10_000):
                sender.send_frame(_frame("cam", index))
                time.sleep(0.01)
        assert sender.stats.sent == 1 and sender.stats.dropped > 0
        sender.cancel("worker stalled")


def test_frames_of_each_job_reach_only_their_worker(ipc_dir: Path, start_process) -> None:
    queues = QueueSettings(batch_frames=2)
    w0, w1 = _endpoint(ipc_dir, "w0"), _endpoint(ipc_dir, "w1")
    worker_reports, decoder_reports = SPAWN.Queue(), SPAWN.Queue()
    start_process(run_worker, w0, None, queues, 0.002, 0.0, worker_reports)
    start_process(run_worker, w1, None, queues, 0.002, 0.0, worker_reports)
    assignments = {"alpha": w0, "beta": w1, "gamma": w0}
    for job_id, endpoint in assignments.items():
        start_process(run_decoder, endpoint, job_id, 25, queues, decoder_reports)
    acks = {r["job_id"]: r["ack"] for r in (_report(decoder_reports) for _ in assignments)}
    assert acks == {job_id: (25, True) for job_id in assignments}

    context = zmq.Context()
    try:
        assert send_control(context, w0, Shutdown(reason="test"))
        assert send_control(context, w1, Shutdown(reason="test"))
    finally:
        context.destroy(linger=0)
    by_jobs = {}
    for _ in range(2):
        report = _report(worker_reports)
        assert report["corrupt"] == []
        by_jobs[tuple(sorted(report["seen"]))] = report["seen"]
    assert set(by_jobs) == {("alpha", "gamma"), ("beta",)}
    for seen in by_jobs.values():
        for indices in seen.values():
            assert indices == list(range(25))


def test_malformed_messages_are_rejected_and_the_worker_keeps_serving(
    ipc_dir: Path, start_process, context
) -> None:
    queues = QueueSettings(batch_frames=2)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 0.0, reports)

    with FrameSender(context, endpoint, "job-a", live=False, queues=queues) as sender:
        sender.open(JobStart(job_id="job-a", live=False, source_size=(256, 192)), timeout_s=WAIT_S)
        rogue = context.socket(zmq.DEALER)
        rogue.setsockopt(zmq.IDENTITY, b"rogue")
        rogue.connect(endpoint)
        rogue.send_multipart([b"\x00garbage"])
        rogue.send_multipart([b"frame", b"{not json", b"xx"])
        rogue.send_multipart(encode(_frame("rogue", 0)))  # a frame for a job the worker never accepted
        rogue.send_multipart(encode(_frame("someone-else", 0)))  # a job id that is not the sender's
        rogue.send_multipart(encode(Cancel(job_id="rogue")))
        for index in range(5):
            sender.send_frame(_frame("job-a", index))
        ack = sender.finish(timeout_s=WAIT_S)
        # An accepted job's socket that claims to carry another job's frame must not reach that job.
        impostor = context.socket(zmq.DEALER)
        impostor.setsockopt(zmq.IDENTITY, b"job-b")
        impostor.connect(endpoint)
        impostor.send_multipart(encode(JobStart(job_id="job-b", live=False, source_size=(8, 8))))
        assert impostor.poll(int(WAIT_S * 1000)), "job-b was not accepted"
        impostor.recv_multipart()
        impostor.send_multipart(encode(_frame("job-a", 99)))
        impostor.send_multipart(encode(EndOfStream(job_id="job-b", frames_total=0, frames_sent=0)))
    assert (ack.frames_received, ack.complete) == (5, True)
    assert send_control(context, endpoint, Shutdown(reason="test"))
    report = _report(reports)
    assert report["rejected"] == 6
    assert report["seen"] == {"job-a": list(range(5)), "job-b": []}
    rogue.close(linger=0)
    impostor.close(linger=0)


def test_refused_job_and_absent_worker_fail_clearly(ipc_dir: Path, start_process, context) -> None:
    queues = QueueSettings()
    endpoint = _endpoint(ipc_dir, "w0")
    with (
        FrameSender(context, endpoint, "job-x", live=False, queues=queues) as sender,
        pytest.raises(PeerTimeout, match="not reachable"),
    ):
        sender.open(JobStart(job_id="job-x", live=False, source_size=(8, 8)), timeout_s=0.3)

    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 0.0, reports)
    with (
        FrameSender(context, endpoint, "refuse-me", live=False, queues=queues) as sender,
        pytest.raises(JobRejected, match="worker is full"),
    ):
        sender.open(JobStart(job_id="refuse-me", live=False, source_size=(8, 8)), timeout_s=WAIT_S)
    assert send_control(context, endpoint, Shutdown(reason="test"))
    assert _report(reports)["seen"] == {}


def test_collector_skips_malformed_results(ipc_dir: Path, context) -> None:
    queues = QueueSettings()
    collector = ResultCollector(context, _endpoint(ipc_dir, "writer"), queues)
    push = context.socket(zmq.PUSH)
    push.connect(collector.endpoint)
    push.send_multipart([b"mask", b"{}"])
    good = MaskMessage(job_id="j", index=0, mask=np.ones((4, 4), np.uint8), pts=None, capture_time=1.0)
    push.send_multipart(encode(good))
    got = collector.receive(timeout_s=WAIT_S)
    assert isinstance(got, MaskMessage) and got.index == 0
    assert collector.rejected == 1
    assert collector.receive(timeout_s=0.1) is None
    push.close(linger=0)
    collector.close()


def test_cancel_sent_just_before_close_reaches_a_busy_worker(ipc_dir: Path, start_process, context) -> None:
    queues = QueueSettings(batch_frames=4)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 1.0, reports)  # busy for 1 s after accepting
    big = np.zeros((1080, 1920, 3), np.uint8)  # full-HD frames: the window does not fit in socket buffers
    with FrameSender(context, endpoint, "job-a", live=False, queues=queues) as sender:
        sender.open(JobStart(job_id="job-a", live=False, source_size=(1920, 1080)), timeout_s=WAIT_S)
        for index in range(4):
            sender.send_frame(replace(_frame("job-a", index), image=big))
        sender.cancel("user asked")
    # Closed at once; the worker only reads after its pause: the cancel must still arrive, after the frames
    # (frames already read when the cancel shows up were segmented, the rest are dropped unsegmented).
    assert send_control(context, endpoint, Shutdown(reason="test"))
    report = _report(reports)
    assert (report["cancelled"], report["held"]) == (["job-a"], [])
    assert report["seen"]["job-a"] == list(range(len(report["seen"]["job-a"])))


def test_cancel_drops_the_frames_queued_before_it_at_once(ipc_dir: Path, start_process, context) -> None:
    """A slow worker (0.5 s a frame) with a full window of 8 frames: after the cancel it segments none of
    the queued frames (it used to segment all 8, seconds of work for a job that is gone)."""
    queues = QueueSettings(batch_frames=8)
    endpoint = _endpoint(ipc_dir, "w0")
    reports = SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.5, 0.0, reports)
    with FrameSender(context, endpoint, "job-a", live=False, queues=queues) as sender:
        sender.open(JobStart(job_id="job-a", live=False, source_size=(256, 192)), timeout_s=WAIT_S)
        for index in range(8):
            sender.send_frame(_frame("job-a", index))
        sender.cancel("user asked")
    assert send_control(context, endpoint, Shutdown(reason="test"))
    report = _report(reports)
    assert report["cancelled"] == ["job-a"] and report["held"] == []
    assert len(report["seen"]["job-a"]) <= 2, report["seen"]


def test_release_job_frees_the_job_of_a_killed_decoder(ipc_dir: Path, start_process, context) -> None:
    queues = QueueSettings(batch_frames=4)
    endpoint = _endpoint(ipc_dir, "w0")
    worker_reports, decoder_reports = SPAWN.Queue(), SPAWN.Queue()
    start_process(run_worker, endpoint, None, queues, 0.0, 0.0, worker_reports)
    decoder = start_process(run_stuck_decoder, endpoint, "job-k", queues, decoder_reports)
    assert _report(decoder_reports)["pid"] == decoder.pid
    os.kill(decoder.pid, signal.SIGKILL)  # no cancel, no end of stream: the worker still holds the job
    decoder.join(WAIT_S)
    assert release_job(context, endpoint, "job-k", "decoder killed")
    assert send_control(context, endpoint, Shutdown(reason="test"))
    report = _report(worker_reports)
    # Frames still in the killed process's socket buffer die with it: the worker saw a prefix of 0, 1.
    assert report["seen"].get("job-k", []) in ([], [0], [0, 1])
    assert (report["cancelled"], report["held"]) == (["job-k"], [])
