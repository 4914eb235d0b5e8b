"""Jobs without a first-frame mask through a real `vosd serve`: auto mode (the bundled TMO-lite seeds a
small random XMem) end to end, batch and live, with the worker killed mid-job. Real Redis, ZeroMQ, spawned
processes and H.264 clips, as in test_daemon.py."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from daemon_rig import Served, assert_complete_outputs, frames_of, serving, write_config
from streamer.queue.jobs import JobState
from videos import LiveServer, free_port, write_moving_shape_video

pytestmark = pytest.mark.timeout(300)

FRAMES = 24
AUTO = {
    # Loose enough for TMO-lite on 160x120 synthetic shapes: a seed within the first few frames.
    "stable_frames": 2,
    "stable_iou": 0.2,
    "min_confidence": 0.5,
    "check_every": 4,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="vosd-a-"))  # short: ipc and redis socket paths are limited
    config = write_config(data_dir)
    settings = yaml.safe_load(config.read_text())
    settings["auto"] = AUTO
    settings["workers"]["checkpoint_every_s"] = 0.5
    config.write_text(yaml.safe_dump(settings))
    with serving(config, data_dir) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auto-clips") / "shapes.mp4"
    write_moving_shape_video(path, frames=FRAMES, objects=1)
    return path


def rle_lines(record) -> list[dict]:
    return [json.loads(line) for line in Path(record.outputs["rle"]).read_text().splitlines()]


def test_batch_auto_job_seeds_reports_and_writes_every_frame_once(served: Served, clip: Path) -> None:
    job = served.submit(str(clip))
    record = served.wait(job)
    assert record.state is JobState.DONE, record.error
    assert record.mode == "auto" and record.mask_path is None
    assert (record.frames_done, record.frames_total) == (FRAMES, FRAMES)
    assert_complete_outputs(record, FRAMES)
    lines = rle_lines(record)
    events = [line["event"] for line in lines if "event" in line]
    assert events, f"no seed in {FRAMES} frames: {served.log.read_text()[-2000:]}"
    assert events[0]["kind"] == "seed" and events[0]["reason"] == "first"
    assert all(e["kind"] == "reseed" for e in events[1:])
    assert all(not line["objects"] for line in lines[: events[0]["frame"]]), "no object while searching"
    assert (record.seeds, record.last_seed_frame) == (len(events), events[-1]["frame"])
    assert record.auto_state in ("searching", "tracking")


def test_batch_auto_job_killed_mid_run_resumes_from_its_checkpoint(served: Served, tmp_path: Path) -> None:
    long = tmp_path / "long.mp4"
    write_moving_shape_video(long, frames=72, objects=1)
    job = served.submit(str(long))
    running = served.wait_progress(job, 20)
    assert running.state is JobState.RUNNING and running.frames_done < 72
    os.kill(served.pids()["worker-0"], signal.SIGKILL)
    record = served.wait(job)
    assert record.state is JobState.DONE, record.error
    assert record.runs == 2 and record.resumed_from is not None and record.resumed_from > 0, (
        "the auto session's checkpoint (TMO state, seeds, XMem memory) was loaded")
    assert_complete_outputs(record, 72)
    events = [line["event"] for line in rle_lines(record) if "event" in line]
    assert events and events[0]["kind"] == "seed"
    assert [e["kind"] for e in events].count("seed") == 1, "the resumed run did not search again"
    assert (record.seeds, record.last_seed_frame) == (len(events), events[-1]["frame"])


def test_cancel_of_a_running_auto_job_leaves_no_outputs(served: Served, tmp_path: Path) -> None:
    long = tmp_path / "long.mp4"
    write_moving_shape_video(long, frames=72, objects=1)
    out = tmp_path / "cancelled"
    job = served.submit(str(long), "--output", str(out))
    served.wait_progress(job, 5)
    assert served.queue.cancel(job) is JobState.RUNNING
    record = served.wait(job, timeout_s=30)
    assert record.state is JobState.CANCELLED, record
    time.sleep(1.0)  # the writer discards the temporary files once its Cancel arrives
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


def test_tmo_mode_job_writes_tmo_masks(served: Served, clip: Path) -> None:
    job = served.submit(str(clip), "--mode", "tmo", "--no-overlay", "--no-masks")
    record = served.wait(job)
    assert record.state is JobState.DONE, record.error
    assert record.mode == "tmo" and set(record.outputs) == {"rle"}
    lines = rle_lines(record)
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert not any("event" in line for line in lines) and record.seeds == 0


def test_live_auto_job_whose_worker_is_killed_recovers_and_seeds_again(served: Served) -> None:
    with LiveServer("tcp", free_port(), fps=24, lifetime=120) as server:
        time.sleep(0.5)
        job = served.submit(server.url, "--live")
        deadline = time.monotonic() + 120
        while (running := served.queue.get(job)).seeds < 1:
            assert not running.state.final, running
            assert time.monotonic() < deadline, f"never seeded: {running}"
            time.sleep(0.1)
        assert running.mode == "auto" and running.last_seed_frame is not None
        worker = served.pids()["worker-0"]
        os.kill(worker, signal.SIGKILL)
        server.start()  # the test server takes one client; a camera takes the re-run's new connection
        while (rerun := served.queue.get(job)).runs < 2 or rerun.frames_done < 30:
            assert not rerun.state.final, rerun
            assert time.monotonic() < deadline, f"no second run: {rerun}"
            time.sleep(0.1)
        assert served.queue.stop(job) is JobState.RUNNING
        record = served.wait(job, timeout_s=60)
    assert record.state is JobState.DONE and record.stopped_early, record.error
    assert record.runs == 2, "re-run by the daemon after the worker died"
    assert "worker-0 died" in served.log.read_text()
    count, size, _ = frames_of(Path(record.outputs["overlay"]))
    assert count == record.frames_done and size == (160, 120)
    lines = rle_lines(record)
    assert [line["frame"] for line in lines] == list(range(record.frames_done)), "every frame once"
    events = [line["event"] for line in lines if "event" in line]
    assert events and events[0]["kind"] == "seed", "the second run searched and seeded again"
    assert record.seeds >= 1 and record.auto_state in ("searching", "tracking")
