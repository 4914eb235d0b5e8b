"""Resuming from a checkpoint: a session saved at frame k and loaded into a fresh session continues exactly as
the uninterrupted one (engine, small calibrated random network); the daemon picks a checkpoint only when the
outputs hold its frames; and a batch job whose worker is SIGKILLed mid-job resumes there through the real
daemon (embedded processes, ZeroMQ, Redis), its outputs equal to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import redis as redis_lib
import yaml

from daemon_rig import launch
from streamer.masks import read_index_mask, write_index_mask
from streamer.output import resume
from streamer.queue.jobs import JobQueue, JobRecord, JobState, KeyNames
from videos import write_first_mask, write_moving_shape_video
from workers.xmem.config import InferenceConfig
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import InitOptions, make_random_network, write_random_checkpoint
from workers.xmem.session import VideoSession, load_state, save_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 48, 64
FRAMES = 16
LATE_FRAME = 4




@pytest.fixture(scope="module")
def network() -> XMemNetwork:
    options = InitOptions(batches=1, batch_size=1, image_size=(H, W))
    return make_random_network(NetworkSpec.small(), seed=5, options=options)


def video(frames: int, seed: int = 0) -> list[np.ndarray]:
    texture = np.random.default_rng(seed).integers(0, 256, size=(H + frames, W + frames, 3), dtype=np.uint8)
    return [texture[t : t + H, t : t + W] for t in range(frames)]


def masks() -> dict[int, np.ndarray]:
    first = np.zeros((H, W), np.uint8)
    first[4:24, 4:28], first[20:44, 36:60] = 3, 7
    late = np.zeros((H, W), np.uint8)
    late[30:46, 6:22] = 5
    return {0: first, LATE_FRAME: late}


def consolidating(**overrides: int) -> InferenceConfig:
    """Every frame a memory frame, working memory compressed every few frames and long-term memory so
    small that it evicts: 12 memory elements per 48x64 frame."""
    options = dict(mem_every=1, top_k=8, max_mid_term_frames=4, min_mid_term_frames=2, num_prototypes=6,
                   max_long_term_elements=14)
    return InferenceConfig(**{**options, **overrides})


def step(session: VideoSession, frames: list[np.ndarray], t: int) -> np.ndarray:
    result = session.step(frames[t], masks().get(t), end=t == len(frames) - 1, keep_probabilities=True)
    return result.probabilities


@pytest.mark.parametrize(
    ("config", "stop_after"),
    [
        (consolidating(), 2),  # before the late object
        (consolidating(), 9),  # after several consolidations and an eviction, with two object groups
        (consolidating(deep_update_every=3), 10),  # deep updates on their own schedule
        (consolidating(enable_long_term_count_usage=False), 11),  # eviction of the oldest prototypes
        (InferenceConfig(top_k=8, mem_every=3), 7),  # default long-term bounds, memory every third frame
    ],
)
def test_a_restored_session_continues_exactly_as_the_uninterrupted_one(
    network: XMemNetwork, tmp_path: Path, config: InferenceConfig, stop_after: int
) -> None:
    frames = video(FRAMES)
    reference = VideoSession(network, config, size=-1)
    expected = [step(reference, frames, t) for t in range(FRAMES)]

    interrupted = VideoSession(network, config, size=-1)
    for t in range(stop_after + 1):
        np.testing.assert_array_equal(step(interrupted, frames, t), expected[t])
    stats = interrupted.memory_stats()
    saved = save_state(interrupted.state_dict(), tmp_path / "state.pt")
    assert saved == (tmp_path / "state.pt").stat().st_size and not list(tmp_path.glob(".*.tmp"))
    del interrupted

    resumed = VideoSession(network, config, size=-1)
    resumed.load_state_dict(load_state(tmp_path / "state.pt"))
    assert resumed.memory_stats() == stats and stats["sensory_objects"] > 0
    if stop_after >= 9 and config.max_mid_term_frames == 4:
        assert stats["long_term"] > 0 and len(stats["long_term_groups"]) == 2
    for t in range(stop_after + 1, FRAMES):
        np.testing.assert_array_equal(step(resumed, frames, t), expected[t], err_msg=f"frame {t}")
    assert resumed.memory_stats() == reference.memory_stats()


def test_a_state_from_other_options_or_another_size_is_refused(network: XMemNetwork) -> None:
    frames = video(3)
    session = VideoSession(network, consolidating(), size=-1)
    for t in range(3):
        step(session, frames, t)
    state = session.state_dict()
    with pytest.raises(ValueError, match="inference options"):
        VideoSession(network, consolidating(top_k=4), size=-1).load_state_dict(state)
    with pytest.raises(ValueError, match="working size"):
        VideoSession(network, consolidating(), size=32).load_state_dict(state)


def test_a_checkpoint_is_used_only_while_the_outputs_hold_its_frames(tmp_path: Path) -> None:
    outputs = {"dir": str(tmp_path / "job"), "overlay": True, "masks": True, "rle": True}
    assert resume.resume_point(outputs) == 0  # nothing saved yet
    folder = resume.directory(outputs)
    folder.mkdir(parents=True)
    for frame in (8, 20):
        resume.pending_path(outputs, frame).write_bytes(b"state")
    assert resume.resume_point(outputs) == 0  # saved by the worker, not vouched for by the writer
    assert resume.promote(outputs, 8) and resume.promote(outputs, 20) and not resume.promote(outputs, 30)
    assert sorted(p.name for p in folder.iterdir()) == ["frame-00000020.pt"]
    kept = tmp_path / "job" / "masks.part"
    kept.mkdir()
    for index in range(25):
        write_index_mask(kept / f"{index:05d}.png", np.zeros((4, 4), np.uint8))
    assert resume.resume_point(outputs) == 20
    (kept / "00012.png").unlink()  # the outputs lost frames the checkpoint stands on
    assert resume.resume_point(outputs) == 0 and not folder.exists()
    assert not resume.resumable(outputs, live=True)
    assert not resume.resumable({**outputs, "masks": False}, live=False)  # the PNGs are what it resumes from


# ------------------------------------------------------------------------------------------ the daemon

JOB_TIMEOUT_S = 300.0
"""Upper bound for one job on the shared two-core machine; reached only when something is broken."""
CLIP_FRAMES = 64


def _launch(data_dir: Path, redis_url: str) -> tuple[subprocess.Popen, Path]:
    """A daemon checkpointing every 0.3 s, with a small random network at a 64-pixel working size."""
    checkpoint = write_random_checkpoint(data_dir / "small.pth", NetworkSpec.small(), seed=3)
    config = data_dir / "vosd.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(data_dir),
        "redis": {"url": redis_url, "key_prefix": "resume", "lease_renewal_s": 0.5},
        "workers": {"devices": ["cpu"], "jobs_per_worker": 2, "size": 64, "max_objects": 4,
                    "model_path": str(checkpoint), "checkpoint_every_s": 0.3},
        "writer": {"crf": 30},
    }))
    log = data_dir / "daemon.log"
    return launch(config, data_dir, log), log


def _wait(
    queue: JobQueue, job_id: str, done: Callable[[JobRecord], bool], daemon: subprocess.Popen, log: Path
) -> JobRecord:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not done(record := queue.get(job_id)):
        assert daemon.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"job {job_id}: {record}"
        time.sleep(0.02)
    return record


def _worker_pid(queue: JobQueue) -> int:
    (key,) = queue.redis.scan_iter(match=queue.keys.daemon("*"))
    return int(queue.redis.hget(key, "worker-0"))


def _outputs(out: Path) -> tuple[int, list[str], list[np.ndarray], list[str]]:
    """Overlay frame count, PNG names, PNG masks and RLE lines of a finished job."""
    with av.open(str(out / "overlay.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
    names = sorted(p.name for p in (out / "masks").iterdir())
    masks = [read_index_mask(out / "masks" / name) for name in names]
    return frames, names, masks, (out / "masks.jsonl").read_text().splitlines()


def test_worker_killed_mid_job_resumes_from_its_checkpoint(redis_url: str, tmp_path: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="vosd-r-"))  # short: ipc socket paths are limited
    clip, first = tmp_path / "clip.mp4", tmp_path / "first.png"
    write_first_mask(first, write_moving_shape_video(clip, frames=CLIP_FRAMES, objects=2)[0])
    queue = JobQueue(redis_lib.Redis.from_url(redis_url, decode_responses=True), keys=KeyNames("resume"))
    daemon, log = _launch(data_dir, redis_url)
    try:
        reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
        reference = queue.submit(str(clip), mask_path=str(first), options={"output_dir": str(reference_dir)})
        record = _wait(queue, reference.id, lambda r: r.state.final, daemon, log)
        assert (record.state, record.runs, record.resumed_from) == (JobState.DONE, 1, 0), record

        job = queue.submit(str(clip), mask_path=str(first), options={"output_dir": str(resumed_dir)})
        outputs = {"dir": str(resumed_dir)}
        _wait(queue, job.id, lambda r: resume.saved_frame(outputs) >= 8 or r.state.final, daemon, log)
        saved = resume.saved_frame(outputs)
        os.kill(_worker_pid(queue), signal.SIGKILL)
        assert 8 <= saved < CLIP_FRAMES and queue.get(job.id).state is JobState.RUNNING
        record = _wait(queue, job.id, lambda r: r.state.final, daemon, log)

        assert record.state is JobState.DONE, record.error
        assert (record.runs, record.attempts, record.frames_done) == (2, 1, CLIP_FRAMES)
        resumed_from = record.resumed_from
        assert resumed_from is not None and saved <= resumed_from < CLIP_FRAMES
        text = log.read_text()
        assert f"job={job.id} run=2 worker=worker-0 decoder pid=" in text
        assert f"from frame {resumed_from}\n" in text
        # The second run segmented only the frames after the checkpoint.
        assert f"job={job.id} end_of_stream frames={CLIP_FRAMES - resumed_from} " in text

        expected = _outputs(reference_dir)
        got = _outputs(resumed_dir)
        assert got[0] == expected[0] == CLIP_FRAMES  # the overlay was re-encoded from frame 0
        assert got[1] == expected[1] == [f"{i:05d}.png" for i in range(CLIP_FRAMES)]
        for index, (ours, theirs) in enumerate(zip(got[2], expected[2], strict=True)):
            np.testing.assert_array_equal(ours, theirs, err_msg=f"frame {index}")
        assert [json.loads(line)["frame"] for line in got[3]] == list(range(CLIP_FRAMES))
        assert got[3] == expected[3]
        assert sorted(p.name for p in resumed_dir.iterdir()) == ["masks", "masks.jsonl", "overlay.mp4"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            assert daemon.wait(timeout=30) == 0, log.read_text()[-3000:]
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            queue.redis.close()
            shutil.rmtree(data_dir, ignore_errors=True)
