"""`vosd serve` end to end: a real daemon process (started through `serve_command` with a YAML config),
its embedded Redis, spawned decoder/worker/writer processes, real H.264 clips and a live MPEG-TS server.

One daemon serves the whole module; the tests kill its worker with SIGKILL, cut the live stream, cancel
jobs and feed it broken inputs, and it must keep serving. Teardown stops it with SIGTERM and checks that
it shuts down cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib
import yaml
import zmq
from typer.testing import CliRunner

from daemon_rig import (
    GIVE_UP_S,
    JOB_TIMEOUT_S,
    Served,
    assert_complete_outputs,
    cli_app,
    frames_of,
    launch,
    rle_frames,
    serving,
    stop_daemon,
    write_config,
)
from streamer.masks import read_index_mask
from streamer.output.writer_process import WriterSettings, output_paths, run_writer
from streamer.queue.jobs import JobQueue, JobRecord, JobState, KeyNames
from streamer.transport.messages import (
    Cancel,
    EndOfStream,
    FrameMessage,
    JobStart,
    MaskMessage,
    OutputsComplete,
    Shutdown,
)
from streamer.transport.sockets import QueueSettings, ResultCollector, ResultSender
from videos import (
    LiveServer,
    corrupt_file,
    free_port,
    truncate_file,
    write_first_mask,
    write_moving_shape_video,
    write_text_file,
    write_zero_byte_file,
)

pytestmark = pytest.mark.timeout(240)

@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | list[np.ndarray]]:
    directory = tmp_path_factory.mktemp("clips")
    masks = write_moving_shape_video(directory / "shapes.mp4", frames=48, objects=2)
    long_masks = write_moving_shape_video(directory / "long.mp4", frames=96, objects=2)
    return {
        "video": directory / "shapes.mp4",
        "mask": write_first_mask(directory / "first.png", masks[0]),
        "masks": masks,
        "long": directory / "long.mp4",
        "long_mask": write_first_mask(directory / "long-first.png", long_masks[0]),
        "dir": directory,
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="vosd-d-"))  # short: ipc and redis socket paths are limited
    config = write_config(data_dir)
    with serving(config, data_dir) as daemon:
        yield daemon


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def test_batch_job_through_the_daemon_writes_complete_outputs(served: Served, clips) -> None:
    job = served.submit(str(clips["video"]), "--mask", str(clips["mask"]))
    record = served.wait(job)
    assert record.state is JobState.DONE, record.error
    assert (record.frames_done, record.frames_total, record.frames_dropped) == (48, 48, 0)
    assert (record.runs, record.attempts, record.latency_p50_s) == (1, 1, None)  # latency is for live jobs
    assert record.started_at and record.finished_at and record.finished_at >= record.started_at
    assert_complete_outputs(record, 48)
    first = read_index_mask(Path(record.outputs["masks"]) / "00000.png")
    for label in (1, 2):  # frame 0 is the given mask, back at the source size after the 64-pixel model
        assert _iou(first == label, clips["masks"][0] == label) > 0.8

    runner = CliRunner()
    status = runner.invoke(cli_app(), ["status", job, "--json", "--config", str(served.config)])
    assert status.exit_code == 0 and json.loads(status.output)["state"] == "done"
    watched = runner.invoke(cli_app(), ["watch", job, "--config", str(served.config)])
    assert watched.exit_code == 0 and record.outputs["overlay"] in watched.output
    listed = runner.invoke(cli_app(), ["jobs", "--config", str(served.config)])
    assert listed.exit_code == 0 and job in listed.output


def test_worker_killed_mid_job_is_restarted_and_the_job_completes_exactly_once(served: Served, clips) -> None:
    job = served.submit(str(clips["long"]), "--mask", str(clips["long_mask"]))
    running = served.wait_progress(job, 10)
    assert running.state is JobState.RUNNING and running.frames_done < 96
    worker = served.pids()["worker-0"]
    os.kill(worker, signal.SIGKILL)
    record = served.wait(job)
    assert record.state is JobState.DONE, record.error
    assert record.frames_done == 96
    assert (record.runs, record.attempts) == (2, 1)  # re-run by the daemon: one delivery, two runs
    assert_complete_outputs(record, 96)
    assert served.pids()["worker-0"] != worker
    assert "re-run (run 1 failed: worker-0 died (exit code -9))" in served.log.read_text()


def test_cancel_of_a_running_job_stops_it_and_leaves_no_outputs(
    served: Served, tmp_path: Path, clips
) -> None:
    with LiveServer("tcp", free_port(), fps=24, lifetime=120) as server:
        time.sleep(0.5)
        out = tmp_path / "cancelled"
        job = served.submit(server.url, "--live", "--mask", str(clips["mask"]), "--output", str(out))
        served.wait_progress(job, 5)
        result = CliRunner().invoke(cli_app(), ["cancel", job, "--config", str(served.config)])
        assert result.exit_code == 0 and "cancel requested" in result.output
        asked = time.monotonic()
        record = served.wait(job, timeout_s=10)
        noticed = time.monotonic() - asked
    assert record.state is JobState.CANCELLED, record
    assert noticed < 2.0, f"cancel took {noticed:.2f} s"  # the promise is one second; slack for a busy CI box
    time.sleep(1.0)  # the writer discards the temporary files once its Cancel arrives
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


def test_live_stream_cut_and_restarted_reconnects_and_the_job_continues(served: Served, clips) -> None:
    server = LiveServer("tcp", free_port(), fps=24, lifetime=120).start()
    try:
        time.sleep(0.5)
        job = served.submit(server.url, "--live", "--mask", str(clips["mask"]), "--max-frames", "240")
        before = served.wait_progress(
            job, 5
        )  # 240 frames are 10 s of stream: the cut comes well before the end
        server.kill()  # the camera loses power mid-job
        time.sleep(1.5)
        assert served.queue.get(job).state is JobState.RUNNING
        server.start()
        record = served.wait(job)
    finally:
        server.stop()
    assert record.state is JobState.DONE, record.error
    assert before.frames_done < record.frames_done
    assert (
        record.frames_done + record.frames_dropped == 240
    )  # each decoded frame is written or counted dropped
    count, size, _ = frames_of(Path(record.outputs["overlay"]))
    assert count == record.frames_done and size == (160, 120)
    # Monitoring through the queue: decoded-to-written latency percentiles of the recent frames.
    assert record.latency_p50_s is not None and record.latency_p95_s is not None
    assert 0 < record.latency_p50_s <= record.latency_p95_s
    status = CliRunner().invoke(cli_app(), ["status", job, "--config", str(served.config)])
    assert status.exit_code == 0 and "latency_p50_s" in status.output and "latency_p95_s" in status.output


def _many_objects(directory: Path, mask: np.ndarray) -> Path:
    many = mask.copy()
    for label, row in zip(range(3, 8), range(0, 100, 20), strict=True):
        many[row : row + 5, :5] = label
    return write_first_mask(directory / "many.png", many)


def test_bad_inputs_fail_with_clear_messages_while_the_daemon_keeps_serving(
    served: Served, clips, tmp_path: Path
) -> None:
    video, mask, masks = clips["video"], clips["mask"], clips["masks"]
    cut_source = tmp_path / "whole.mp4"
    write_moving_shape_video(cut_source, frames=48, faststart=True)
    bad = {
        "corrupt": (corrupt_file(video, tmp_path / "corrupt.mp4"), mask, r"corrupt"),
        "truncated": (truncate_file(cut_source, tmp_path / "cut.mp4"), mask, r"truncated at frame \d+ of 48"),
        "zero-byte": (write_zero_byte_file(tmp_path / "empty.mp4"), mask, r"empty file \(0 bytes\)"),
        "text": (write_text_file(tmp_path / "notes.mp4"), mask, r"not a video"),
        "wrong-size mask": (
            video,
            write_first_mask(tmp_path / "small.png", masks[0][::2, ::2]),
            r"is 80x60 but the video is 160x120",
        ),
        "empty mask": (
            video,
            write_first_mask(tmp_path / "zero.png", np.zeros_like(masks[0])),
            "has no object",
        ),
        "too many objects": (video, _many_objects(tmp_path, masks[0]), "has 7 objects; .* at most 4"),
    }
    jobs = {
        name: served.submit(
            str(source), "--mask", str(m), "--output", str(tmp_path / re.sub(r"\W", "-", name))
        )
        for name, (source, m, _) in bad.items()
    }
    good = served.submit(str(video), "--mask", str(mask), "--output", str(tmp_path / "good"))
    for name, job in jobs.items():
        record = served.wait(job)
        assert record.state is JobState.FAILED, (name, record)
        assert record.error and re.search(bad[name][2], record.error), (name, record.error)
        out = tmp_path / re.sub(r"\W", "-", name)
        assert not out.exists() or not list(out.iterdir()), (name, list(out.iterdir()))
    record = served.wait(good)
    assert record.state is JobState.DONE, record.error
    assert_complete_outputs(record, 48)


def test_job_whose_worker_keeps_dying_goes_to_the_dead_letter_stream(served: Served, clips) -> None:
    job = served.submit(str(clips["long"]), "--mask", str(clips["long_mask"]))
    worker = served.pids()["worker-0"]
    for run in (1, 2, 3):  # max_attempts is 3: every run of the job loses its worker
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while f"job={job} run={run} " not in served.log.read_text():
            assert time.monotonic() < deadline, f"run {run} of {job} never started"
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(worker, signal.SIGKILL)
        worker = served.wait_for_new_pid("worker-0", worker)
    record = served.wait(job)
    assert record.state is JobState.FAILED and "gave up after 3 runs" in (record.error or ""), record
    assert record.runs == 3
    letters = [entry for entry in served.queue.dead_letters() if entry["job_id"] == job]
    assert [(entry["reason"], entry["runs"]) for entry in letters] == [(record.error, "3")]


def test_cancel_is_decided_by_the_writer_so_state_and_outputs_agree(
    served: Served, tmp_path: Path, clips
) -> None:
    with LiveServer("tcp", free_port(), fps=24, lifetime=120) as server:
        time.sleep(0.5)
        out = tmp_path / "raced"
        job = served.submit(server.url, "--live", "--mask", str(clips["mask"]), "--output", str(out))
        served.wait_progress(job, 5)
        writer = served.pids()["writer"]
        os.kill(writer, signal.SIGSTOP)  # the writer may be completing the outputs right now
        try:
            assert served.queue.cancel(job) is JobState.RUNNING
            time.sleep(
                1.5
            )  # many daemon turns: the cancel is seen, but only the writer knows what is on disk
            assert served.queue.get(job).state is JobState.RUNNING
        finally:
            os.kill(writer, signal.SIGCONT)
        record = served.wait(job, timeout_s=30)
    assert record.state is JobState.CANCELLED, record
    time.sleep(0.5)
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


def test_writer_answers_every_cancel_with_what_is_on_disk(
    ipc_dir: Path, tmp_path: Path, start_process
) -> None:
    """The writer half of the cancel decision: outputs completed just before a Cancel stay, and say so."""
    queues = QueueSettings()
    context = zmq.Context()
    events = ResultCollector(context, f"ipc://{ipc_dir}/events.sock", queues)
    settings = WriterSettings(
        collector_endpoint=f"ipc://{ipc_dir}/writer.sock", events_endpoint=events.endpoint
    )
    start_process(run_writer, settings)
    tx = ResultSender(context, settings.collector_endpoint, queues, peer_timeout_s=JOB_TIMEOUT_S)

    def answer(job_id: str) -> OutputsComplete | Cancel:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            message = events.receive(timeout_s=0.2)
            if isinstance(message, (OutputsComplete, Cancel)) and message.job_id == job_id:
                return message
        raise AssertionError(f"no answer for {job_id}")

    def feed(job_id: str, frames: int, *, end: bool) -> dict[str, str]:
        outputs = {"dir": str(tmp_path / job_id), "overlay": True, "masks": True, "rle": True}
        tx.send(JobStart(job_id=job_id, live=False, source_size=(32, 24), fps=24.0, outputs=outputs))
        for index in range(frames):
            image = np.full((24, 32, 3), index * 20, np.uint8)
            tx.send(FrameMessage(job_id, index, image, index / 24, time.time(), (32, 24)))
            tx.send(MaskMessage(job_id, index, (image[..., 0] > 0).astype(np.uint8), index / 24, time.time()))
        if end:
            tx.send(EndOfStream(job_id=job_id, frames_total=frames, frames_sent=frames))
        return output_paths(outputs)

    try:
        complete = feed("complete", 3, end=True)
        assert isinstance(answer("complete"), OutputsComplete)
        tx.send(Cancel(job_id="complete", reason="cancelled on request"))  # a moment too late
        answer_after = answer("complete")
        assert isinstance(answer_after, OutputsComplete), "complete outputs are kept and reported as such"
        assert sorted(p.name for p in Path(complete["masks"]).iterdir()) == [
            "00000.png",
            "00001.png",
            "00002.png",
        ]

        feed("open", 2, end=False)
        tx.send(Cancel(job_id="open", reason="cancelled on request"))
        assert isinstance(answer("open"), Cancel)
        tx.send(Cancel(job_id="never-seen", reason="daemon stopping"))
        assert isinstance(answer("never-seen"), Cancel)
        assert not (tmp_path / "open").exists() or not list((tmp_path / "open").iterdir())
        tx.send(Shutdown(reason="test over", drain=False))
    finally:
        tx.close()
        events.close()
        context.term()


def test_sigterm_hands_running_jobs_back_and_the_next_daemon_completes_them(redis_url: str, clips) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="vosd-g-"))
    # The visibility timeout is far past this test's patience: only an immediate hand-back lets the job
    # resume.
    config = write_config(data_dir, url=redis_url, key_prefix="drain", visibility_timeout_s=600.0)
    queue = JobQueue(redis_lib.Redis.from_url(redis_url, decode_responses=True), keys=KeyNames("drain"))
    try:
        first = Served(
            launch(config, data_dir, data_dir / "first.log"), config, data_dir, queue, data_dir / "first.log"
        )
        job = first.submit(str(clips["long"]), "--mask", str(clips["long_mask"]))
        running = first.wait_progress(job, 10)
        assert running.state is JobState.RUNNING and running.frames_done < 96, running
        stop_daemon(first)
        record = queue.get(job)
        assert (record.state, record.attempts, record.runs) == (JobState.QUEUED, 1, 1), record
        assert "handed back" in first.log.read_text()

        second = Served(
            launch(config, data_dir, data_dir / "second.log"),
            config,
            data_dir,
            queue,
            data_dir / "second.log",
        )
        try:
            record = second.wait(job)
        finally:
            stop_daemon(second)
        assert record.state is JobState.DONE, record.error
        assert (record.attempts, record.runs, record.frames_done) == (1, 2, 96)  # the hand-back did not count
        assert_complete_outputs(record, 96)
    finally:
        queue.redis.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _wait_status(served: Served, job_id: str, what: str, predicate) -> JobRecord:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not predicate(record := served.queue.get(job_id)):
        assert not record.state.final and time.monotonic() < deadline, f"never {what}: {record}"
        time.sleep(0.05)
    return record


def _status_json(served: Served, job_id: str) -> dict:
    result = CliRunner().invoke(cli_app(), ["status", job_id, "--json", "--config", str(served.config)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_live_source_that_never_connects_shows_reconnecting_then_fails_within_its_budget(
    served: Served, clips
) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    job = served.submit(url, "--live", "--mask", str(clips["mask"]))
    record = _wait_status(served, job, "retrying", lambda r: r.reconnect_attempts >= 2)
    assert record.state is JobState.RUNNING and record.source_state == "reconnecting", record
    assert url in (record.source_error or "") and "refused" in (record.source_error or ""), record
    assert record.last_frame_at is None
    status = _status_json(served, job)
    assert status["source_state"] == "reconnecting" and status["seconds_without_frame"] >= 0
    listed = CliRunner().invoke(cli_app(), ["jobs", "--config", str(served.config)])
    assert "reconnecting" in listed.output and "attempts" in listed.output, listed.output
    record = served.wait(job)
    assert record.state is JobState.FAILED, record
    assert record.error and url in record.error, record.error
    assert re.search(rf"could not connect within {GIVE_UP_S:g} s .*last error: .*refused", record.error)
    assert record.finished_at - record.started_at < GIVE_UP_S + 10  # the budget, the last open, a heartbeat
    assert f"job={job} source reconnecting: attempt 2 failed" in served.log.read_text()


def test_cut_live_stream_shows_reconnecting_streams_again_on_return_and_fails_when_it_stays_away(
    served: Served, clips
) -> None:
    server = LiveServer("tcp", free_port(), fps=24, lifetime=120).start()
    try:
        time.sleep(0.5)
        job = served.submit(server.url, "--live", "--mask", str(clips["mask"]))
        served.wait_progress(job, 5)
        assert served.queue.get(job).source_state == "streaming"
        server.kill()
        lost = _wait_status(served, job, "reconnecting", lambda r: r.source_state == "reconnecting")
        assert lost.last_frame_at is not None and lost.state is JobState.RUNNING
        first = _status_json(served, job)["seconds_without_frame"]
        time.sleep(1.0)
        later = _status_json(served, job)
        assert later["last_frame_at"] == lost.last_frame_at and later["seconds_without_frame"] > first
        server.start()
        back = _wait_status(served, job, "streaming again", lambda r: r.source_state == "streaming")
        assert back.last_frame_at > lost.last_frame_at and back.reconnect_attempts == 0
        frames = served.wait_progress(job, back.frames_done + 5).frames_done
        assert frames > lost.frames_done
        server.kill()  # for good this time
        record = served.wait(job)
    finally:
        server.stop()
    assert record.state is JobState.FAILED, record
    assert record.error and server.url in record.error, record.error
    assert f"no frame for {GIVE_UP_S:g} s, gave up reconnecting" in record.error, record.error


def test_stop_ends_a_running_live_job_and_keeps_complete_outputs(
    served: Served, tmp_path: Path, clips
) -> None:
    with LiveServer("tcp", free_port(), fps=24, lifetime=120) as server:
        time.sleep(0.5)
        out = tmp_path / "stopped"
        job = served.submit(server.url, "--live", "--mask", str(clips["mask"]), "--output", str(out))
        served.wait_progress(job, 8)
        result = CliRunner().invoke(cli_app(), ["stop", job, "--config", str(served.config)])
        assert result.exit_code == 0 and "stop requested" in result.output, result.output
        record = served.wait(job, timeout_s=30)
    assert record.state is JobState.DONE and record.stopped_early, record
    assert record.frames_done >= 8 and record.error is None
    overlay, masks, rle = (Path(record.outputs[k]) for k in ("overlay", "masks", "rle"))
    assert frames_of(overlay)[:2] == (record.frames_done, (160, 120))
    assert sorted(p.name for p in masks.iterdir()) == [f"{i:05d}.png" for i in range(record.frames_done)]
    assert rle_frames(rle) == list(range(record.frames_done))
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    listed = CliRunner().invoke(cli_app(), ["jobs", "--config", str(served.config)])
    assert "stopped early" in listed.output


def test_stop_ends_a_batch_job_early_with_the_frames_so_far(served: Served, clips) -> None:
    job = served.submit(str(clips["long"]), "--mask", str(clips["long_mask"]))
    served.wait_progress(job, 10)
    assert served.queue.stop(job) is JobState.RUNNING
    record = served.wait(job)
    assert record.state is JobState.DONE and record.stopped_early, record
    assert 10 <= record.frames_done < 96 and record.frames_total == 96
    assert_complete_outputs(record, record.frames_done)


def test_stop_of_a_queued_job_cancels_it_and_says_nothing_was_produced(served: Served, clips) -> None:
    idle = served.config.with_name("idle.yaml")  # same Redis, a key prefix no daemon consumes
    data = yaml.safe_load(served.config.read_text())
    data["redis"]["key_prefix"] = "idle"
    idle.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    submitted = runner.invoke(cli_app(), ["submit", str(clips["video"]), "--mask", str(clips["mask"]),
                                       "--config", str(idle)])
    job = submitted.output.strip().splitlines()[-1]
    result = runner.invoke(cli_app(), ["stop", job, "--config", str(idle)])
    assert result.exit_code == 0, result.output
    assert "cancelled: it was still queued, so nothing was produced" in result.output
    record = JobQueue(served.queue.redis, keys=KeyNames("idle")).get(job)
    assert record.state is JobState.CANCELLED and record.stop_requested and not record.outputs
    assert "nothing was produced" in (record.error or "")


@pytest.mark.parametrize("uri", ["gopher://x", "ftp://x"])
def test_submit_refuses_unsupported_schemes_and_queues_nothing(served: Served, clips, uri: str) -> None:
    before = [record.id for record in served.queue.list_jobs(limit=1000)]
    result = CliRunner().invoke(
        cli_app(), ["submit", uri, "--mask", str(clips["mask"]), "--config", str(served.config)]
    )
    assert result.exit_code != 0
    assert f"{uri}: unsupported source scheme" in result.output, result.output
    assert [record.id for record in served.queue.list_jobs(limit=1000)] == before
