"""benchmarks/pipeline.py runs end to end on a tiny clip: its processes start (spawned children import the
real packages), its messages are today's, and it prints the ratio report. It had silently rotted once when
messages were renamed; only its numbers belong to the benchmark, not to this test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from repo_paths import REPO

pytestmark = pytest.mark.timeout(300)


def test_pipeline_benchmark_prints_its_report() -> None:
    command = [
        sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--small", "--size", "64", "--threads", "1",
        "--resolution", "96x64", "--frames", "6", "--long-frames", "0", "--live-seconds", "0",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["resolution"] == "96x64" and report["size"] == 64
    assert report["model_fps"] > 0 and report["segment_fps"] > 0 and report["pipeline_fps"] > 0
    assert set(report["pipeline_cpu_s"]) == {"decoder", "worker", "writer"}
