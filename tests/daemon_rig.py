"""A real `vosd serve` process for end-to-end tests: its config, launch, clean stop, and output checks.

Shared by the daemon, fault and resume tests; each starts its own daemon with `write_config` + `launch`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import redis as redis_lib
import typer
import yaml
from typer.testing import CliRunner

from streamer.cli.daemon_commands import (
    cancel_command,
    jobs_command,
    status_command,
    stop_command,
    submit_command,
    watch_command,
)
from streamer.queue.jobs import JobQueue, JobRecord, JobState
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import write_random_checkpoint

JOB_TIMEOUT_S = 120.0
"""Upper bound for a job to finish on the shared two-core machine; reached only when something is broken."""

GIVE_UP_S = 8.0
"""The test daemon's live sources fail after this many seconds without a frame."""


@dataclass
class Served:
    """The running daemon and what the tests need to talk to it."""

    process: subprocess.Popen
    config: Path
    data_dir: Path
    queue: JobQueue
    log: Path

    def submit(self, *args: str) -> str:
        result = CliRunner().invoke(cli_app(), ["submit", *args, "--config", str(self.config)])
        assert result.exit_code == 0, result.output
        return result.output.strip().splitlines()[-1]

    def wait(
        self, job_id: str, *, until: JobState | None = None, timeout_s: float = JOB_TIMEOUT_S
    ) -> JobRecord:
        """Poll the status hash until the job is final (or in `until`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.queue.get(job_id)
            if record.state.final or record.state is until:
                return record
            assert self.process.poll() is None, f"daemon exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"job {job_id} still {record.state.value}: {record}"
            time.sleep(0.05)

    def wait_progress(self, job_id: str, frames: int) -> JobRecord:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            record = self.queue.get(job_id)
            if record.frames_done >= frames or record.state.final:
                return record
            assert time.monotonic() < deadline, f"job {job_id} made no progress: {record}"
            time.sleep(0.02)

    def pids(self) -> dict[str, int]:
        """The daemon's published process table (worker-0, writer, pid)."""
        keys = list(self.queue.redis.scan_iter(match=self.queue.keys.daemon("*")))
        assert len(keys) == 1, keys
        return {
            name: int(pid)
            for name, pid in self.queue.redis.hgetall(keys[0]).items()
            if name in ("pid", "writer") or name.startswith("worker-")
        }

    def wait_for_new_pid(self, name: str, old: int) -> int:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (pid := self.pids().get(name)) in (None, old):
            assert time.monotonic() < deadline, f"{name} was not restarted"
            time.sleep(0.05)
        return pid


def cli_app() -> typer.Typer:
    app = typer.Typer()
    for name, command in (
        ("submit", submit_command),
        ("status", status_command),
        ("watch", watch_command),
        ("cancel", cancel_command),
        ("stop", stop_command),
        ("jobs", jobs_command),
    ):
        app.command(name)(command)
    return app


def write_config(data_dir: Path, **redis: object) -> Path:
    """A daemon config for `data_dir` with a small random network; `redis` overrides the redis section."""
    checkpoint = write_random_checkpoint(data_dir / "small.pth", NetworkSpec.small(), seed=3)
    config = data_dir / "vosd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data_dir),
                "redis": {
                    "max_attempts": 3,
                    "visibility_timeout_s": 15.0,
                    "lease_renewal_s": 0.5,
                    **redis,
                },
                "workers": {
                    "devices": ["cpu"],
                    "jobs_per_worker": 3,
                    "size": 64,
                    "max_objects": 4,
                    "model_path": str(checkpoint),
                },
                "sources": {
                    "stall_timeout_s": 2.0,
                    "reconnect_initial_delay_s": 0.2,
                    "reconnect_max_delay_s": 1.0,
                    "reconnect_give_up_s": GIVE_UP_S,
                },
                "writer": {"crf": 30},
            }
        )
    )
    return config


def launch(config: Path, data_dir: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "streamer.cli.app", "serve", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},  # one torch thread: the CI machine has two cores
        )


@contextmanager
def serving(config: Path, data_dir: Path) -> Iterator[Served]:
    """`vosd serve` on `config` with its embedded Redis, once that Redis is up; stopped cleanly (exit 0) and
    `data_dir` removed afterwards."""
    log = data_dir / "daemon.log"
    process = launch(config, data_dir, log)
    socket_path = data_dir / "redis" / "redis.sock"
    deadline = time.monotonic() + 60
    while not socket_path.exists():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    client = redis_lib.Redis(unix_socket_path=str(socket_path), decode_responses=True)
    daemon = Served(process, config, data_dir, JobQueue(client), log)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)
        client.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def stop_daemon(daemon: Served) -> None:
    """SIGTERM, which must end in a clean exit 0; kill only if it did not."""
    try:
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0, daemon.log.read_text()[-3000:]
        assert "daemon stopped" in daemon.log.read_text()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def frames_of(path: Path) -> tuple[int, tuple[int, int], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, (stream.codec_context.width, stream.codec_context.height), float(stream.average_rate)


def rle_frames(path: Path) -> list[int]:
    return [json.loads(line)["frame"] for line in path.read_text().splitlines()]


def assert_complete_outputs(record: JobRecord, frames: int) -> None:
    """Every frame exactly once in every output, under the final names, nothing temporary left."""
    assert set(record.outputs) == {"overlay", "masks", "rle"}
    overlay, masks, rle = (Path(record.outputs[k]) for k in ("overlay", "masks", "rle"))
    assert frames_of(overlay) == (frames, (160, 120), 24.0)
    assert sorted(p.name for p in masks.iterdir()) == [f"{i:05d}.png" for i in range(frames)]
    assert rle_frames(rle) == list(range(frames))
    assert not [p for p in overlay.parent.iterdir() if p.name.endswith(".part")]
