"""Wire format of streamer/transport/messages.py: round trips, zero-copy decode, and clear rejection of bad
input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from streamer.transport.messages import (
    PROTOCOL_VERSION,
    Cancel,
    CheckpointSaved,
    Credit,
    EndAck,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    Heartbeat,
    JobStart,
    MaskMessage,
    MessageError,
    MessageKind,
    OutputsComplete,
    Progress,
    Shutdown,
    SourceStatus,
    decode,
    encode,
)


def _wire(parts: list) -> list[bytes]:
    """What a receiver gets when it copies every part (bytes instead of zmq.Frame)."""
    return [bytes(memoryview(part)) if isinstance(part, np.ndarray) else bytes(part) for part in parts]


def _frame(index: int = 3) -> FrameMessage:
    rng = np.random.default_rng(index)
    return FrameMessage(
        job_id="job-a",
        index=index,
        image=rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8),
        pts=index / 25,
        capture_time=1_700_000_000.5,
        source_size=(640, 480),
        frames_dropped=2,
    )


def test_every_kind_round_trips() -> None:
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:20, 5:9] = 2
    messages = [
        JobStart(
            job_id="job-a", live=True, source_size=(640, 480), fps=25.0, options={"mem_every": 5}, mask=mask
        ),
        JobStart(job_id="job-b", live=False, source_size=(32, 16)),
        _frame(),
        MaskMessage(job_id="job-a", index=3, mask=mask, pts=None, capture_time=5.0, timings={"step": 0.02}),
        EndOfStream(job_id="job-a", frames_total=10, frames_sent=7, frames_dropped=3),
        EndAck(job_id="job-a", frames_received=7, complete=True),
        Credit(job_id="job-a", credits=4),
        Cancel(job_id="job-a", reason="user asked"),
        Shutdown(reason="stop", drain=False),
        Progress(job_id="job-a", frames_done=9, frames_dropped=1, fps=12.5, latency_s=0.08),
        Heartbeat(process="worker-0", sent_at=12.0, jobs=("job-a", "job-b")),
        ErrorMessage(code="decode_failed", message="bad packet", job_id=None),
        SourceStatus(job_id="job-a", state="reconnecting", attempts=3, error="refused", last_frame_at=9.5),
        SourceStatus(job_id="job-b", state="streaming", frames_total=120),
        OutputsComplete(job_id="job-a", frames_written=9, frames_dropped=1),
        SourceStatus(job_id="job-b", state="connecting"),
        CheckpointSaved(job_id="job-a", frame=18),
    ]
    assert {type(m).KIND for m in messages} == set(MessageKind)
    for message in messages:
        decoded = decode(_wire(encode(message)))
        assert type(decoded) is type(message)
        for name, value in vars(message).items():
            got = getattr(decoded, name)
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got, value)
                assert got.dtype == value.dtype
            else:
                assert got == value, name


def test_encode_does_not_copy_the_array() -> None:
    frame = _frame()
    parts = encode(frame)
    assert parts[0] == b"frame"
    assert parts[2] is frame.image


def test_decode_of_zmq_frames_shares_the_message_memory() -> None:
    context = zmq.Context()
    try:
        pull = context.socket(zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push = context.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        big = FrameMessage(
            job_id="j",
            index=0,
            image=np.arange(240 * 320 * 3, dtype=np.uint32).astype(np.uint8).reshape(240, 320, 3),
            pts=None,
            capture_time=0.0,
            source_size=(320, 240),
        )
        push.send_multipart(encode(big), copy=False)
        assert pull.poll(5000)
        parts = pull.recv_multipart(copy=False)
        decoded = decode(parts)
        assert isinstance(decoded, FrameMessage)
        np.testing.assert_array_equal(decoded.image, big.image)
        assert not decoded.image.flags.owndata
        assert not decoded.image.flags.writeable
        assert np.shares_memory(decoded.image, np.frombuffer(parts[2].buffer, dtype=np.uint8))
        push.close(0)
        pull.close(0)
    finally:
        context.destroy(linger=0)


def _header(parts: list[bytes]) -> dict:
    return json.loads(parts[1])


def _with_header(parts: list[bytes], **changes: object) -> list[bytes]:
    header = _header(parts) | changes
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p[:1], "expected 2 or 3 message parts"),
        (lambda p: [b"nonsense", *p[1:]], "unknown message kind"),
        (lambda p: [b"\xff\xfe", *p[1:]], "unknown message kind"),
        (lambda p: [p[0], b"{not json", p[2]], "header is not UTF-8 JSON"),
        (lambda p: [p[0], b"[1, 2]", p[2]], "header must be a JSON object"),
        (lambda p: _with_header(p, v=PROTOCOL_VERSION + 1), "protocol version"),
        (lambda p: _with_header(p, index=-1), "field 'index' must be an integer >= 0"),
        (lambda p: _with_header(p, index="3"), "field 'index'"),
        (lambda p: _with_header(p, job_id=""), "field 'job_id' must be a non-empty string"),
        (lambda p: _with_header(p, capture_time=None), "field 'capture_time' must be a finite number"),
        (lambda p: _with_header(p, source_size=[640]), "field 'source_size'"),
        (lambda p: _with_header(p, dtype="object"), "header 'dtype'"),
        (lambda p: _with_header(p, shape=[48, 192]), "expected shape (H, W, 3)"),
        (lambda p: _with_header(p, shape=[48, 64, 4]), "payload has"),
        (lambda p: [*p[:2], p[2][:-1]], "payload has"),
        (lambda p: p[:2], "frame: missing image payload"),
    ],
)
def test_malformed_frames_are_rejected_with_a_clear_error(mutate, expected: str) -> None:
    parts = _wire(encode(_frame()))
    with pytest.raises(MessageError) as info:
        decode(mutate(parts))
    assert expected in str(info.value)


def test_payload_on_a_control_kind_is_rejected() -> None:
    parts = _wire(encode(Credit(job_id="j", credits=1)))
    header = _header(parts) | {"shape": [2, 2], "dtype": "uint8"}
    with pytest.raises(MessageError, match="carries no payload"):
        decode([parts[0], json.dumps(header).encode(), b"\x00" * 4])


def test_senders_cannot_build_messages_the_receiver_would_reject() -> None:
    with pytest.raises(MessageError, match="expected shape"):
        FrameMessage(
            job_id="j",
            index=0,
            image=np.zeros((4, 4), np.uint8),
            pts=None,
            capture_time=0,
            source_size=(4, 4),
        )
    with pytest.raises(MessageError, match="dtype"):
        MaskMessage(job_id="j", index=0, mask=np.zeros((4, 4), np.int64), pts=None, capture_time=0)


@pytest.mark.parametrize(
    ("message", "changes", "expected"),
    [
        (Credit(job_id="j", credits=1), {"credits": 0}, "credit: field 'credits' must be an integer >= 1"),
        (Heartbeat(process="w", sent_at=1.0), {"jobs": [1]}, "heartbeat: field 'jobs'"),
        (SourceStatus(job_id="j", state="on"), {"frames_total": -1}, "source_status: field 'frames_total'"),
        (
            JobStart(job_id="j", live=True, source_size=(4, 4), mask=np.zeros((4, 4), np.uint8)),
            {"options": []},
            "job_start: field 'options'",
        ),
        (ErrorMessage(code="c", message="m"), {"job_id": ""}, "error: field 'job_id'"),
        (
            MaskMessage(job_id="j", index=0, mask=np.zeros((2, 2), np.uint8), pts=None, capture_time=0),
            {"timings": {"step": "slow"}},
            "mask: field 'timings'",
        ),
    ],
)
def test_header_fields_follow_their_annotations(message, changes: dict, expected: str) -> None:
    parts = _wire(encode(message))
    assert set(_header(parts)) - {"v", "shape", "dtype"} == {
        name for name, value in vars(message).items() if not isinstance(value, np.ndarray)
    }
    with pytest.raises(MessageError) as info:
        decode(_with_header(parts, **changes))
    assert expected in str(info.value)


def test_optional_header_fields_accept_null_or_absence() -> None:
    parts = _wire(encode(SourceStatus(job_id="j", state="streaming", last_frame_at=0.5, frames_total=9)))
    header = {k: v for k, v in _header(parts).items() if k not in ("last_frame_at", "frames_total")}
    decoded = decode([parts[0], json.dumps(header).encode()])
    assert decoded == SourceStatus(job_id="j", state="streaming")
    assert decode(_with_header(parts, frames_total=None)).frames_total is None
