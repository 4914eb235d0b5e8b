"""A Redis that needs a password (`--requirepass`), as a shared external server would: a daemon and its API
with the password in ``redis://:PASS@host:port/0`` complete a job, the password stays out of the log, the
``unix://:PASS@/path?db=0`` form works too, and a wrong password stops `vosd serve` at startup with one
clear line instead of waiting forever or printing a traceback."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamer.queue.redis_server import EmbeddedRedis
from videos import free_port

from .conftest import running_daemon, write_config

pytestmark = pytest.mark.timeout(300)

PASSWORD = "pass-of-the-shared-redis"


@pytest.fixture
def locked_redis() -> Iterator[tuple[EmbeddedRedis, int]]:
    """A real redis-server with a password, on a Unix socket and on a TCP port of 127.0.0.1."""
    directory = Path(tempfile.mkdtemp(prefix="vosd-pw-"))
    port = free_port()
    server = EmbeddedRedis(
        directory,
        persistent=False,
        extra_args=["--requirepass", PASSWORD, "--port", str(port), "--bind", "127.0.0.1"],
    )
    assert server.acquire(wait_s=0.0)
    server.start()
    yield server, port
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_a_daemon_with_the_password_completes_a_job(locked_redis: tuple[EmbeddedRedis, int]) -> None:
    server, port = locked_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    unix = redis.Redis.from_url(f"unix://:{PASSWORD}@{server.socket_path}?db=0")
    assert unix.ping()
    unix.close()
    with running_daemon(f"redis://:{PASSWORD}@127.0.0.1:{port}/0") as served, served.client() as client:
        mask = base64.b64encode((served.media / "first.png").read_bytes()).decode()
        job = client.post("/jobs", json={"source": str(served.media / "shapes.mp4"), "mask_png": mask}).json()
        done = served.wait(client, job["id"])
        assert (done["state"], done["frames_done"]) == ("done", 12), done
        assert PASSWORD not in served.log.read_text()


def test_a_wrong_password_stops_serve_with_a_clear_message(
    locked_redis: tuple[EmbeddedRedis, int], ipc_dir: Path
) -> None:
    server, _ = locked_redis
    url = f"unix://:not-the-password@{server.socket_path}?db=0"
    config = write_config(ipc_dir, ipc_dir, url, free_port())
    command = [sys.executable, "-m", "streamer.cli.app", "serve", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "not-the-password" not in result.stderr
    assert f"error: Redis at unix://:***@{server.socket_path}?db=0 refused the credentials" in result.stderr
