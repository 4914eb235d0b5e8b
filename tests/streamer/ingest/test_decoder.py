"""The decoder process against real sockets: the test plays worker (a FrameInbox), writer and daemon
(ResultCollectors), and the decoder is a real spawned process reading real H.264 files."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.config import SourcesConfig, TransportConfig
from streamer.ingest.decoder import DecoderSettings, run_decoder
from streamer.transport.messages import (
    Cancel,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    JobStart,
    Message,
    SourceStatus,
)
from streamer.transport.sockets import FrameInbox, ResultCollector
from videos import (
    corrupt_file,
    free_port,
    truncate_file,
    write_first_mask,
    write_moving_shape_video,
    write_text_file,
    write_zero_byte_file,
)

pytestmark = pytest.mark.timeout(90)

WAIT_S = 20.0
TRANSPORT = TransportConfig(
    batch_queue_frames=4, live_queue_frames=1, results_queue_frames=8, peer_timeout_s=10.0
)
QUEUES = TRANSPORT.queues()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    directory = tmp_path_factory.mktemp("decoder")
    video = directory / "shapes.mp4"
    masks = write_moving_shape_video(video, frames=36, objects=2)
    return video, write_first_mask(directory / "first.png", masks[0]), masks


@dataclass
class Peers:
    """The decoder's three peers, bound by the test."""

    worker: FrameInbox
    writer: ResultCollector
    events: ResultCollector
    seen_by_writer: list[Message] = field(default_factory=list)
    seen_by_daemon: list[Message] = field(default_factory=list)

    def settings(self, source: Path | str, mask: Path | None, **overrides: object) -> DecoderSettings:
        values: dict[str, object] = dict(
            job_id="job-1",
            source=str(source),
            mask_path=str(mask) if mask else None,
            live=False,
            worker_endpoint=self.worker.endpoint,
            writer_endpoint=self.writer.endpoint,
            events_endpoint=self.events.endpoint,
            transport=TRANSPORT,
            max_objects=4,
            outputs={"dir": "unused"},
        )
        values.update(overrides)
        return DecoderSettings(**values)  # type: ignore[arg-type]

    def drain(self) -> None:
        """Read whatever the writer and daemon sides have received so far."""
        for collector, seen in ((self.writer, self.seen_by_writer), (self.events, self.seen_by_daemon)):
            while (message := collector.receive(timeout_s=0.0)) is not None:
                seen.append(message)

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.drain()
            time.sleep(0.02)


@pytest.fixture
def peers(ipc_dir: Path) -> Peers:
    context = zmq.Context()
    created = Peers(
        worker=FrameInbox(context, f"ipc://{ipc_dir}/worker.sock", QUEUES),
        writer=ResultCollector(context, f"ipc://{ipc_dir}/writer.sock", QUEUES),
        events=ResultCollector(context, f"ipc://{ipc_dir}/events.sock", QUEUES),
    )
    yield created
    created.worker.close()
    created.writer.close()
    created.events.close()
    context.term()


def _play_worker(
    peers: Peers, *, delay_s: float = 0.0, start: JobStart | None = None
) -> tuple[JobStart, list[FrameMessage], EndOfStream]:
    """Accept the job (unless `start` was already accepted), then consume every frame until the end."""
    frames: list[FrameMessage] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = peers.worker.receive(timeout_s=0.2)
        peers.drain()
        if isinstance(message, JobStart):
            start = message
            peers.worker.accept(message)
        elif isinstance(message, FrameMessage):
            frames.append(message)
            time.sleep(delay_s)
        elif isinstance(message, EndOfStream):
            assert start is not None
            return start, frames, message
    raise AssertionError("the decoder never ended the stream")


def test_batch_job_is_lossless_in_order_with_the_same_source_frames_for_worker_and_writer(
    clip, peers: Peers, start_process
) -> None:
    video, first, masks = clip
    process = start_process(run_decoder, peers.settings(video, first))
    start, frames, end = _play_worker(peers)
    process.join(WAIT_S)
    assert process.exitcode == 0
    peers.drain()

    assert start.source_size == (160, 120) and start.fps == 24.0 and not start.live
    np.testing.assert_array_equal(start.mask, masks[0])
    assert [f.index for f in frames] == list(range(36))
    # Source size: the worker's VideoSession does all preprocessing, as `vosd segment` does.
    assert all(f.image.shape == (120, 160, 3) for f in frames)
    assert (end.frames_total, end.frames_sent, end.frames_dropped) == (36, 36, 0)
    full = [m for m in peers.seen_by_writer if isinstance(m, FrameMessage)]
    assert isinstance(peers.seen_by_writer[0], JobStart)
    assert [f.index for f in full] == list(range(36))
    assert all(np.array_equal(f.image, w.image) for f, w in zip(full, frames, strict=True))
    totals = {m.frames_total for m in peers.seen_by_daemon if isinstance(m, SourceStatus)}
    assert totals == {None, 36}  # unknown while connecting, then the container's count
    assert not [m for m in peers.seen_by_daemon if isinstance(m, ErrorMessage)]


def test_batch_decoder_waits_for_the_worker_instead_of_buffering(clip, peers: Peers, start_process) -> None:
    video, first, _ = clip
    start_process(run_decoder, peers.settings(video, first))
    message = peers.worker.receive(timeout_s=WAIT_S)
    assert isinstance(message, JobStart)
    peers.worker.accept(message)
    time.sleep(1.5)  # the worker takes nothing: the decoder may only fill its credit window
    peers.drain()
    full = [m for m in peers.seen_by_writer if isinstance(m, FrameMessage)]
    assert QUEUES.batch_frames <= len(full) <= QUEUES.batch_frames + 1
    _, frames, end = _play_worker(peers, start=message)
    assert [f.index for f in frames] == list(range(36)) and end.frames_dropped == 0


def test_live_job_drops_when_the_worker_is_slow_and_accounts_for_every_frame(
    clip, peers: Peers, start_process
) -> None:
    video, first, _ = clip
    start_process(run_decoder, peers.settings(video, first, live=True, max_frames=30))
    _, frames, end = _play_worker(peers, delay_s=0.05)
    peers.wait_for(
        lambda: (
            any(isinstance(m, Cancel | EndOfStream) for m in peers.seen_by_writer)
            or len([m for m in peers.seen_by_writer if isinstance(m, FrameMessage)]) >= len(frames)
        ),
        "full-size frames",
    )
    assert end.frames_total == 30 and end.frames_dropped > 0
    assert end.frames_sent == len(frames) and len(frames) + end.frames_dropped == 30
    indexes = [f.index for f in frames]
    assert indexes == sorted(indexes) and indexes[0] == 0
    full = [m.index for m in peers.seen_by_writer if isinstance(m, FrameMessage)]
    assert (
        full == indexes
    )  # the writer gets exactly the frames the worker got, so no mask is waited for in vain


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, clip: d / "missing.mp4", r"not found"),
        (lambda d, clip: write_zero_byte_file(d / "empty.mp4"), r"empty file \(0 bytes\)"),
        (lambda d, clip: write_text_file(d / "notes.mp4"), r"not a video"),
        (lambda d, clip: corrupt_file(clip, d / "corrupt.mp4"), r"corrupt"),
        (lambda d, clip: truncate_file(clip, d / "cut.mp4"), r"truncated"),
    ],
    ids=["missing", "zero-byte", "text", "corrupt", "truncated"],
)
def test_unusable_source_fails_the_job_with_a_clear_error(
    tmp_path: Path, clip, peers: Peers, start_process, make, message: str
) -> None:
    video, first, _ = clip
    process = start_process(run_decoder, peers.settings(make(tmp_path, video), first))

    def play_until_error() -> bool:  # corrupt data is found while decoding, after the job has started
        message = peers.worker.receive(timeout_s=0.05)
        if isinstance(message, JobStart):
            peers.worker.accept(message)
        return any(isinstance(m, ErrorMessage) for m in peers.seen_by_daemon)

    peers.wait_for(play_until_error, "an error")
    process.join(WAIT_S)
    assert process.exitcode == 0
    error = next(m for m in peers.seen_by_daemon if isinstance(m, ErrorMessage))
    assert error.job_id == "job-1" and error.code == "source"
    assert re.search(message, error.message), error.message


def test_truncated_file_streams_the_good_frames_then_fails_and_cancels(
    tmp_path: Path, peers: Peers, start_process
) -> None:
    whole = tmp_path / "whole.mp4"
    masks = write_moving_shape_video(whole, frames=36, faststart=True)
    cut = truncate_file(whole, tmp_path / "cut.mp4", fraction=0.6)
    mask = write_first_mask(tmp_path / "first.png", masks[0])
    start_process(run_decoder, peers.settings(cut, mask))
    received: list[Message] = []
    deadline = time.monotonic() + WAIT_S
    while not any(isinstance(m, Cancel) for m in received):
        assert time.monotonic() < deadline
        message = peers.worker.receive(timeout_s=0.2)
        peers.drain()
        if isinstance(message, JobStart):
            peers.worker.accept(message)
        if message is not None:
            received.append(message)
    peers.wait_for(lambda: any(isinstance(m, ErrorMessage) for m in peers.seen_by_daemon), "an error")
    frames = [m for m in received if isinstance(m, FrameMessage)]
    assert 0 < len(frames) < 36 and [m.index for m in frames] == list(range(len(frames)))
    error = next(m for m in peers.seen_by_daemon if isinstance(m, ErrorMessage))
    found = re.search(r"truncated at frame (\d+) of 36", error.message)
    # Frames still queued when the Cancel reached the inbox are dropped unsegmented, so the worker may
    # have taken fewer than were decoded, never more.
    assert found is not None and len(frames) <= int(found.group(1)) < 36, error.message
    peers.wait_for(lambda: any(isinstance(m, Cancel) for m in peers.seen_by_writer), "the writer's cancel")


def _mask_too_many(directory: Path, mask: np.ndarray) -> Path:
    many = mask.copy()
    for label, row in zip(range(3, 8), range(0, 100, 20), strict=True):
        many[row : row + 5, :5] = label
    return write_first_mask(directory / "many.png", many)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, m: write_first_mask(d / "small.png", m[::2, ::2]), r"is 80x60 but the video is 160x120"),
        (lambda d, m: write_first_mask(d / "empty.png", np.zeros_like(m)), r"has no object"),
        (_mask_too_many, r"has 7 objects; this daemon allows at most 4"),
        (lambda d, m: d / "absent.png", r"not found"),
    ],
    ids=["wrong-size", "empty", "too-many-objects", "missing"],
)
def test_unusable_mask_fails_the_job_before_anything_is_sent(
    tmp_path: Path, clip, peers: Peers, start_process, make, message: str
) -> None:
    video, _, masks = clip
    start_process(run_decoder, peers.settings(video, make(tmp_path, masks[0])))
    peers.wait_for(lambda: any(isinstance(m, ErrorMessage) for m in peers.seen_by_daemon), "an error")
    error = next(m for m in peers.seen_by_daemon if isinstance(m, ErrorMessage))
    assert error.code == "mask" and re.search(message, error.message), error.message
    assert peers.worker.receive(timeout_s=0.2) is None and not peers.seen_by_writer


def test_sigterm_cancels_the_job_on_the_writer_and_exits(clip, peers: Peers, start_process) -> None:
    video, first, _ = clip
    process = start_process(run_decoder, peers.settings(video, first))
    message = peers.worker.receive(timeout_s=WAIT_S)
    assert isinstance(message, JobStart)
    peers.worker.accept(message)
    peers.wait_for(lambda: len(peers.seen_by_writer) > 2, "the first frames")
    os.kill(process.pid, signal.SIGTERM)  # blocked on credits: the stop flag must break the wait
    process.join(5.0)
    assert process.exitcode == 0
    peers.wait_for(lambda: any(isinstance(m, Cancel) for m in peers.seen_by_writer), "the writer's cancel")
    assert not any(isinstance(m, ErrorMessage) for m in peers.seen_by_daemon)


def test_sigusr1_ends_the_stream_normally_with_the_frames_so_far(clip, peers: Peers, start_process) -> None:
    video, first, _ = clip
    process = start_process(run_decoder, peers.settings(video, first))
    message = peers.worker.receive(timeout_s=WAIT_S)
    assert isinstance(message, JobStart)
    peers.worker.accept(message)
    peers.wait_for(lambda: len(peers.seen_by_writer) > 2, "the first frames")
    os.kill(process.pid, signal.SIGUSR1)  # `vosd stop`: finish now, keeping what was sent
    _, frames, end = _play_worker(peers, start=message)
    process.join(WAIT_S)
    assert process.exitcode == 0
    peers.drain()
    assert 0 < end.frames_sent == len(frames) < 36 and [f.index for f in frames] == list(range(len(frames)))
    assert not any(isinstance(m, Cancel) for m in peers.seen_by_writer)
    assert not any(isinstance(m, ErrorMessage) for m in peers.seen_by_daemon)
    states = [m.state for m in peers.seen_by_daemon if isinstance(m, SourceStatus)]
    changes = [state for i, state in enumerate(states) if i == 0 or state != states[i - 1]]
    assert changes[:2] == ["connecting", "streaming"]  # reports repeat on a timer: compare the changes


def test_sigusr1_before_a_live_source_connects_reports_stopped(peers: Peers, start_process) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: the decoder keeps reconnecting
    settings = peers.settings(
        url, None, live=True, sources=SourcesConfig(reconnect_initial_delay_s=0.2, reconnect_max_delay_s=0.5)
    )
    process = start_process(run_decoder, settings)
    peers.wait_for(
        lambda: any(isinstance(m, SourceStatus) and m.attempts >= 2 for m in peers.seen_by_daemon), "retries"
    )
    retry = next(m for m in peers.seen_by_daemon if isinstance(m, SourceStatus) and m.attempts >= 2)
    assert retry.state == "reconnecting" and url in (retry.error or "") and retry.last_frame_at is None
    os.kill(process.pid, signal.SIGUSR1)
    peers.wait_for(lambda: any(isinstance(m, ErrorMessage) for m in peers.seen_by_daemon), "the report")
    error = next(m for m in peers.seen_by_daemon if isinstance(m, ErrorMessage))
    assert error.code == "stopped" and "nothing was produced" in error.message
    process.join(5.0)
    assert process.exitcode == 0 and not peers.seen_by_writer
