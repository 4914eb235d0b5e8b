"""Every ZeroMQ message of the daemon: a closed set of kinds, one frozen dataclass each.

Wire format (multipart, no pickle anywhere)::

    part 0  kind      ASCII name of the kind, e.g. b"frame"
    part 1  header    UTF-8 JSON object: {"v": PROTOCOL_VERSION, ...fields}; for array payloads it also
                      holds "shape" and "dtype"
    part 2  payload   raw array bytes (only for kinds that carry an array: frames, masks, first-frame masks)

Who sends what to whom, and what it means there, is declared once, on each message class (`ROUTES`);
`protocol_table()` renders it, docs/architecture.md shows that rendering, and
tests/streamer/transport/test_protocol.py fails when either the document or the code that builds
messages disagrees with it.

Arrays travel without copies: `encode` puts the array object itself in the part list for
``send_multipart(parts, copy=False)``, and `decode` wraps the received ``zmq.Frame`` buffer with
``np.frombuffer``, so the decoded array is read-only and shares the message's memory. The sender must
not modify an array after handing it to a socket (pyzmq sends large buffers from the caller's memory);
the decoder allocates a fresh array per frame, which is enough.

`decode` never raises anything but `MessageError`, whose text names the kind and the bad field, so a
receiver can log a malformed message, count it, and keep going.

Why one module of this size: the closed set of message kinds, their routes and their wire codec are the
protocol; kept together they are the one place it is written
(tests/streamer/transport/test_protocol.py checks the rest).
"""

from __future__ import annotations

import functools
import json
import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Union, get_args, get_origin, get_type_hints

import numpy as np
import zmq

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+

PROTOCOL_VERSION = 1
"""Bumped when a header changes incompatibly; a receiver rejects other versions."""

PAYLOAD_DTYPES = frozenset({"uint8", "uint16", "float32"})
"""Array dtypes allowed on the wire: images and index masks are uint8; the others leave room for
depth maps and probabilities."""

MAX_HEADER_BYTES = 64 * 1024
"""Headers are small metadata; anything larger is treated as malformed rather than parsed."""


class MessageKind(str, Enum):
    """The closed set of message kinds; the value is what travels in part 0."""

    JOB_START = "job_start"
    FRAME = "frame"
    MASK = "mask"
    END_OF_STREAM = "end_of_stream"
    END_ACK = "end_ack"
    CREDIT = "credit"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    PROGRESS = "progress"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    SOURCE_STATUS = "source_status"
    CHECKPOINT_SAVED = "checkpoint_saved"
    OUTPUTS_COMPLETE = "outputs_complete"


class Process(str, Enum):
    """The processes of `vosd serve` that exchange messages."""

    DECODER = "decoder"
    WORKER = "worker"
    WRITER = "writer"
    DAEMON = "daemon"


@dataclass(frozen=True)
class Route:
    """One use of a message kind: who sends it to whom, and what it means on that route."""

    sender: Process
    receiver: Process
    means: str
    forwarded: bool = False
    """Passed on as received (not built by the sender): the worker forwards a decoder's end or cancel."""


class MessageError(ValueError):
    """A message that cannot be decoded; the text says which kind and which field."""


class _Header:
    """Typed access to a decoded JSON header, raising `MessageError` that names the field.

    Each reader takes the field name (plus keyword options from the field's `_wire` metadata) and
    returns the Python value; `_READERS` picks one per field type annotation.
    """

    def __init__(self, kind: MessageKind, data: dict[str, Any]) -> None:
        self.kind = kind
        self.data = data

    def _fail(self, name: str, expected: str) -> MessageError:
        value = self.data.get(name, "<missing>")
        return MessageError(f"{self.kind.value}: field {name!r} must be {expected}, got {value!r}")

    def text(self, name: str) -> str:
        value = self.data.get(name)
        if not isinstance(value, str) or not value:
            raise self._fail(name, "a non-empty string")
        return value

    def integer(self, name: str, *, minimum: int = 0) -> int:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(name, f"an integer >= {minimum}")
        return value

    def number(self, name: str) -> float:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(name, "a finite number")
        return float(value)

    def flag(self, name: str) -> bool:
        value = self.data.get(name)
        if not isinstance(value, bool):
            raise self._fail(name, "true or false")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self._fail(name, "an object")
        return value

    def numbers(self, name: str) -> dict[str, float]:
        value = self.mapping(name)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            raise self._fail(name, "an object mapping names to numbers")
        return {k: float(v) for k, v in value.items()}

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, "a list of strings")
        return tuple(value)

    def size(self, name: str) -> tuple[int, int]:
        value = self.data.get(name)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise self._fail(name, "[width, height] with positive integers")
        return (value[0], value[1])


_READERS: dict[Any, Callable[..., Any]] = {
    str: _Header.text,
    int: _Header.integer,
    float: _Header.number,
    bool: _Header.flag,
    dict[str, Any]: _Header.mapping,
    dict[str, float]: _Header.numbers,
    tuple[int, int]: _Header.size,
    tuple[str, ...]: _Header.strings,
}
"""The header reader for each field annotation (``X | None`` fields use X's reader and accept null or
absence as None). A field needing another rule says so with ``field(metadata=_wire(...))``."""


def _wire(*, read: Callable[..., Any] | None = None, **options: Any) -> dict[str, Any]:
    """Field metadata overriding the annotation's reader (`read`) or passing it options (``minimum=1``)."""
    return {"wire": {"read": read, **options}}


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(annotation, False)``."""
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True  # X | Y | None has no reader
    return annotation, False


@dataclass(frozen=True)
class _HeaderField:
    name: str
    read: Callable[..., Any]
    options: dict[str, Any]
    optional: bool


class _Layout:
    """How one message class travels, derived once from its dataclass fields and their annotations: the
    ``np.ndarray`` field (if any) is the payload, every other field is a header entry of the same name."""

    def __init__(self, cls: type) -> None:
        hints = get_type_hints(cls)
        self.payload: str | None = None
        self.payload_required = False
        self.fields: list[_HeaderField] = []
        for f in fields(cls):
            annotation, optional = _without_none(hints[f.name])
            if annotation is np.ndarray:
                if self.payload is not None:
                    raise TypeError(f"{cls.__name__}: more than one array field")
                self.payload, self.payload_required = f.name, not optional
                continue
            options = dict(f.metadata.get("wire", {}))
            read = options.pop("read", None) or _READERS.get(annotation)
            if read is None:
                raise TypeError(f"{cls.__name__}.{f.name}: no header reader for {annotation!r}")
            self.fields.append(_HeaderField(f.name, read, options, optional))


_cached_layout = functools.cache(_Layout)


def _layout(cls: type) -> _Layout:
    """The layout of a message class, computed once per class."""
    return _cached_layout(cls)


class _Message:
    """Base of every message dataclass: encodes and decodes it generically from its `_Layout`."""

    KIND: ClassVar[MessageKind]
    ROUTES: ClassVar[tuple[Route, ...]]

    @property
    def payload(self) -> np.ndarray | None:
        name = _layout(type(self)).payload
        return None if name is None else getattr(self, name)

    def header(self) -> dict[str, Any]:
        """The JSON header fields (without "v", "shape" and "dtype"); tuples travel as lists."""
        values = ((f.name, getattr(self, f.name)) for f in _layout(type(self)).fields)
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values}

    @classmethod
    def from_wire(cls, h: _Header, payload: np.ndarray | None) -> Self:
        layout = _layout(cls)
        values: dict[str, Any] = {}
        if layout.payload is not None:
            if payload is None and layout.payload_required:
                raise MessageError(f"{cls.KIND.value}: missing {layout.payload} payload")
            values[layout.payload] = payload
        for f in layout.fields:
            values[f.name] = (
                None if f.optional and h.data.get(f.name) is None else f.read(h, f.name, **f.options)
            )
        return cls(**values)


def _check_image(image: np.ndarray, what: str, *, channels: int | None) -> None:
    """Reject arrays the receiver could not interpret, at construction time on the sending side."""
    if not isinstance(image, np.ndarray):
        raise MessageError(f"{what}: expected a numpy array, got {type(image).__name__}")
    if image.dtype.name not in PAYLOAD_DTYPES:
        raise MessageError(f"{what}: dtype {image.dtype.name} is not one of {sorted(PAYLOAD_DTYPES)}")
    if channels is None and image.ndim != 2:
        raise MessageError(f"{what}: expected shape (H, W), got {image.shape}")
    if channels is not None and (image.ndim != 3 or image.shape[2] != channels):
        raise MessageError(f"{what}: expected shape (H, W, {channels}), got {image.shape}")


@dataclass(frozen=True)
class JobStart(_Message):
    """Opens a job on a worker (and, forwarded, on the writer). The first message of every job.

    `mask` is the first-frame index mask ``uint8 (H, W)`` at the source size, or None when the job gets
    its mask later (interactive use). `options` are per-job overrides of the XMem inference options and
    `outputs` the writer's output paths; both are plain JSON objects validated by their consumers.
    """

    KIND: ClassVar[MessageKind] = MessageKind.JOB_START
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.DECODER, Process.WORKER, "open the job: first mask, options; credits follow"),
        Route(Process.DECODER, Process.WRITER, "open the job's outputs (paths, source size, fps)"),
    )
    job_id: str
    live: bool
    source_size: tuple[int, int]
    fps: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mask is not None:
            _check_image(self.mask, "job_start mask", channels=None)


@dataclass(frozen=True)
class FrameMessage(_Message):
    """One decoded frame at the source resolution (the worker resizes it): ``uint8 (H, W, 3)`` RGB.

    `pts` is the presentation time in seconds from the source (None when the source has none);
    `capture_time` is the wall clock (Unix seconds) when the decoder produced the frame, for latency.
    `frames_dropped` is how many frames the sender has dropped so far for this job (live jobs), so the worker
    can report drops while the job runs.
    """

    KIND: ClassVar[MessageKind] = MessageKind.FRAME
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.DECODER, Process.WORKER, "a source-size frame to segment (needs a credit)"),
        Route(Process.DECODER, Process.WRITER, "the same frame, for the overlay"),
    )
    job_id: str
    index: int
    image: np.ndarray
    pts: float | None
    capture_time: float
    source_size: tuple[int, int]
    frames_dropped: int = 0

    def __post_init__(self) -> None:
        _check_image(self.image, "frame image", channels=3)


@dataclass(frozen=True)
class MaskMessage(_Message):
    """The worker's result for one frame: index mask ``uint8 (H, W)`` in the user's labels.

    `timings` maps a stage name to seconds spent (e.g. {"step": 0.031}); `capture_time` is copied from
    the frame so the writer can measure end-to-end latency. `auto` (jobs without a first mask, modes auto
    and tmo) is the session's summary after this frame: ``{"mode", "state": "searching" | "tracking",
    "seeds", "last_seed_frame"}``, plus ``"event"`` (``{"kind": "seed" | "reseed", "frame", "reason"}``)
    on a frame that (re)seeded XMem; None for masked jobs.
    """

    KIND: ClassVar[MessageKind] = MessageKind.MASK
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.WORKER, Process.WRITER, "the index mask of one frame, at the source size"),
    )
    job_id: str
    index: int
    mask: np.ndarray
    pts: float | None
    capture_time: float
    timings: dict[str, float] = field(default_factory=dict)
    auto: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_image(self.mask, "mask", channels=None)


@dataclass(frozen=True)
class EndOfStream(_Message):
    """No more frames for this job: the decoder produced `frames_total`, sent `frames_sent` of them and
    dropped `frames_dropped` (live), so the worker can check it got every frame that was sent."""

    KIND: ClassVar[MessageKind] = MessageKind.END_OF_STREAM
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.DECODER, Process.WORKER, "no more frames: produced, sent, dropped; asks for EndAck"),
        Route(Process.WORKER, Process.WRITER, "the decoder's end, after its last mask", forwarded=True),
    )
    job_id: str
    frames_total: int
    frames_sent: int
    frames_dropped: int = 0


@dataclass(frozen=True)
class EndAck(_Message):
    """The worker's answer to `EndOfStream`: every frame before it was received and handed over.
    `complete` is False when fewer frames arrived than the sender says it sent."""

    KIND: ClassVar[MessageKind] = MessageKind.END_ACK
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.WORKER, Process.DECODER, "every frame before the end was received"),
    )
    job_id: str
    frames_received: int
    complete: bool


@dataclass(frozen=True)
class Credit(_Message):
    """Flow control: the worker allows the job's sender `credits` more frames in flight."""

    KIND: ClassVar[MessageKind] = MessageKind.CREDIT
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.WORKER, Process.DECODER, "room for more frames of the job (flow control)"),
    )
    job_id: str
    credits: int = field(metadata=_wire(minimum=1))


@dataclass(frozen=True)
class Cancel(_Message):
    """Stop this job now: receivers drop its state; no acknowledgement is expected."""

    KIND: ClassVar[MessageKind] = MessageKind.CANCEL
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.DECODER, Process.WORKER, "drop the job (and its queued frames) now"),
        Route(Process.DECODER, Process.WRITER, "discard the job's outputs"),
        Route(Process.WORKER, Process.WRITER, "the decoder's cancel, after its last mask", forwarded=True),
        Route(Process.DAEMON, Process.WORKER, "drop the job of a decoder that died (release_job)"),
        Route(Process.DAEMON, Process.WRITER, "discard the job's outputs unless complete; answer which"),
        Route(Process.WRITER, Process.DAEMON, "answer to the daemon's cancel: outputs discarded"),
    )
    job_id: str
    reason: str = "cancelled"


@dataclass(frozen=True)
class Shutdown(_Message):
    """Stop the receiving process; `drain` asks it to finish the jobs it holds first."""

    KIND: ClassVar[MessageKind] = MessageKind.SHUTDOWN
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.DAEMON, Process.WORKER, "stop (drain: finish held jobs first)"),
        Route(Process.DAEMON, Process.WRITER, "stop"),
    )
    reason: str = "shutdown"
    drain: bool = True


@dataclass(frozen=True)
class Progress(_Message):
    """The writer's per-job counters for the status hash (streamer/queue/jobs.py): frames written,
    dropped, rate, (live jobs, one per frame) the frame's decode-to-written latency, and (modes auto and
    tmo) the latest written frame's `MaskMessage.auto` summary without its event."""

    KIND: ClassVar[MessageKind] = MessageKind.PROGRESS
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.WRITER, Process.DAEMON, "frames written and dropped, fps, latency"),
    )
    job_id: str
    frames_done: int
    frames_dropped: int = 0
    fps: float = 0.0
    latency_s: float | None = None
    auto: dict[str, Any] | None = None


@dataclass(frozen=True)
class Heartbeat(_Message):
    """A process is alive; `sent_at` is its wall clock (Unix seconds), `jobs` the job ids it holds."""

    KIND: ClassVar[MessageKind] = MessageKind.HEARTBEAT
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.WORKER, Process.DAEMON, "alive, with the jobs held"),
        Route(Process.WRITER, Process.DAEMON, "alive, with the jobs open"),
    )
    process: str
    sent_at: float
    jobs: tuple[str, ...] = ()
    model_fps: float | None = None
    """Worker: frames per second of model time since its previous heartbeat; None when it segmented none."""
    gpu_memory_bytes: int | None = None
    """Worker on a CUDA device: memory allocated there by torch; None elsewhere."""


@dataclass(frozen=True)
class ErrorMessage(_Message):
    """A failure to report: `job_id` is None for process-wide errors; `code` is a short stable name."""

    KIND: ClassVar[MessageKind] = MessageKind.ERROR
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.DECODER, Process.DAEMON, "the job failed: source, mask, or the worker refused it"),
        Route(Process.WORKER, Process.DECODER, "the job is refused at its JobStart (code rejected)"),
        Route(Process.WORKER, Process.DAEMON, "the job failed on the worker (inference, writer unreachable)"),
        Route(Process.WRITER, Process.DAEMON, "the job's outputs cannot be written"),
    )
    code: str
    message: str
    job_id: str | None = None


@dataclass(frozen=True)
class SourceStatus(_Message):
    """How a job's source is doing, sent by its decoder on every change and about once a second while
    streaming, so a stalled or unreachable live source is visible in the job's status."""

    KIND: ClassVar[MessageKind] = MessageKind.SOURCE_STATUS
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.DECODER, Process.DAEMON, "source state: attempts, last error, frames to read"),
    )
    job_id: str
    state: str
    """connecting (first attempt), streaming, or reconnecting (after a failed attempt or a lost stream)."""
    attempts: int = 0
    """Failed connect attempts since the last frame."""
    error: str | None = None
    """The last connect error or reason the stream was lost."""
    last_frame_at: float | None = None
    """Unix time of the last decoded frame; None before the first."""
    frames_total: int | None = None
    """Frames the job will read (the container's count, capped by max_frames) once the source is open;
    None before that, and for live or unknown-length sources."""


@dataclass(frozen=True)
class CheckpointSaved(_Message):
    """The worker saved the job's session after frames 0..`frame`-1 (streamer/output/resume.py); sent after
    the mask of frame `frame`-1, so the writer can vouch for it once it has written that mask."""

    KIND: ClassVar[MessageKind] = MessageKind.CHECKPOINT_SAVED
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.WORKER, Process.WRITER, "session saved after frames 0..frame-1; promote once written"),
    )
    job_id: str
    frame: int = field(metadata=_wire(minimum=1))


@dataclass(frozen=True)
class OutputsComplete(_Message):
    """The writer's word that a job's outputs are complete under their final names: `frames_written`
    frames, `frames_dropped` of the source's frames dropped (live). Sent once, and again as the answer to
    a later Cancel or JobStart of the same job, so the daemon never discards finished outputs."""

    KIND: ClassVar[MessageKind] = MessageKind.OUTPUTS_COMPLETE
    ROUTES: ClassVar[tuple[Route, ...]] = (
        Route(Process.WRITER, Process.DAEMON, "outputs complete under their final names (frames written)"),
    )
    job_id: str
    frames_written: int
    frames_dropped: int = 0


Message = (
    JobStart
    | FrameMessage
    | MaskMessage
    | EndOfStream
    | EndAck
    | Credit
    | Cancel
    | Shutdown
    | Progress
    | Heartbeat
    | ErrorMessage
    | SourceStatus
    | CheckpointSaved
    | OutputsComplete
)

_CLASSES: dict[MessageKind, type[Message]] = {cls.KIND: cls for cls in get_args(Message)}

_PAYLOAD_KINDS = frozenset(kind for kind, cls in _CLASSES.items() if _layout(cls).payload is not None)



def protocol_table() -> str:
    """Every route of every message kind, one line each, grouped by sender and receiver (the protocol)."""
    processes, kinds = list(Process), list(MessageKind)
    rows = sorted(
        ((route, cls) for cls in _CLASSES.values() for route in cls.ROUTES),
        key=lambda row: (
            processes.index(row[0].sender), processes.index(row[0].receiver), kinds.index(row[1].KIND)
        ),
    )
    lines = []
    for route, cls in rows:
        pair = f"{route.sender.value} -> {route.receiver.value}"
        note = " (forwarded)" if route.forwarded else ""
        lines.append(f"{pair:<20} {cls.__name__:<16} {route.means}{note}")
    return "\n".join(lines)


WirePart = bytes | memoryview | np.ndarray
"""What `encode` returns and ``send_multipart(copy=False)`` accepts."""


def encode(message: Message) -> list[WirePart]:
    """The multipart parts of `message`; the array part is the array itself (no copy) when contiguous."""
    header = {"v": PROTOCOL_VERSION, **message.header()}
    payload = message.payload
    if payload is None:
        return [message.KIND.value.encode(), json.dumps(header, separators=(",", ":")).encode()]
    array = np.ascontiguousarray(payload)
    header["shape"] = list(array.shape)
    header["dtype"] = array.dtype.name
    return [message.KIND.value.encode(), json.dumps(header, separators=(",", ":")).encode(), array]


def _buffer(part: zmq.Frame | bytes | memoryview) -> memoryview:
    return part.buffer if isinstance(part, zmq.Frame) else memoryview(part)


def _decode_payload(kind: MessageKind, header: dict[str, Any], part: zmq.Frame | bytes) -> np.ndarray:
    shape, dtype = header.get("shape"), header.get("dtype")
    if (
        not isinstance(shape, list)
        or not 2 <= len(shape) <= 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise MessageError(f"{kind.value}: header 'shape' must list 2 or 3 positive sizes, got {shape!r}")
    if dtype not in PAYLOAD_DTYPES:
        allowed = sorted(PAYLOAD_DTYPES)
        raise MessageError(f"{kind.value}: header 'dtype' must be one of {allowed}, got {dtype!r}")
    buffer = _buffer(part)
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if buffer.nbytes != expected:
        raise MessageError(
            f"{kind.value}: payload has {buffer.nbytes} bytes, shape {shape} of {dtype} needs {expected}"
        )
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    array.flags.writeable = False
    return array


def decode(parts: Sequence[zmq.Frame | bytes]) -> Message:
    """Decode the parts of one message (after any routing identity was removed).

    Accepts ``zmq.Frame`` parts from ``recv_multipart(copy=False)`` so the payload is not copied.
    Raises `MessageError` for anything malformed, never another exception.
    """
    if len(parts) not in (2, 3):
        raise MessageError(f"expected 2 or 3 message parts (kind, header[, payload]), got {len(parts)}")
    raw_kind = bytes(_buffer(parts[0]))
    try:
        kind = MessageKind(raw_kind.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise MessageError(f"unknown message kind {raw_kind[:40]!r}") from None
    header_buffer = _buffer(parts[1])
    if header_buffer.nbytes > MAX_HEADER_BYTES:
        raise MessageError(f"{kind.value}: header of {header_buffer.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        data = json.loads(bytes(header_buffer).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"{kind.value}: header is not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MessageError(f"{kind.value}: header must be a JSON object, got {type(data).__name__}")
    if data.get("v") != PROTOCOL_VERSION:
        version = data.get("v")
        raise MessageError(f"{kind.value}: protocol version {version!r}, expected {PROTOCOL_VERSION}")
    payload = _decode_payload(kind, data, parts[2]) if len(parts) == 3 else None
    if payload is not None and kind not in _PAYLOAD_KINDS:
        raise MessageError(f"{kind.value}: this kind carries no payload, got a third part")
    cls = _CLASSES[kind]
    return cls.from_wire(_Header(kind, data), payload)
