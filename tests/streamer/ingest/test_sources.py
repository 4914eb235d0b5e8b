"""Sources: real H.264 files written by the tests, broken files, and live MPEG-TS streams that are killed."""

from __future__ import annotations

import logging
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from streamer.ingest.sources import (
    ReconnectPolicy,
    Size,
    SourceError,
    SourceStopped,
    TruncatedSourceError,
    UnsupportedSourceError,
    check_supported,
    is_live_uri,
    open_source,
    working_size,
)
from videos import (
    OBJECT_COLOURS,
    LiveServer,
    corrupt_file,
    free_port,
    interior,
    truncate_file,
    write_moving_shape_video,
    write_text_file,
    write_zero_byte_file,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("clip") / "shapes.mp4"
    return path, write_moving_shape_video(path, frames=48, objects=2)


def _read_all(uri: str | Path, **kwargs: object) -> list:
    with open_source(uri, **kwargs) as source:  # type: ignore[arg-type]
        return list(source)


def test_decodes_h264_file_in_order_at_working_size(clip: tuple[Path, list[np.ndarray]]) -> None:
    path, masks = clip
    with open_source(path, target_size=96, keep_source_image=True) as source:
        info = source.info
        frames = list(source)
        assert source.stats.state == "ended" and source.stats.frames == 48
    assert (info.width, info.height, info.fps, info.frame_count) == (160, 120, 24.0, 48)
    assert (info.codec, info.is_live) == ("h264", False)
    assert [frame.index for frame in frames] == list(range(48))
    assert all(frame.image.shape == (96, 128, 3) and frame.image.dtype == np.uint8 for frame in frames)
    assert all(frame.source_size == Size(160, 120) for frame in frames)
    assert all(frame.source_image.shape == (120, 160, 3) for frame in frames)
    times = np.array([frame.pts_seconds for frame in frames])
    assert times[0] == 0.0 and np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, np.arange(48) / 24.0, atol=1e-3)
    # RGB order and content: each shape has its own colour
    for frame, mask in zip(frames[::8], masks[::8], strict=True):
        for label in (1, 2):
            inside = frame.source_image[interior(mask == label)].astype(float).mean(axis=0)
            assert np.abs(inside - OBJECT_COLOURS[label]).max() < 25


def test_file_uri_and_other_containers_keep_size_without_target(tmp_path: Path) -> None:
    for name in ("a.mkv", "a.ts"):
        write_moving_shape_video(tmp_path / name, frames=30)
        frames = _read_all(f"file://{tmp_path / name}")
        assert [frame.index for frame in frames] == list(range(30))
        assert frames[0].image.shape == (120, 160, 3) and frames[0].source_image is None


def test_working_size_keeps_aspect_with_shorter_side() -> None:
    assert working_size(Size(160, 120), 96) == Size(128, 96)
    assert working_size(Size(120, 200), 60) == Size(60, 100)
    assert working_size(Size(160, 120), None) == Size(160, 120)
    assert is_live_uri("rtsp://cam/1") and is_live_uri("udp://127.0.0.1:5000") and is_live_uri("camera:0")
    assert is_live_uri(0) and not is_live_uri("/videos/a.mp4") and not is_live_uri("https://host/a.mp4")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, clip: d / "missing.mp4", r"not found"),
        (lambda d, clip: write_zero_byte_file(d / "empty.mp4"), r"empty file \(0 bytes\)"),
        (lambda d, clip: write_text_file(d / "notes.mp4"), r"not a video: the file is text"),
        (lambda d, clip: corrupt_file(clip, d / "corrupt.mp4"), r"corrupt data"),
        (lambda d, clip: truncate_file(clip, d / "cut.mp4"), r"truncated or unfinished MP4.*moov"),
        (lambda d, clip: d, r"is a directory"),
    ],
    ids=["missing", "zero-byte", "text", "corrupt", "truncated-mp4-without-index", "directory"],
)
def test_unreadable_files_raise_clear_source_errors(tmp_path: Path, clip, make, message: str) -> None:
    path = make(tmp_path, clip[0])
    with pytest.raises(SourceError, match=message):
        _read_all(path)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1), audio.setsampwidth(2), audio.setframerate(8000)
        audio.writeframes((np.sin(np.arange(8000) / 5) * 8000).astype("<i2").tobytes())
    with pytest.raises(SourceError, match=r"no video stream \(streams found: audio\)"):
        open_source(path)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_truncated_file_yields_frames_before_the_cut_then_reports(tmp_path: Path, suffix: str) -> None:
    whole = tmp_path / f"whole{suffix}"
    masks = write_moving_shape_video(whole, frames=48, faststart=True)
    cut = truncate_file(whole, tmp_path / f"cut{suffix}", fraction=0.6)
    received = []
    with (
        open_source(cut) as source,
        pytest.raises(TruncatedSourceError, match=r"truncated at frame \d+ of 48") as caught,
    ):
            for frame in source:
                received.append(frame)
    assert 0 < len(received) < 48
    assert [frame.index for frame in received] == list(range(len(received)))
    assert caught.value.frames_decoded == len(received) and caught.value.expected_frames == 48
    assert f"truncated at frame {len(received)} of 48" in str(caught.value)
    last = received[-1].image  # the frames before the cut are real pictures, not garbage
    disc = last[interior(masks[len(received) - 1] == 1)].astype(float).mean(axis=0)
    assert np.abs(disc - OBJECT_COLOURS[1]).max() < 25


def test_live_source_that_never_answers_gives_up_after_max_attempts() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    policy = ReconnectPolicy(stall_timeout=1.0, initial_delay=0.05, max_delay=0.1, max_attempts=3)
    with pytest.raises(SourceError, match=r"gave up after 3 connect attempts"):
        open_source(url, reconnect=policy, open_timeout=1.0)


def _mean_tint(image: np.ndarray) -> float:
    """Mean of the blue channel in the bottom-right corner, which the moving disc never crosses."""
    height, width = image.shape[:2]
    return float(image[-(height // 10) :, -(width // 10) :, 2].mean())


def _consume_with_outage(source, outage, before: int = 24, after: int = 24) -> list:
    """Read ``before`` frames, cause the outage, then read ``after`` more frames."""
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == before:
            outage()
        if len(frames) == before + after:
            break
    return frames


def _loss_logged(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    records = [
        r for r in caplog.records if r.name == "streamer.ingest.sources" and "reconnecting" in r.getMessage()
    ]
    assert records, "the loss of the stream was never logged"
    return records[0]


def _check_continued(frames: list, stats) -> None:
    """Indexes and timestamps run on across the reconnect, and the last frames come from the new server."""
    assert [frame.index for frame in frames] == list(range(48))
    assert np.all(np.diff([frame.pts_seconds for frame in frames]) > 0)
    assert stats.stalls >= 1 and stats.reconnects >= 1
    assert _mean_tint(frames[-1].image) - _mean_tint(frames[0].image) > 60


def test_udp_stream_killed_mid_stream_is_detected_and_reconnected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamer.ingest.sources")
    port = free_port("udp")
    first = LiveServer("udp", port, tint=(0, 0, 0))
    second = LiveServer("udp", port, tint=(0, 0, 120))
    stall_timeout = 1.0
    policy = ReconnectPolicy(stall_timeout=stall_timeout, initial_delay=0.2, max_delay=1.0, max_attempts=30)
    restart = threading.Timer(2.5, second.start)
    killed_at: list[float] = []

    def outage() -> None:
        first.kill()
        killed_at.append(time.time())
        restart.start()

    try:
        first.start()
        with open_source(first.url, target_size=60, reconnect=policy, open_timeout=3.0) as source:
            assert source.info.is_live and source.info.codec == "h264" and source.info.frame_count is None
            frames = _consume_with_outage(source, outage)
            stats = source.stats
    finally:
        restart.cancel()
        first.stop()
        second.stop()
    detected_after = _loss_logged(caplog).created - killed_at[0]
    assert detected_after < stall_timeout + 2.0, f"loss noticed only after {detected_after:.1f}s"
    assert frames[-1].image.shape == (60, 80, 3)
    _check_continued(frames, stats)


def test_tcp_stream_that_hangs_is_detected_within_stall_timeout_then_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streamer.ingest.sources")
    port = free_port()
    first = LiveServer("tcp", port, tint=(0, 0, 0))
    second = LiveServer("tcp", port, tint=(0, 0, 120))
    stall_timeout = 1.5
    policy = ReconnectPolicy(stall_timeout=stall_timeout, initial_delay=0.2, max_delay=1.0, max_attempts=30)
    # killed only after the stall must already have been noticed, so the kill's EOF cannot be what ends it
    restart = threading.Timer(stall_timeout + 2.5, lambda: (first.kill(), second.start()))
    paused_at: list[float] = []

    def hang_then_restart() -> None:
        """The server stops sending but keeps its connection open; later it is killed and started again."""
        first.pause()
        paused_at.append(time.time())
        restart.start()

    try:
        first.start()
        time.sleep(0.5)  # the TCP server must be listening before the client connects
        with open_source(first.url, reconnect=policy, open_timeout=3.0) as source:
            frames = _consume_with_outage(source, hang_then_restart)
            stats = source.stats
    finally:
        restart.cancel()
        first.stop()
        second.stop()
    loss = _loss_logged(caplog)
    detected_after = loss.created - paused_at[0]
    assert detected_after < stall_timeout + 2.0, f"stall noticed only after {detected_after:.1f}s"
    assert "no data" in loss.getMessage() or "stalled" in loss.getMessage()
    _check_continued(frames, stats)


@pytest.mark.parametrize("uri", ["gopher://x", "ftp://host/a.mp4", "FTP://host/a.mp4", "smb://share/a.mp4"])
def test_unsupported_schemes_are_refused_before_ffmpeg_sees_them(uri: str) -> None:
    with pytest.raises(UnsupportedSourceError, match=r"unsupported source scheme .*rtsp://"):
        check_supported(uri)
    with pytest.raises(SourceError, match="unsupported source scheme"):
        open_source(uri)
    for fine in ("/videos/a.mp4", "a:b.mp4", "file:///v/a.mp4", "rtsp://cam/1", "udp://0:5", "camera:0", 0):
        check_supported(fine)


def test_source_that_never_connects_reports_each_attempt_and_gives_up_within_its_budget() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    changes: list[tuple[str, int, str | None]] = []
    budget = 1.5
    policy = ReconnectPolicy(stall_timeout=1.0, initial_delay=0.1, max_delay=0.3, give_up_after=budget)
    started = time.monotonic()
    message = r"could not connect within 1.5 s \(\d+ attempts\); last error: .*refused"
    with pytest.raises(SourceError, match=message):
        open_source(url, reconnect=policy, open_timeout=1.0,
                    on_change=lambda s: changes.append((s.state, s.attempts, s.last_error)))
    assert time.monotonic() - started < budget + 1.0
    assert changes[0] == ("connecting", 0, None)
    retries = [change for change in changes if change[0] == "reconnecting"]
    assert [attempts for _, attempts, _ in retries] == list(range(1, len(retries) + 1)) and len(retries) >= 3
    assert all(url in (error or "") and "refused" in (error or "") for _, _, error in retries)


def test_should_end_interrupts_a_reconnect_wait() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    policy = ReconnectPolicy(stall_timeout=1.0, initial_delay=30.0, max_delay=30.0, give_up_after=None)
    end = threading.Event()
    threading.Timer(0.5, end.set).start()
    started = time.monotonic()
    with pytest.raises(SourceStopped, match="stopped before the source connected"):
        open_source(url, reconnect=policy, open_timeout=1.0, should_end=end.is_set)
    assert time.monotonic() - started < 3.0


def test_cut_stream_reports_reconnecting_and_fails_after_its_budget_without_a_frame() -> None:
    budget = 3.0
    changes: list[tuple[str, int, float | None]] = []
    policy = ReconnectPolicy(stall_timeout=1.0, initial_delay=0.2, max_delay=0.5, give_up_after=budget)
    with LiveServer("tcp", free_port()) as server:
        time.sleep(0.5)
        source = open_source(server.url, reconnect=policy, open_timeout=2.0,
                             on_change=lambda s: changes.append((s.state, s.attempts, s.last_frame_at)))
        frames = 0
        with source, pytest.raises(SourceError, match=r"no frame for 3 s, gave up reconnecting") as caught:
            for _ in source:
                frames += 1
                if frames == 10:
                    server.kill()
                    killed = time.monotonic()
    assert time.monotonic() - killed < budget + 2.0
    assert "last error:" in str(caught.value) and server.url in str(caught.value)
    states = [state for state, _, _ in changes]
    assert states[0] == "connecting" and "streaming" in states and states[-1] == "failed"
    lost = [change for change in changes[states.index("streaming") :] if change[0] == "reconnecting"]
    assert lost and max(attempts for _, attempts, _ in lost) >= 2
    assert len({last for _, _, last in lost}) == 1 and lost[0][2] is not None  # the last frame's time stays
