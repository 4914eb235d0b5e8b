"""Soak: a stream of batch jobs into two daemons sharing one Redis, with faults at random times.

Two `vosd serve` processes (a small random network, synthetic H.264 clips) share one Redis server that this
script runs as if it were external. For `--minutes`, it submits a job every `--submit-every` seconds
(while fewer than `--max-queued` wait) and, at random intervals, does one of:

* kill -9 a worker of a random daemon (the daemon restarts it and re-runs or resumes its jobs);
* kill -9 a whole daemon (its children go with it; it is started again after a few seconds, as systemd
  would, and the other daemon re-takes its jobs after the visibility timeout);
* kill -9 Redis, and start it again from its append-only file a few seconds later.

Then it waits for every job to end and checks each one's outputs: the masks folder and the RLE file must
hold each frame exactly once (0..N-1) and the overlay N frames. It prints jobs submitted / done / failed /
lost (not final) and frames duplicated or missing; the target is 0 lost, 0 failed, 0 duplicated.

    python benchmarks/soak.py [--minutes 5] [--submit-every 4] [--fault-every 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The repository root too: without a regular streamer/ on sys.path, tests/streamer/ (a namespace
# directory of the test tree) would be imported as `streamer` in spawned children.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(ROOT / "tests"))
from streamer.queue.jobs import JobQueue, JobState  # noqa: E402
from streamer.queue.redis_server import EmbeddedRedis  # noqa: E402
from videos import write_first_mask, write_moving_shape_video  # noqa: E402
from workers.xmem.network import NetworkSpec  # noqa: E402
from workers.xmem.random_init import write_random_checkpoint  # noqa: E402

FRAMES = 72


class Daemon:
    """One `vosd serve` process on its own data_dir; restartable."""

    def __init__(self, name: str, root: Path, redis_url: str, checkpoint: Path) -> None:
        self.name = name
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"vosd-soak-{name}-", dir=root))
        self.config = self.data_dir / "vosd.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "data_dir": str(self.data_dir),
                    "redis": {"url": redis_url, "visibility_timeout_s": 6.0, "lease_renewal_s": 1.0},
                    "workers": {"jobs_per_worker": 2, "size": 96, "model_path": str(checkpoint)},
                    "writer": {"crf": 30},
                }
            )
        )
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.data_dir / f"daemon-{self.starts}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli.app", "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            cwd=ROOT,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        if not self.alive():
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def children(client: redis.Redis, daemon: Daemon) -> dict[str, int]:
    """Worker and writer pids the daemon published in its status hash."""
    if daemon.process is None:
        return {}
    for key in client.scan_iter(match="vosd:daemon:*"):
        fields = client.hgetall(key)
        if fields.get("pid") == str(daemon.process.pid):
            return {k: int(v) for k, v in fields.items() if k.startswith("worker-") or k == "writer"}
    return {}


def check_outputs(record) -> tuple[int, int]:
    """(duplicated, missing) frames over the masks folder, the RLE lines and the overlay of a done job."""
    masks = sorted(p.name for p in Path(record.outputs["masks"]).iterdir())
    rle = [json.loads(line)["frame"] for line in Path(record.outputs["rle"]).read_text().splitlines()]
    with av.open(record.outputs["overlay"]) as container:
        overlay = sum(1 for _ in container.decode(video=0))
    expected = [f"{i:05d}.png" for i in range(FRAMES)]
    duplicated = (len(rle) - len(set(rle))) + max(0, overlay - FRAMES)
    missing = len(set(expected) - set(masks)) + len(set(range(FRAMES)) - set(rle)) + max(0, FRAMES - overlay)
    return duplicated, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--submit-every", type=float, default=4.0)
    parser.add_argument("--fault-every", type=float, default=20.0, help="mean seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-queued", type=int, default=2, help="submit only while fewer jobs than this wait in the queue"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)

    root = Path(tempfile.mkdtemp(prefix="vosd-soak-"))
    clip = root / "clip.mp4"
    mask = write_first_mask(root / "first.png", write_moving_shape_video(clip, frames=FRAMES, objects=2)[0])
    checkpoint = write_random_checkpoint(root / "small.pth", NetworkSpec.small(), seed=3)
    server = EmbeddedRedis(root / "redis")
    assert server.acquire(wait_s=0.0)
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=2.0)
    queue = JobQueue(client)
    daemons = [Daemon(name, root, server.url, checkpoint) for name in ("a", "b")]
    for daemon in daemons:
        daemon.start()

    faults: dict[str, int] = {"worker": 0, "daemon": 0, "redis": 0}
    submitted: list[str] = []
    restarts: list[tuple[float, object]] = []
    started = time.monotonic()
    next_submit, next_fault = started + 10.0, started + 10.0 + rng.expovariate(1 / args.fault_every)
    while time.monotonic() - started < args.minutes * 60:
        now = time.monotonic()
        for when, action in [r for r in restarts if r[0] <= now]:
            restarts.remove((when, action))
            action()  # type: ignore[operator]
        if now >= next_submit:
            try:
                recent = submitted[-args.max_queued * 4 :]
                backlog = sum(1 for job in recent if queue.get(job).state is JobState.QUEUED)
                if backlog < args.max_queued:
                    submitted.append(queue.submit(str(clip), mask_path=str(mask)).id)
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # Redis is down: a client would retry; so do we, next turn
            else:
                next_submit = now + args.submit_every
        if now >= next_fault:
            next_fault = now + rng.expovariate(1 / args.fault_every)
            kind = rng.choice(list(faults))
            if kind == "worker":
                daemon = rng.choice([d for d in daemons if d.alive()] or daemons)
                try:
                    pids = children(client, daemon)
                except (redis.ConnectionError, redis.TimeoutError):
                    pids = {}
                pid = pids.get("worker-0")
                if pid is None:
                    continue
                os.kill(pid, signal.SIGKILL)
            elif kind == "daemon":
                daemon = rng.choice([d for d in daemons if d.alive()] or daemons)
                if not daemon.alive():
                    continue
                daemon.process.kill()  # type: ignore[union-attr]
                restarts.append((now + rng.uniform(2, 8), daemon.start))
            else:
                if not server.is_running():
                    continue
                os.kill(int(server.pid_path.read_text()), signal.SIGKILL)
                restarts.append((now + rng.uniform(1, 6), server.ensure_running))
            faults[kind] += 1
            print(f"{now - started:6.1f} s: killed a {kind}", flush=True)
        time.sleep(0.1)
    for _, action in restarts:
        action()  # type: ignore[operator]

    print("waiting for every job to end ...", flush=True)
    deadline = time.monotonic() + 600
    records = {}
    while time.monotonic() < deadline:
        try:
            records = {job: queue.get(job) for job in submitted}
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(1)
            continue
        if all(r.state.final for r in records.values()):
            break
        time.sleep(1)
    done = [r for r in records.values() if r.state is JobState.DONE]
    failed = [r for r in records.values() if r.state is JobState.FAILED]
    lost = [r for r in records.values() if not r.state.final]
    duplicated = missing = 0
    for record in done:
        d, m = check_outputs(record)
        duplicated, missing = duplicated + d, missing + m
    dead_letters = len(queue.dead_letters())
    codes = [daemon.stop() for daemon in daemons]
    server.stop()
    summary = {
        "minutes": args.minutes,
        "faults": faults,
        "jobs_submitted": len(submitted),
        "done": len(done),
        "failed": len(failed),
        "lost": len(lost),
        "frames_duplicated": duplicated,
        "frames_missing": missing,
        "runs_per_job_max": max((r.runs for r in records.values()), default=0),
        "attempts_per_job_max": max((r.attempts for r in records.values()), default=0),
        "dead_letters": dead_letters,
        "daemon_exit_codes": codes,
        "failures": [r.error for r in failed],
    }
    print(json.dumps(summary, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
