"""/metrics parses with Prometheus' own parser and reports the fleet read from Redis; the probes answer;
`vosd serve` refuses to listen beyond loopback without a token, or on a port already taken."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import pytest
import redis as redis_lib
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from streamer.cli.app import app
from streamer.queue.jobs import LATENCY_BUCKETS_S, JobQueue, KeyNames
from videos import LiveServer, free_port

from .conftest import Api

pytestmark = pytest.mark.timeout(300)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_report_jobs_queue_and_daemons(api: Api) -> None:
    with api.client() as client:
        mask = base64.b64encode((api.media / "first.png").read_bytes()).decode()
        body = {"source": str(api.media / "shapes.mp4"), "mask_png": mask, "options": {"max_frames": 3}}
        job = client.post("/jobs", json=body)
        assert job.status_code == 201, job.text
        assert api.wait(client, job.json()["id"])["state"] == "done"
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = _samples(response.text)
        assert samples[("vosd_jobs", (("state", "done"),))] >= 1
        assert ("vosd_jobs", (("state", "queued"),)) in samples
        assert samples[("vosd_queue_depth", ())] >= 0
        assert ("vosd_oldest_queued_job_age_seconds", ()) in samples
        assert samples[("vosd_frames_processed_total", ())] >= 3
        assert ("vosd_frames_dropped_total", ()) in samples
        assert samples[("vosd_daemons", ())] == 1
        daemon = next(dict(labels)["daemon"] for name, labels in samples if name == "vosd_daemon_capacity")
        assert samples[("vosd_daemon_capacity", (("daemon", daemon),))] == 3
        assert samples[("vosd_daemon_redis_outages_total", (("daemon", daemon),))] == 0
        restarts = {
            dict(labels)["process"] for name, labels in samples if name == "vosd_daemon_child_restarts_total"
        }
        assert restarts == {"writer", "worker-0"}
        assert client.get("/readyz").json()["daemons"] == [daemon]
        assert client.get("/openapi.json").json()["paths"].keys() >= {"/jobs", "/metrics", "/readyz"}


def _config(tmp_path: Path, **http: object) -> str:
    path = tmp_path / "vosd.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "http": http}))
    return str(path)


def test_serve_refuses_to_listen_beyond_loopback_without_a_token_or_on_a_taken_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOSD_HTTP__TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--config", _config(tmp_path, listen="0.0.0.0:8080")])
    assert result.exit_code == 2
    assert "requires a token: set VOSD_HTTP__TOKEN" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--config", _config(tmp_path, listen=f"127.0.0.1:{port}")])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_live_jobs_feed_a_latency_histogram_and_workers_their_model_fps(api: Api, redis_server) -> None:
    """A live stream through the daemon: every written frame's latency lands in its job's histogram
    buckets (cumulative, +Inf = count), and the worker's model FPS comes with its heartbeats."""
    client_redis = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)
    queue = JobQueue(client_redis, keys=KeyNames("vosd-api"))
    with LiveServer("tcp", free_port(), fps=24, lifetime=60) as server, api.client() as client:
        time.sleep(0.5)
        job = queue.submit(server.url, mask_path=str(api.media / "first.png"), live=True)
        deadline = time.monotonic() + 120
        while True:  # each figure comes with its own report (writer progress, heartbeat, daemon hash)
            samples = _samples(client.get("/metrics").text)
            count = samples.get(("vosd_frame_latency_seconds_count", (("job", job.id),)), 0.0)
            fps = [v for (name, _), v in samples.items() if name == "vosd_worker_model_fps"]
            rss = {
                dict(labels)["process"]: value
                for (name, labels), value in samples.items()
                if name == "vosd_process_rss_bytes"
            }
            if count >= 5 and fps and max(fps) > 0 and set(rss) == {"worker-0", "writer"}:
                break
            assert time.monotonic() < deadline, f"metrics incomplete for {job.id}: {count=} {fps=} {rss=}"
            time.sleep(0.5)
        buckets = [
            value
            for (name, labels), value in samples.items()
            if name == "vosd_frame_latency_seconds_bucket" and dict(labels)["job"] == job.id
        ]
        assert len(buckets) == len(LATENCY_BUCKETS_S) + 1
        assert buckets == sorted(buckets) and max(buckets) == count  # cumulative, +Inf holds them all
        assert samples[("vosd_frame_latency_seconds_sum", (("job", job.id),))] > 0
        assert min(rss.values()) > 10_000_000
        assert client.delete(f"/jobs/{job.id}").status_code in (200, 202)
        api.wait(client, job.id)
