"""Faults an operator meets, each with real daemons as processes, real Redis and real signals: Redis killed
under a running job, a command racing a starting daemon for the embedded Redis, and a daemon killed with
SIGKILL while a second daemon shares its queue (takeover, spread, leftovers)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from typer.testing import CliRunner

from daemon_rig import (
    JOB_TIMEOUT_S,
    Served,
    assert_complete_outputs,
    cli_app,
    launch,
    stop_daemon,
    write_config,
)
from streamer.queue.jobs import JobQueue, JobRecord, JobState, KeyNames
from streamer.queue.redis_server import Role, resolve_redis
from videos import write_first_mask, write_moving_shape_video

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("clips")
    masks = write_moving_shape_video(directory / "clip.mp4", frames=96, objects=2)
    return {"video": directory / "clip.mp4", "mask": write_first_mask(directory / "first.png", masks[0])}


@pytest.fixture
def data_dirs() -> Iterator[list[Path]]:
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="vosd-f-")))  # short: socket paths are limited
        return made[-1]

    yield [make(), make()]


def _poll(queue: JobQueue, job_id: str) -> JobRecord | None:
    """The job's record, or None while Redis does not answer (the test reads through the outage too)."""
    try:
        return queue.get(job_id)
    except (redis_lib.ConnectionError, redis_lib.TimeoutError):
        return None


def _wait_final(daemons: list[Served], queue: JobQueue, job_ids: list[str]) -> dict[str, JobRecord]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    final: dict[str, JobRecord] = {}
    while len(final) < len(job_ids):
        for job_id in job_ids:
            record = _poll(queue, job_id)
            if record is not None and record.state.final:
                final[job_id] = record
        for daemon in daemons:
            assert daemon.process.poll() is None, f"daemon exited: {daemon.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"jobs not final: {set(job_ids) - set(final)}"
        time.sleep(0.1)
    return final


def _served(data_dir: Path, url: str = "", **redis: object) -> Served:
    config = write_config(data_dir, url=url, **redis)
    log = data_dir / "daemon.log"
    process = launch(config, data_dir, log)
    socket_path = data_dir / "redis" / "redis.sock"
    client_url = url or f"unix://{socket_path}"
    deadline = time.monotonic() + 60
    while not url and not socket_path.exists():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    client = redis_lib.Redis.from_url(client_url, decode_responses=True, socket_timeout=2.0)
    return Served(process, config, data_dir, JobQueue(client), log)


def _wait_ready(queue: JobQueue, daemons: int) -> None:
    """Until `daemons` daemons publish room for jobs (their worker and writer are up)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        loads = queue.redis.hgetall(queue.keys.daemon_loads)
        if sum(1 for value in loads.values() if int(value.split()[1]) > 0) >= daemons:
            return
        assert time.monotonic() < deadline, f"daemons not ready: {loads}"
        time.sleep(0.1)


def test_daemon_rides_out_its_embedded_redis_being_killed(data_dirs: list[Path], clip) -> None:
    daemon = _served(data_dirs[0])
    try:
        job = daemon.submit(str(clip["video"]), "--mask", str(clip["mask"]))
        daemon.wait_progress(job, 10)
        time.sleep(1.2)  # the append-only file is fsynced every second
        server_pid = int((data_dirs[0] / "redis" / "redis.pid").read_text())
        os.kill(server_pid, signal.SIGKILL)

        record = _wait_final([daemon], daemon.queue, [job])[job]
        assert record.state is JobState.DONE, record.error
        assert (record.frames_done, record.runs, record.attempts) == (96, 1, 1)
        assert_complete_outputs(record, 96)
        log = daemon.log.read_text()
        assert "redis unreachable" in log and "redis reachable again" in log
        assert int((data_dirs[0] / "redis" / "redis.pid").read_text()) != server_pid
        status = daemon.queue.redis.hgetall(next(daemon.queue.redis.scan_iter(match="vosd:daemon:*")))
        assert status["redis_outages"] == "1" and float(status["redis_last_outage_s"]) > 0
        listed = CliRunner().invoke(cli_app(), ["jobs", "--config", str(daemon.config)])
        assert listed.exit_code == 0 and "redis away 1x" in listed.output, listed.output
    finally:
        stop_daemon(daemon)


def test_a_command_holding_a_temporary_redis_does_not_take_the_starting_daemon_down(
    data_dirs: list[Path], clip
) -> None:
    """`vosd serve & vosd submit ...`: the command found no Redis and started a temporary one; the daemon
    starting meanwhile used to adopt it and die with it when the command ended."""
    data_dir = data_dirs[0]
    command = resolve_redis("", data_dir, role=Role.COMMAND)
    assert command.server is not None
    client = redis_lib.Redis.from_url(command.url, decode_responses=True)
    job = JobQueue(client).submit(str(clip["video"]), mask_path=str(clip["mask"])).id
    client.close()
    daemon = _served(data_dir)
    try:
        deadline = time.monotonic() + 30
        while "release the embedded redis" not in daemon.log.read_text():
            assert daemon.process.poll() is None and time.monotonic() < deadline, daemon.log.read_text()
            time.sleep(0.1)
        command.close()  # the command ends, and its server with it
        record = _wait_final([daemon], daemon.queue, [job])[job]
        assert record.state is JobState.DONE, record.error
        assert_complete_outputs(record, 96)
        assert "ConnectionError" not in daemon.log.read_text()
    finally:
        stop_daemon(daemon)


def _children_of(queue: JobQueue, consumer: str) -> list[int]:
    fields = queue.redis.hgetall(queue.keys.daemon(consumer))
    return [int(pid) for name, pid in fields.items() if name == "writer" or name.startswith("worker-")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"


def test_two_daemons_spread_jobs_and_the_survivor_takes_over_every_job_of_a_killed_one(
    redis_url: str, data_dirs: list[Path], clip
) -> None:
    lease = {"visibility_timeout_s": 3.0, "lease_renewal_s": 0.5}
    first, second = (_served(directory, redis_url, **lease) for directory in data_dirs)
    try:
        queue = JobQueue(redis_lib.Redis.from_url(redis_url, decode_responses=True), keys=KeyNames("vosd"))
        _wait_ready(queue, 2)
        jobs = [first.submit(str(clip["video"]), "--mask", str(clip["mask"])) for _ in range(4)]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not all((r := queue.get(job)).state is JobState.RUNNING or r.state.final for job in jobs):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        holders = [queue.get(job).worker for job in jobs]
        assert sorted(holders.count(name) for name in set(holders)) == [2, 2], holders  # was 3 and 1

        victim_name = holders[0]
        victim_pid = queue.redis.hget(queue.keys.daemon(victim_name), "pid")
        victim = next(d for d in (first, second) if str(d.process.pid) == victim_pid)
        survivor = second if victim is first else first
        children = _children_of(queue, victim_name)
        victim.process.kill()
        victim.process.wait()

        final = _wait_final([survivor], queue, jobs)
        for record in final.values():
            assert record.state is JobState.DONE, record.error
            assert record.attempts <= 2, record
            assert_complete_outputs(record, 96)
        assert queue.dead_letters() == []
        taken_over = [job for job, holder in zip(jobs, holders, strict=True) if holder == victim_name]
        assert all(final[job].attempts == 2 for job in taken_over)
        # The killed daemon's children went with it, and took their temporary outputs along.
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, "children of the killed daemon still run"
            time.sleep(0.1)
        leftovers = list((victim.data_dir / "outputs").glob("**/*.part"))
        assert leftovers == [] and not any((victim.data_dir / "outputs").glob("*/"))
    finally:
        for daemon in (first, second):
            if daemon.process.poll() is None:
                stop_daemon(daemon)
