"""One real `vosd serve` for the API tests: its HTTP server (uvicorn on 127.0.0.1 with a token), the
session's real Redis (tests/conftest.py) under a key prefix of its own, spawned worker and writer
processes with a small random network, and clips under the one allowed source root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from streamer.queue.redis_server import EmbeddedRedis
from videos import free_port, write_first_mask, write_moving_shape_video
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import write_random_checkpoint

TOKEN = "api-test-token"
JOB_TIMEOUT_S = 120.0
"""Upper bound for a small job on the shared two-core machine; reached only when something is broken."""
MAX_UPLOAD_MB = 1.0
MAX_MASK_MB = 0.05


@dataclass
class Api:
    """The running daemon and its API."""

    url: str
    process: subprocess.Popen
    data_dir: Path
    media: Path
    log: Path

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def wait(self, client: httpx.Client, job_id: str, *, frames: int | None = None) -> dict:
        """Poll GET /jobs/{id} until the job is final (or has segmented `frames`)."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            if job["state"] in ("done", "failed", "cancelled"):
                return job
            if frames is not None and job["frames_done"] >= frames:
                return job
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
            time.sleep(0.1)


def write_config(data_dir: Path, media: Path, redis_url: str, port: int) -> Path:
    checkpoint = write_random_checkpoint(data_dir / "small.pth", NetworkSpec.small(), seed=3)
    config = data_dir / "vosd.yaml"
    settings = {
        "data_dir": str(data_dir),
        "redis": {"url": redis_url, "key_prefix": "vosd-api", "lease_renewal_s": 0.5},
        "workers": {
            "devices": ["cpu"],
            "jobs_per_worker": 3,
            "size": 64,
            "max_objects": 4,
            "model_path": str(checkpoint),
        },
        "writer": {"crf": 30},
        "http": {
            "listen": f"127.0.0.1:{port}",
            "token": TOKEN,
            "max_upload_mb": MAX_UPLOAD_MB,
            "max_mask_mb": MAX_MASK_MB,
            "source_roots": [str(media)],
            "source_schemes": ["rtsp"],
        },
    }
    config.write_text(yaml.safe_dump(settings))
    return config


@pytest.fixture(scope="package")
def api(redis_server: EmbeddedRedis) -> Iterator[Api]:
    with running_daemon(redis_server.url) as served:
        yield served


@contextmanager
def running_daemon(redis_url: str) -> Iterator[Api]:
    """`vosd serve` on `redis_url` with its API, until the block ends (then SIGTERM, exit 0)."""
    data_dir = Path(tempfile.mkdtemp(prefix="vosd-a-"))  # short: ipc socket paths are limited
    media = data_dir / "media"
    media.mkdir()
    masks = write_moving_shape_video(media / "shapes.mp4", frames=12, objects=2)
    write_first_mask(media / "first.png", masks[0])
    long_masks = write_moving_shape_video(media / "long.mp4", frames=240, objects=1)
    write_first_mask(media / "long-first.png", long_masks[0])
    port = free_port()
    config = write_config(data_dir, media, redis_url, port)
    log = data_dir / "daemon.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli.app", "serve", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},  # one torch thread: the CI machine has two cores
        )
    served = Api(f"http://127.0.0.1:{port}", process, data_dir, media, log)
    try:
        _wait_ready(served)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            shutil.rmtree(data_dir, ignore_errors=True)


def _wait_ready(served: Api) -> None:
    deadline = time.monotonic() + 90
    with served.client(None) as client:
        while True:
            assert served.process.poll() is None, served.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "daemon not ready: " + served.log.read_text()[-3000:]
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
