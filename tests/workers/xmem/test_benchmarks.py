"""The engine benchmarks run end to end in their CPU smoke settings (the GPU set is run on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from repo_paths import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_smoke_on_cpu(tmp_path: Path) -> None:
    output = tmp_path / "gpu.json"
    results = benchmark("gpu").main(["--device", "cpu", "--smoke", "--variants", "reference,fast,fast_bf16",
                                     "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(results))
    single = results["single_stream"]
    assert set(single) == {"reference", "fast", "fast_bf16"}
    assert single["reference"]["max_prob_diff"] == 0 and single["fast"]["max_prob_diff"] < 1e-4
    concurrent = results["concurrent"]
    assert concurrent["streams"] == 2 and concurrent["frames_per_stream"] == 2
    assert concurrent["p99_latency_ms"] >= concurrent["p50_latency_ms"] > 0
