"""The worker process with a real (small, random) XMem network, driven over real sockets: the test plays
the decoders (FrameSender, one per job), the writer and the daemon (ResultCollectors)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.config import TransportConfig, WorkersConfig, XMemConfig
from streamer.ingest.decoder import DecoderSettings, run_decoder
from streamer.transport.messages import (
    Cancel,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    Heartbeat,
    JobStart,
    MaskMessage,
    Shutdown,
)
from streamer.transport.sockets import (
    FrameSender,
    JobRejected,
    ResultCollector,
    release_job,
    send_control,
)
from videos import render_moving_shapes, write_first_mask, write_moving_shape_video
from workers.worker import WorkerSettings, run_worker
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import write_random_checkpoint

pytestmark = pytest.mark.timeout(120)

WAIT_S = 30.0
TRANSPORT = TransportConfig(batch_queue_frames=4, live_queue_frames=1, results_queue_frames=8)
QUEUES = TRANSPORT.queues()
SIZE = (160, 120)
FRAMES = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("net") / "small.pth", NetworkSpec.small(), seed=5)


@pytest.fixture(scope="module")
def clip() -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = zip(*render_moving_shapes(FRAMES, SIZE, objects=2), strict=True)
    return list(images), list(masks)


@dataclass
class Rig:
    context: zmq.Context
    settings: WorkerSettings
    results: queue.Queue
    """What the worker sent to the writer, read by a thread (results are lossless: unread, they block it)."""
    events: ResultCollector
    backlog: dict[str, list] = field(default_factory=dict)

    def sender(self, job_id: str) -> FrameSender:
        return FrameSender(
            self.context,
            self.settings.inbox_endpoint,
            job_id,
            live=False,
            queues=QUEUES,
            peer_timeout_s=WAIT_S,
        )

    def collect(self, until: type, job_id: str) -> list:
        """Results for `job_id` up to and including the first message of kind `until`, in arrival order."""
        received = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            pending = self.backlog.setdefault(job_id, [])
            if pending:
                message = pending.pop(0)
            else:
                try:
                    message = self.results.get(timeout=0.2)
                except queue.Empty:
                    continue
                other = getattr(message, "job_id", None)
                if other != job_id:
                    self.backlog.setdefault(other, []).append(
                        message
                    )  # kept, in order, for its own collect()
                    continue
            received.append(message)
            if isinstance(message, until):
                return received
        raise AssertionError(f"no {until.__name__} for {job_id}; got {[type(m).__name__ for m in received]}")


def _drain(collector: ResultCollector, into: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        message = collector.receive(timeout_s=0.1)
        if message is not None:
            into.put(message)


@pytest.fixture
def rig(ipc_dir: Path, checkpoint: Path, start_process) -> Iterator[Rig]:
    context = zmq.Context()
    writer = ResultCollector(context, f"ipc://{ipc_dir}/writer.sock", QUEUES)
    events = ResultCollector(context, f"ipc://{ipc_dir}/events.sock", QUEUES)
    settings = WorkerSettings(
        name="worker-t",
        device="cpu",
        checkpoint=str(checkpoint),
        inbox_endpoint=f"ipc://{ipc_dir}/worker.sock",
        writer_endpoint=writer.endpoint,
        events_endpoint=events.endpoint,
        transport=TRANSPORT,
        workers=WorkersConfig(size=64, jobs_per_worker=2, max_objects=3),
        xmem=XMemConfig(mem_every=3),
        threads=1,
        heartbeat_s=0.2,
    )
    process = start_process(run_worker, settings)
    deadline = time.monotonic() + WAIT_S
    while not isinstance(events.receive(timeout_s=0.5), Heartbeat):  # ready: the network is loaded
        assert process.is_alive() and time.monotonic() < deadline
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=_drain, args=(writer, results, stop), daemon=True)
    reader.start()
    yield Rig(context, settings, results, events)
    send_control(context, settings.inbox_endpoint, Shutdown(reason="test over", drain=False))
    process.join(10)
    assert process.exitcode == 0
    stop.set()
    reader.join(5)
    writer.close()
    events.close()
    context.term()


def _wait_for_held_jobs(rig: Rig, jobs: tuple[str, ...]) -> None:
    """Until a heartbeat lists exactly `jobs`; the worker's jobs are seen nowhere else."""
    deadline = time.monotonic() + WAIT_S
    while True:
        beat = rig.events.receive(timeout_s=0.5)
        if isinstance(beat, Heartbeat) and beat.jobs == jobs:
            return
        assert not isinstance(beat, ErrorMessage), beat
        assert time.monotonic() < deadline, f"the worker never held exactly {jobs}"


def _start(job_id: str, mask: np.ndarray, **options: object) -> JobStart:
    return JobStart(job_id=job_id, live=False, source_size=SIZE, fps=24.0, options=dict(options), mask=mask)


def _frame(job_id: str, index: int, image: np.ndarray) -> FrameMessage:
    """A frame as the decoder sends it: at the source size (the worker's session resizes it to 64)."""
    return FrameMessage(
        job_id=job_id, index=index, image=image, pts=index / 24, capture_time=time.time(), source_size=SIZE
    )


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """The worker's thread count here too, so both sides sum in the same order and agree bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reference(
    checkpoint: Path, images: list[np.ndarray], mask: np.ndarray, options: dict
) -> list[np.ndarray]:
    """The same frames through a VideoSession in this process: what an isolated job must produce."""
    from workers.xmem.checkpoint import load_network
    from workers.xmem.config import InferenceConfig
    from workers.xmem.session import VideoSession

    session = VideoSession(load_network(str(checkpoint)), InferenceConfig(**options), size=64)
    with _torch_threads(1):
        return [session.step(image, mask if i == 0 else None).index_mask for i, image in enumerate(images)]


def test_two_interleaved_jobs_get_their_own_sessions_and_full_size_masks(
    rig: Rig, clip, checkpoint: Path
) -> None:
    images, masks = clip
    tinted = [np.ascontiguousarray(255 - image) for image in images]
    with rig.sender("job-a") as a, rig.sender("job-b") as b:
        a.open(_start("job-a", masks[0]))
        b.open(_start("job-b", masks[0], mem_every=1))  # a per-job override of the daemon-wide option
        for index in range(FRAMES):
            a.send_frame(_frame("job-a", index, images[index]))
            b.send_frame(_frame("job-b", index, tinted[index]))
        assert a.finish().complete and b.finish().complete
    got_a = rig.collect(EndOfStream, "job-a")
    got_b = rig.collect(EndOfStream, "job-b")
    for got, frames, options in ((got_a, images, {"mem_every": 3}), (got_b, tinted, {"mem_every": 1})):
        results = [m for m in got if isinstance(m, MaskMessage)]
        assert [m.index for m in results] == list(range(FRAMES)) and isinstance(got[-1], EndOfStream)
        assert all(m.mask.shape == (120, 160) and m.mask.dtype == np.uint8 for m in results)
        assert set(np.unique(results[0].mask)) == {0, 1, 2}
        expected = _reference(checkpoint, frames, masks[0], options)
        # interleaving must not leak memory between jobs
        for result, reference in zip(results, expected, strict=True):
            np.testing.assert_array_equal(result.mask, reference)


def test_decoder_and_worker_give_exactly_the_masks_of_vosd_segment(
    rig: Rig, checkpoint: Path, ipc_dir: Path, start_process, tmp_path: Path
) -> None:
    """One preprocessing for every path: a real H.264 clip at 160x120 with a working size of 64, through
    the real decoder and worker processes, gives bit-identical masks to `segment_video` in this process."""
    from streamer.ingest.sources import open_source
    from streamer.masks import read_index_mask
    from streamer.output.writer import OutputWriter
    from streamer.segment import segment_video
    from workers.xmem.checkpoint import load_network
    from workers.xmem.config import InferenceConfig
    from workers.xmem.session import VideoSession

    video = tmp_path / "clip.mp4"
    first = write_first_mask(tmp_path / "first.png", write_moving_shape_video(video, frames=8, objects=2)[0])
    decoder = DecoderSettings(
        job_id="same", source=str(video), mask_path=str(first), live=False,
        worker_endpoint=rig.settings.inbox_endpoint, writer_endpoint=f"ipc://{ipc_dir}/writer.sock",
        events_endpoint=f"ipc://{ipc_dir}/events.sock", transport=TRANSPORT, max_objects=3,
        outputs={"dir": "unused"},
    )  # fmt: skip
    process = start_process(run_decoder, decoder)
    daemon = [m for m in rig.collect(EndOfStream, "same") if isinstance(m, MaskMessage)]
    process.join(WAIT_S)
    assert process.exitcode == 0 and [m.index for m in daemon] == list(range(8))

    session = VideoSession(load_network(str(checkpoint)), InferenceConfig(mem_every=3), size=64)
    with open_source(video, live=False) as source, _torch_threads(1):
        writer = OutputWriter(fps=24.0, source_size=SIZE, masks_dir=tmp_path / "masks")
        segment_video(source, read_index_mask(first), session, writer)
    local = [read_index_mask(path) for path in sorted((tmp_path / "masks").glob("*.png"))]
    assert len(local) == 8 and len(np.unique(local[-1])) == 3
    for index, (got, expected) in enumerate(zip(daemon, local, strict=True)):
        assert got.mask.shape == expected.shape == (120, 160)
        differ = np.mean(got.mask != expected)
        assert differ == 0, f"frame {index}: {differ:.2%} of the pixels differ from vosd segment"


@pytest.mark.parametrize(
    ("mask", "options", "message"),
    [
        (np.zeros((120, 160), np.uint8), {}, r"no object"),
        (np.zeros((60, 80), np.uint8), {}, r"80x60 but the video is 160x120"),
        (np.arange(120 * 160, dtype=np.uint8).reshape(120, 160) % 5, {}, r"has 4 objects; .* at most 3"),
        (None, {"no_such_option": 1}, r"invalid inference options \['no_such_option'\]"),
    ],
    ids=["empty-mask", "wrong-size", "too-many-objects", "unknown-option"],
)
def test_unusable_jobs_are_rejected_and_the_worker_keeps_serving(
    rig: Rig, clip, mask, options, message
) -> None:
    images, masks = clip
    with rig.sender("bad") as bad, pytest.raises(JobRejected, match=message):
        bad.open(_start("bad", masks[0] if mask is None else mask, **options))
    with rig.sender("good") as good:
        good.open(_start("good", masks[0]))
        good.send_frame(_frame("good", 0, images[0]))
        assert good.finish().complete
    assert [type(m) for m in rig.collect(EndOfStream, "good")] == [MaskMessage, EndOfStream]


def test_capacity_cancel_and_heartbeats(rig: Rig, clip) -> None:
    images, masks = clip
    with rig.sender("one") as one, rig.sender("two") as two, rig.sender("three") as three:
        one.open(_start("one", masks[0]))
        two.open(_start("two", masks[0]))
        with pytest.raises(JobRejected, match=r"already runs 2 jobs"):
            three.open(_start("three", masks[0]))
        one.send_frame(_frame("one", 0, images[0]))
        assert [type(m) for m in rig.collect(MaskMessage, "one")] == [MaskMessage]
        one.cancel("user")
        assert isinstance(rig.collect(Cancel, "one")[-1], Cancel)  # forwarded so the writer drops the outputs
        _wait_for_held_jobs(rig, ("two",))  # the cancelled job is gone
        three.open(_start("three", masks[0]))  # the freed slot can be used
        two.cancel("done")
        three.cancel("done")


def test_job_of_a_dead_decoder_is_released_at_once(rig: Rig, clip) -> None:
    images, masks = clip
    gone = rig.sender("gone")
    gone.open(_start("gone", masks[0]))
    gone.send_frame(_frame("gone", 0, images[0]))
    assert [type(m) for m in rig.collect(MaskMessage, "gone")] == [MaskMessage]
    gone.close()  # the decoder dies: no end of stream, no cancel
    _wait_for_held_jobs(rig, ("gone",))
    # The daemon saw the decoder die and cancels the job in its place; nothing waits for an idle timeout.
    assert release_job(rig.context, rig.settings.inbox_endpoint, "gone", "decoder exited with code -9")
    assert isinstance(rig.collect(Cancel, "gone")[-1], Cancel)
    _wait_for_held_jobs(rig, ())


def test_a_cpu_worker_leaves_a_core_to_the_decoders_and_the_writer() -> None:
    from workers.worker import default_threads

    assert [default_threads("cpu", cores) for cores in (1, 2, 16)] == [1, 1, 15]
    assert default_threads("cuda:0", 16) == 16
