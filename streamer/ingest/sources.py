"""Video sources: files and network streams through PyAV, local cameras through OpenCV.

``open_source(uri, ...)`` returns a :class:`Source`; iterating it yields one :class:`DecodedFrame` at a
time (RGB, resized to the working resolution), so no video is ever held in memory. This module knows
nothing about ZeroMQ or Redis: the decoder process is a thin loop around it.

Files end at end of file. Live sources (RTSP, UDP, TCP, HLS, cameras) never "end": a stream that ends,
errors, or delivers no frame for ``ReconnectPolicy.stall_timeout`` seconds is closed and reopened with
exponential backoff, until ``ReconnectPolicy.give_up_after`` seconds have passed without a frame (or since
the first attempt, for a source that never connected): then it raises `SourceError` with the last error.
Every blocking FFmpeg call runs under PyAV's ``timeout=(open, read)``, so a dead camera raises instead of
hanging; the stall check also catches a stream that sends bytes but no pictures. Frame indexes keep
counting across reconnects and timestamps are re-based so they keep increasing. ``on_change`` tells the
caller about every state change and failed attempt (for job status); ``should_end`` lets it end a live
source cleanly, even while it waits to reconnect.

Only the URL schemes in `SUPPORTED_SCHEMES` are opened (`check_supported`), so FFmpeg never gets a
``gopher://`` or ``ftp://`` URL from a job.

Errors are :class:`SourceError` with a message that says what is wrong (not found, empty, not a video,
no video stream, corrupt data). Truncation policy: a truncated file yields every frame that decodes and
then raises :class:`TruncatedSourceError` (a ``SourceError``), so a batch job *fails* with "truncated at
frame N of M" instead of finishing with outputs that look complete. The caller has seen frames 0..N-1
and may keep them (``frames_decoded`` says how many). Only containers that announce their length (MP4
sample tables, Matroska/WebM durations) can be detected; a cut MPEG-TS file simply ends.

Size: one `Source` with its reconnect loop over two connection kinds (PyAV, OpenCV cameras). The kinds
(about 250 lines) are to move to ingest/pyav.py and ingest/camera.py over a shared connection base once
the hardware-decoder work in this module (speed issue #10) has landed, so the two changes do not collide.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "tcp", "srt"})
NETWORK_SCHEMES = LIVE_SCHEMES | {"http", "https"}
SUPPORTED_SCHEMES = NETWORK_SCHEMES | {"file"}
"""Schemes a ``scheme://`` source may have; anything else is refused before it reaches FFmpeg. Plain paths,
camera indexes, ``camera:N`` and ``/dev/videoN`` have no ``://`` and are always accepted."""
FALLBACK_FPS = 25.0
END_POLL_S = 0.1
"""How often a reconnect wait asks ``should_end``."""


class SourceError(RuntimeError):
    """A source that cannot be opened or decoded; the message is meant for the job result."""


class UnsupportedSourceError(SourceError, ValueError):
    """The source's URL scheme is not one vosd opens; a ValueError too, so submitters can refuse it."""


class SourceStopped(SourceError):
    """``should_end`` became true before a live source ever connected: there is nothing to read."""


class TruncatedSourceError(SourceError):
    """The file ended before the length its container announces; raised after the last good frame."""

    def __init__(self, message: str, frames_decoded: int, expected_frames: int) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded
        self.expected_frames = expected_frames


class Size(NamedTuple):
    """Picture size in the order video tools use; arrays are (height, width)."""

    width: int
    height: int


@dataclass(frozen=True)
class SourceInfo:
    uri: str
    width: int
    height: int
    fps: float
    frame_count: int | None
    """Exact for MP4 (sample table), estimated from the duration otherwise, None for live sources."""
    codec: str
    is_live: bool

    @property
    def size(self) -> Size:
        return Size(self.width, self.height)


@dataclass(frozen=True)
class DecodedFrame:
    index: int
    """Counts delivered frames from 0, across reconnects."""
    pts_seconds: float
    """Presentation time relative to the first frame; increasing across reconnects of a live source."""
    wall_time: float
    """``time.time()`` when the frame was decoded (latency accounting)."""
    image: np.ndarray
    """RGB ``uint8 (H, W, 3)`` at the working size."""
    source_size: Size
    source_image: np.ndarray | None = None
    """RGB at the source size, only when the source was opened with ``keep_source_image``."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """When a live source counts as dead, and how it is reopened."""

    stall_timeout: float = 10.0
    """No frame for this many seconds means the stream is stalled; also the read timeout."""
    initial_delay: float = 0.5
    max_delay: float = 10.0
    multiplier: float = 2.0
    max_attempts: int | None = None
    """Consecutive failed (re)connects before giving up with SourceError; None: no count limit."""
    give_up_after: float | None = 300.0
    """Seconds without a frame (or since the first attempt, if none came) after which reconnecting stops
    with SourceError; None retries forever. Five minutes outlast a camera reboot or a relay restart."""

    def __post_init__(self) -> None:
        if self.stall_timeout <= 0 or self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError(f"invalid reconnect policy: {self}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1, or None for unlimited")
        if self.give_up_after is not None and self.give_up_after <= 0:
            raise ValueError("give_up_after must be positive seconds, or None to retry forever")

    def delays(self) -> Iterator[float]:
        """Backoff delays, one per attempt, ending after ``max_attempts``."""
        delay, attempt = self.initial_delay, 0
        while self.max_attempts is None or attempt < self.max_attempts:
            yield delay
            delay, attempt = min(self.max_delay, delay * self.multiplier), attempt + 1


@dataclass
class SourceStats:
    """Counters a supervisor can export; updated while iterating."""

    state: str = "connecting"
    """connecting (first attempt), streaming, reconnecting (retrying after a failed attempt or a lost
    stream), ended, failed, closed."""
    frames: int = 0
    reconnects: int = 0
    """Successful reopenings after a loss."""
    stalls: int = 0
    """Losses detected (stall, read error, or end of a live stream)."""
    decode_errors: int = 0
    last_error: str | None = None
    attempts: int = 0
    """Failed connect attempts since the last frame (0 while streaming)."""
    last_frame_at: float | None = None
    """``time.time()`` of the last delivered frame."""


@dataclass(frozen=True)
class SourceOptions:
    """Everything that tunes opening and decoding; ``open_source`` builds it from its keywords."""

    live: bool
    target_size: int | None = None
    keep_source_image: bool = False
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    rtsp_transport: str = "tcp"
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    ffmpeg_options: dict[str, str] = field(default_factory=dict)
    max_decode_errors: int = 25
    """Packets in a row the decoder may reject before the data counts as corrupt."""
    fallback_fps: float = FALLBACK_FPS
    on_change: Callable[[SourceStats], None] | None = None
    """Called with the stats on every state change and every failed connect attempt."""
    should_end: Callable[[], bool] | None = None
    """Polled while a live source waits to reconnect: true ends the iteration (or `connect`) cleanly."""


def working_size(source: Size, target: int | None) -> Size:
    """The size a frame is resized to: shorter side = ``target``, aspect kept; None keeps the source size."""
    if target is None:
        return Size(*source)
    scale = target / min(source.width, source.height)
    return Size(max(1, round(source.width * scale)), max(1, round(source.height * scale)))


def is_live_uri(uri: str | int) -> bool:
    """Live by default: cameras, stream protocols, HLS playlists; not files or plain HTTP(S) downloads."""
    if _camera_device(uri) is not None:
        return True
    text = str(uri)
    scheme = urlparse(text).scheme.lower()
    return scheme in LIVE_SCHEMES or (scheme in ("http", "https") and ".m3u8" in text)


def check_supported(uri: str | int | Path) -> None:
    """Raise `UnsupportedSourceError` for a ``scheme://`` source whose scheme is not in SUPPORTED_SCHEMES."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", str(uri))
    if match and match.group(1).lower() not in SUPPORTED_SCHEMES:
        raise UnsupportedSourceError(
            f"{uri}: unsupported source scheme {match.group(1)!r}; use a file path, a camera, or one of "
            f"{', '.join(s + '://' for s in sorted(SUPPORTED_SCHEMES))}"
        )


def open_source(
    uri: str | int | Path,
    *,
    live: bool | None = None,
    target_size: int | None = None,
    keep_source_image: bool = False,
    open_timeout: float = 10.0,
    read_timeout: float | None = None,
    rtsp_transport: str = "tcp",
    reconnect: ReconnectPolicy | None = None,
    ffmpeg_options: dict[str, str] | None = None,
    max_decode_errors: int = 25,
    on_change: Callable[[SourceStats], None] | None = None,
    should_end: Callable[[], bool] | None = None,
) -> Source:
    """Open a video source and return it connected (``info`` is filled in).

    ``uri``: a file path, ``file://``, ``rtsp://`` (over TCP unless ``rtsp_transport="udp"``), ``http(s)://``,
    ``udp://``, ``tcp://``, or a camera (``/dev/video0``, an integer, ``camera:0``). ``live=None`` guesses
    from the URI. ``read_timeout`` defaults to the stall timeout for live sources. A live source that
    cannot be reached is retried according to ``reconnect`` before ``SourceError`` is raised.
    """
    uri = str(uri) if isinstance(uri, Path) else uri
    check_supported(uri)
    is_live = is_live_uri(uri) if live is None else live
    policy = reconnect or ReconnectPolicy()
    options = SourceOptions(
        live=is_live,
        target_size=target_size,
        keep_source_image=keep_source_image,
        open_timeout=open_timeout,
        read_timeout=read_timeout or (policy.stall_timeout if is_live else open_timeout),
        rtsp_transport=rtsp_transport,
        reconnect=policy,
        ffmpeg_options=dict(ffmpeg_options or {}),
        max_decode_errors=max_decode_errors,
        on_change=on_change,
        should_end=should_end,
    )
    source = Source(uri, options)
    source.connect()
    return source


class _LinkLost(Exception):
    """A live connection stopped delivering; the source reconnects."""


class _Picture(ABC):
    """One decoded picture before conversion, so only the sizes actually needed are produced."""

    pts_seconds: float | None
    size: Size

    @abstractmethod
    def rgb(self, size: Size) -> np.ndarray: ...


class _Connection(ABC):
    """One open of a source; a reconnect makes a new one."""

    info: SourceInfo
    decode_errors: int = 0

    @abstractmethod
    def pictures(self) -> Iterator[_Picture]: ...

    @abstractmethod
    def close(self) -> None: ...


class Source:
    """Iterates decoded frames; reconnects live sources. Use as a context manager or call ``close()``.

    ``close()`` may be called from another thread to interrupt a backoff wait.
    """

    def __init__(self, uri: str | int, options: SourceOptions) -> None:
        self.uri = uri
        self.options = options
        self.stats = SourceStats()
        self._connection: _Connection | None = None
        self._info: SourceInfo | None = None
        self._closed = threading.Event()
        self._last_pts = -1.0
        self._session_origin: float | None = None
        self._session_base = 0.0
        self._session_frames = 0
        self._last_frame_clock = time.monotonic()

    @property
    def info(self) -> SourceInfo:
        if self._info is None:
            raise SourceError(f"{self.uri}: source is not connected")
        return self._info

    def connect(self) -> None:
        """First open; live sources retry with backoff, files fail at once."""
        if self.options.live:
            self._last_frame_clock = time.monotonic()  # the give-up budget of a source that never connects
            self._connection = self._reconnect("initial connection")
            if self._connection is None:
                raise SourceStopped(f"{self.uri}: stopped before the source connected")
        else:
            self._connection = self._open()
        self._info = self._connection.info

    def _open(self) -> _Connection:
        device = _camera_device(self.uri)
        if device is not None:
            return _CameraConnection(device, self.options)
        return _AVConnection(str(self.uri), self.options)

    def __iter__(self) -> Iterator[DecodedFrame]:
        if self._connection is None:
            raise SourceError(f"{self.uri}: source is closed or was already read to the end")
        while not self._closed.is_set() and self._connection is not None:
            connection = self._connection
            self._start_session()
            try:
                for picture in connection.pictures():
                    yield self._deliver(picture)
                if not self.options.live:
                    self.stats.state = "ended"
                    return
                reason = "stream ended"
            except _LinkLost as lost:
                reason = str(lost)
            except SourceError as error:
                self.stats.state, self.stats.last_error = "failed", str(error)
                raise
            finally:
                self.stats.decode_errors += connection.decode_errors
                connection.close()
                self._connection = None
            self.stats.stalls += 1
            self.stats.last_error = reason
            log.warning("%s: lost after %d frames (%s); reconnecting", self.uri, self.stats.frames, reason)
            self._connection = self._reconnect(reason)
            if self._connection is None:
                self.stats.state = "ended"
                return
            self.stats.reconnects += 1
            log.warning("%s: reconnected (%d reconnects so far)", self.uri, self.stats.reconnects)

    def _reconnect(self, reason: str) -> _Connection | None:
        """Open again with exponential backoff; None when the caller asks to end; SourceError after
        ``max_attempts`` failures in a row or ``give_up_after`` seconds without a frame."""
        self._set_state("reconnecting" if self.stats.frames else "connecting")
        policy = self.options.reconnect
        error: SourceError | None = None
        gave_up = f"gave up after {policy.max_attempts} connect attempts ({reason})"
        for attempt, delay in enumerate(policy.delays(), start=1):
            if attempt > 1 or reason != "initial connection":
                remaining = self._budget_left()
                if remaining <= 0:
                    gave_up = self._budget_spent(attempt - 1, reason)
                    break
                if self._wait(min(delay, remaining)):
                    break
            try:
                return self._open()
            except SourceError as failure:
                error = failure
                self.stats.attempts = attempt
                self.stats.last_error = str(failure)
                log.warning("%s: connect attempt %d failed: %s", self.uri, attempt, failure)
                self._set_state("reconnecting")
        if self._closed.is_set():
            self._set_state("closed")
            raise SourceError(f"{self.uri}: source closed while reconnecting")
        if self._end_requested():
            return None
        self._set_state("failed")
        raise SourceError(f"{self.uri}: {gave_up}; last error: {error or reason}")

    def _budget_left(self) -> float:
        budget = self.options.reconnect.give_up_after
        return math.inf if budget is None else budget - (time.monotonic() - self._last_frame_clock)

    def _budget_spent(self, attempts: int, reason: str) -> str:
        budget = self.options.reconnect.give_up_after
        if not self.stats.frames:
            return f"could not connect within {budget:g} s ({attempts} attempts)"
        return f"no frame for {budget:g} s, gave up reconnecting after {attempts} attempts ({reason})"

    def _wait(self, delay: float) -> bool:
        """Sleep before an attempt; True, at once, when the source is closed or the caller asks to end."""
        deadline = time.monotonic() + delay
        while not self._closed.wait(min(END_POLL_S, max(0.0, deadline - time.monotonic()))):
            if self._end_requested():
                return True
            if time.monotonic() >= deadline:
                return False
        return True

    def _end_requested(self) -> bool:
        return self.options.should_end is not None and self.options.should_end()

    def _set_state(self, state: str) -> None:
        self.stats.state = state
        self._notify()

    def _notify(self) -> None:
        if self.options.on_change is not None:
            self.options.on_change(self.stats)

    def _start_session(self) -> None:
        """Timestamps of a new connection continue after the last delivered one."""
        self._session_origin = None
        self._session_frames = 0
        fps = self._info.fps if self._info else self.options.fallback_fps
        self._session_base = self._last_pts + 1.0 / fps if self._last_pts >= 0 else 0.0

    def _deliver(self, picture: _Picture) -> DecodedFrame:
        fps = self.info.fps
        pts = picture.pts_seconds
        if pts is None:
            pts_seconds = self._session_base + self._session_frames / fps
        else:
            if self._session_origin is None:
                self._session_origin = pts
            pts_seconds = self._session_base + (pts - self._session_origin)
            if self.options.live and pts_seconds <= self._last_pts:  # timestamp reset or wrap inside a stream
                self._session_origin, self._session_base = pts, self._last_pts + 1.0 / fps
                pts_seconds = self._session_base
        self._last_pts = pts_seconds
        self._session_frames += 1
        size = working_size(picture.size, self.options.target_size)
        source_image = None
        if self.options.keep_source_image:
            source_image = picture.rgb(picture.size)
            image = source_image
            if size != picture.size:
                image = cv2.resize(source_image, size, interpolation=cv2.INTER_AREA)
        else:
            image = picture.rgb(size)
        frame = DecodedFrame(self.stats.frames, pts_seconds, time.time(), image, picture.size, source_image)
        self.stats.frames += 1
        self.stats.last_frame_at, self._last_frame_clock = frame.wall_time, time.monotonic()
        if self.stats.state != "streaming":
            self.stats.attempts = 0
            self._set_state("streaming")
        return frame

    def close(self) -> None:
        self._closed.set()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self.stats.state not in ("ended", "failed"):
            self.stats.state = "closed"

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- PyAV


class _AVPicture(_Picture):
    def __init__(self, frame: av.VideoFrame) -> None:
        self.frame = frame
        pts, time_base = frame.pts, frame.time_base
        self.pts_seconds = float(pts * time_base) if pts is not None and time_base else None
        self.size = Size(frame.width, frame.height)

    def rgb(self, size: Size) -> np.ndarray:
        if size == self.size:
            return self.frame.to_ndarray(format="rgb24")
        return self.frame.to_ndarray(
            format="rgb24", width=size.width, height=size.height, interpolation="AREA"
        )


class _AVConnection(_Connection):
    """A file or network stream opened with PyAV, every blocking call bounded by ``timeout``."""

    def __init__(self, uri: str, options: SourceOptions) -> None:
        self.uri = uri
        self.options = options
        self.decode_errors = 0
        target = _local_path(uri)
        if target is not None:
            _check_file(target)
        try:
            self.container = av.open(
                str(target) if target is not None else uri,
                options=_ffmpeg_options(uri, options),
                timeout=(options.open_timeout, options.read_timeout),
            )
        except av.FFmpegError as error:
            raise SourceError(_open_error_message(uri, target, error)) from error
        if not self.container.streams.video:
            kinds = ", ".join(sorted({stream.type for stream in self.container.streams})) or "none"
            self.container.close()
            raise SourceError(f"{uri}: no video stream (streams found: {kinds})")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.info, self._exact_count = self._describe()

    def _describe(self) -> tuple[SourceInfo, bool]:
        stream = self.stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate and 0 < float(rate) < 1000 else self.options.fallback_fps
        frame_count: int | None = None
        exact = False
        if not self.options.live:
            if stream.frames:
                frame_count, exact = int(stream.frames), True
            elif stream.duration and stream.time_base:
                frame_count = round(float(stream.duration * stream.time_base) * fps)
            elif self.container.duration:
                frame_count = round(self.container.duration / av.time_base * fps)
        context = stream.codec_context
        live = self.options.live
        width, height = context.width, context.height
        return SourceInfo(self.uri, width, height, fps, frame_count, context.name, live), exact

    def pictures(self) -> Iterator[_Picture]:
        live, stall_timeout = self.options.live, self.options.reconnect.stall_timeout
        decoded, rejected_in_row, error_after_last_frame = 0, 0, False
        last_frame = time.monotonic()
        try:
            for packet in self.container.demux(self.stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError as error:
                    self.decode_errors += 1
                    rejected_in_row += 1
                    error_after_last_frame = True
                    if rejected_in_row > self.options.max_decode_errors:
                        message = (
                            f"{self.uri}: corrupt data: the {self.info.codec} decoder rejected "
                            f"{rejected_in_row} packets in a row, {decoded} frames decoded before ({error})"
                        )
                        raise (_LinkLost(message) if live else SourceError(message)) from error
                    continue
                for frame in frames:
                    decoded += 1
                    rejected_in_row, error_after_last_frame = 0, False
                    last_frame = time.monotonic()
                    yield _AVPicture(frame)
                if live and time.monotonic() - last_frame > stall_timeout:
                    raise _LinkLost(f"stalled: no frame for {stall_timeout:g}s")
        except av.FFmpegError as error:
            if live:
                reason = "no data" if isinstance(error, av.ExitError) else "read error"
                raise _LinkLost(f"{reason}: {error}") from error
            log.warning("%s: demuxing stopped after frame %d: %s", self.uri, decoded, error)
            error_after_last_frame = True
        if not live:
            self._check_complete(decoded, error_after_last_frame)

    def _check_complete(self, decoded: int, error_at_end: bool) -> None:
        """Classify the end of a file: no frames, truncated, or complete (possibly with skipped packets)."""
        if decoded == 0:
            if self.decode_errors:
                raise SourceError(
                    f"{self.uri}: corrupt data: no frame could be decoded "
                    f"({self.decode_errors} packets rejected by the {self.info.codec} decoder)"
                )
            raise SourceError(f"{self.uri}: the video stream contains no frames")
        expected = self.info.frame_count
        if expected:
            missing = expected - decoded
            slack = 0 if self._exact_count else max(2, expected // 50)
            if missing > slack or (missing > 0 and error_at_end):
                raise TruncatedSourceError(
                    f"{self.uri}: truncated at frame {decoded} of {expected}: the data ends early "
                    f"(frames 0-{decoded - 1} decoded)",
                    decoded,
                    expected,
                )
        if self.decode_errors:
            log.warning("%s: %d packets could not be decoded and were skipped", self.uri, self.decode_errors)

    def close(self) -> None:
        self.container.close()


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme in NETWORK_SCHEMES or re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        return None
    return Path(uri)


def _check_file(path: Path) -> None:
    """Fail with a plain message before FFmpeg gets a chance to say 'Invalid data'."""
    if not path.exists():
        raise SourceError(f"{path}: video file not found")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: empty file (0 bytes), not a video")


def _ffmpeg_options(uri: str, options: SourceOptions) -> dict[str, str]:
    scheme = urlparse(uri).scheme.lower()
    result: dict[str, str] = {}
    if scheme in ("rtsp", "rtsps"):
        result["rtsp_transport"] = options.rtsp_transport
    if scheme == "udp":
        result["overrun_nonfatal"] = "1"
    if options.live:
        result["analyzeduration"] = "2000000"  # probe at most 2 s of a live stream before the first frame
    result.update(options.ffmpeg_options)
    return result


def _open_error_message(uri: str, path: Path | None, error: av.FFmpegError) -> str:
    if path is None:
        if isinstance(error, av.ExitError):
            return f"{uri}: no answer within the open timeout"
        return f"{uri}: cannot open stream: {error.strerror or error}"
    if isinstance(error, av.InvalidDataError):
        with path.open("rb") as file:
            head = file.read(64)
        if head[4:8] == b"ftyp":
            return (
                f"{path}: truncated or unfinished MP4: the index (moov box) is missing, "
                "usually because the file was cut or its writer crashed"
            )
        if head and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in head):
            return f"{path}: not a video: the file is text"
        return f"{path}: not a video: FFmpeg does not recognise the format ({error.strerror})"
    return f"{path}: cannot open: {error.strerror or error}"


# ---------------------------------------------------------------------------------------------- OpenCV


def _camera_device(uri: str | int) -> int | str | None:
    """The OpenCV device for a camera URI (``0``, ``"camera:0"``, ``/dev/video0``), else None."""
    if isinstance(uri, int):
        return uri
    text = str(uri)
    if text.isdigit():
        return int(text)
    if text.startswith("camera:"):
        name = text[len("camera:") :]
        return int(name) if name.isdigit() else name
    if text.startswith("/dev/video"):
        return text
    return None


class _CVPicture(_Picture):
    def __init__(self, bgr: np.ndarray, pts_seconds: float | None) -> None:
        self.bgr = bgr
        self.pts_seconds = pts_seconds
        self.size = Size(bgr.shape[1], bgr.shape[0])

    def rgb(self, size: Size) -> np.ndarray:
        image = self.bgr if size == self.size else cv2.resize(self.bgr, size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class _CameraConnection(_Connection):
    """A local camera through OpenCV; backends that support it get open/read timeouts."""

    def __init__(self, device: int | str, options: SourceOptions) -> None:
        self.device = device
        self.options = options
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(options.read_timeout * 1000),
        ]  # fmt: skip
        self.capture = cv2.VideoCapture(device, cv2.CAP_ANY, params)
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceError(f"camera {device}: cannot open (missing device, busy, or no permission)")
        ok, first = self.capture.read()
        if not ok:
            self.capture.release()
            raise SourceError(f"camera {device}: opened but delivers no frames")
        self._first: np.ndarray | None = first
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        fps = fps if 0 < fps < 1000 else options.fallback_fps
        self.info = SourceInfo(f"camera:{device}", first.shape[1], first.shape[0], fps, None, "camera", True)

    def pictures(self) -> Iterator[_Picture]:
        while True:
            if self._first is not None:
                ok, image, self._first = True, self._first, None
            else:
                ok, image = self.capture.read()
            if not ok or image is None:
                raise _LinkLost("camera read failed or timed out")
            millis = self.capture.get(cv2.CAP_PROP_POS_MSEC)
            yield _CVPicture(image, millis / 1000.0 if millis > 0 else None)

    def close(self) -> None:
        self.capture.release()


__all__ = [
    "DecodedFrame",
    "ReconnectPolicy",
    "Size",
    "Source",
    "SourceError",
    "SourceInfo",
    "SourceOptions",
    "SourceStats",
    "SourceStopped",
    "TruncatedSourceError",
    "UnsupportedSourceError",
    "check_supported",
    "is_live_uri",
    "open_source",
    "working_size",
]
