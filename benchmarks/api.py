"""HTTP API latency under a burst of status polls while a job runs.

Starts a real `vosd serve` (its embedded Redis, a small random network on the CPU unless --checkpoint,
the API on 127.0.0.1 with a token), submits one long job through the API, and once it runs fires
--requests GET /jobs/{id} from --clients threads with keep-alive connections. Prints p50/p90/p99/max in
milliseconds, requests per second, and whether the job was still running for the whole burst.

    python benchmarks/api.py [--requests 500] [--clients 1 8] [--frames 600] [--checkpoint XMem.pth]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import yaml

# The repository root too: without a regular streamer/ on sys.path, tests/streamer/ (a namespace
# directory of the test tree) would be imported as `streamer` in spawned children.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from videos import free_port, write_first_mask, write_moving_shape_video
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import write_random_checkpoint

TOKEN = "benchmark-token"


def start_daemon(directory: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    checkpoint = args.checkpoint or str(write_random_checkpoint(directory / "small.pth", NetworkSpec.small()))
    port = free_port()
    config = directory / "vosd.yaml"
    config.write_text(
        yaml.safe_dump({
            "data_dir": str(directory),
            "workers": {"devices": [args.device], "size": args.size, "model_path": checkpoint},
            "http": {"listen": f"127.0.0.1:{port}", "token": TOKEN, "source_roots": [str(directory)]},
        })
    )
    log = (directory / "daemon.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli.app", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("daemon did not become ready: " + (directory / "daemon.log").read_text()[-2000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def burst(url: str, job_id: str, requests: int, clients: int) -> list[float]:
    """Seconds per GET /jobs/{id}, `requests` in all from `clients` threads, one keep-alive client each."""
    share = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]

    def run(count: int) -> list[float]:
        times = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for _ in range(count):
                start = time.perf_counter()
                response = client.get(f"/jobs/{job_id}")
                times.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
        return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for part in pool.map(run, share) for t in part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--frames", type=int, default=600, help="Length of the clip the running job segments."
    )
    parser.add_argument("--checkpoint", default="", help="XMem checkpoint; default: a small random network.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="vosd-b-"))
    masks = write_moving_shape_video(directory / "clip.mp4", frames=args.frames)
    write_first_mask(directory / "first.png", masks[0])
    process, url = start_daemon(directory, args)
    results = []
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            job = client.post(
                "/jobs",
                files={"mask": ("first.png", (directory / "first.png").read_bytes())},
                data={"source": str(directory / "clip.mp4")},
            ).json()
            while client.get(f"/jobs/{job['id']}").json()["frames_done"] < 2:
                time.sleep(0.05)
            for clients in args.clients:
                start = time.perf_counter()
                times = np.array(burst(url, job["id"], args.requests, clients)) * 1000
                elapsed = time.perf_counter() - start
                record = client.get(f"/jobs/{job['id']}").json()
                results.append({
                    "clients": clients,
                    "requests": len(times),
                    "p50_ms": round(float(np.percentile(times, 50)), 2),
                    "p90_ms": round(float(np.percentile(times, 90)), 2),
                    "p99_ms": round(float(np.percentile(times, 99)), 2),
                    "max_ms": round(float(times.max()), 2),
                    "requests_per_s": round(len(times) / elapsed, 1),
                    "job_running_after": record["state"] == "running",
                    "job_frames_done": record["frames_done"],
                })
                print(json.dumps(results[-1]), flush=True)
            client.delete(f"/jobs/{job['id']}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
