"""``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz``.

Every figure is read from Redis at scrape time (job status hashes, daemon hashes, the daemon-loads hash),
never kept in this process, so any API of a fleet of daemons that share one Redis reports the same fleet.
Per-job series exist only for running jobs, so their number stays bounded by the fleet's capacity.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer.api.app import ApiContext, Ctx, error_response
from streamer.api.auth import require_token
from streamer.queue.jobs import LATENCY_BUCKETS_S, JobQueue, JobState

router = APIRouter(tags=["operations"])

JOB_FIELDS = (
    "state", "frames_done", "frames_dropped", "fps", "created_at", "latency_p50_s", "latency_p95_s",
    "latency_counts", "latency_sum_s",
)  # fmt: skip


def latency_buckets(counts: str | None) -> list[tuple[str, float]] | None:
    """Cumulative Prometheus buckets from a job's per-bucket `latency_counts` (JSON), None if unusable."""
    try:
        values = json.loads(counts) if counts else None
    except json.JSONDecodeError:
        return None
    if not isinstance(values, list) or len(values) != len(LATENCY_BUCKETS_S) + 1:
        return None
    bounds = [*(str(bound) for bound in LATENCY_BUCKETS_S), "+Inf"]
    cumulative = list(itertools.accumulate(float(value) for value in values))
    return list(zip(bounds, cumulative, strict=True))


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else 0.0
    except ValueError:
        return 0.0


class FleetCollector(Collector):
    """Reads the jobs and daemons in Redis on each scrape."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        queue = self.ctx.queue()
        yield from self._jobs(queue)
        yield from self._daemons(queue)

    def _jobs(self, queue: JobQueue) -> Iterator[Metric]:
        ids = queue.redis.zrange(queue.keys.index, 0, -1)
        pipe = queue.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(queue.keys.job(job_id), *JOB_FIELDS)
        now = time.time()
        states: Counter[str] = Counter()
        oldest_queued = None
        frames = CounterMetricFamily("vosd_frames_processed", "Frames segmented, all jobs.")
        dropped = CounterMetricFamily("vosd_frames_dropped", "Frames dropped by the live policy, all jobs.")
        job_frames = CounterMetricFamily(
            "vosd_job_frames_processed", "Frames segmented, running jobs.", labels=["job"]
        )
        job_dropped = CounterMetricFamily(
            "vosd_job_frames_dropped", "Frames dropped, running jobs.", labels=["job"]
        )
        job_fps = GaugeMetricFamily("vosd_job_fps", "Recent frames per second, running jobs.", labels=["job"])
        latency = GaugeMetricFamily(
            "vosd_job_latency_seconds",
            "Live jobs: arrival to mask written, recent frames.",
            labels=["job", "quantile"],
        )
        histogram = HistogramMetricFamily(
            "vosd_frame_latency_seconds",
            "Live jobs: a frame's arrival at the decoder to its mask written, every frame, running jobs.",
            labels=["job"],
        )
        total_frames = total_dropped = 0.0
        for job_id, values in zip(ids, pipe.execute(), strict=True):
            state, done, drops, fps, created, p50, p95, counts, latency_sum = values
            if state is None:
                continue
            states[state] += 1
            total_frames += _number(done)
            total_dropped += _number(drops)
            if state == JobState.QUEUED.value:
                age = now - _number(created)
                oldest_queued = age if oldest_queued is None else max(oldest_queued, age)
            elif state == JobState.RUNNING.value:
                job_frames.add_metric([job_id], _number(done))
                job_dropped.add_metric([job_id], _number(drops))
                job_fps.add_metric([job_id], _number(fps))
                for quantile, value in (("0.5", p50), ("0.95", p95)):
                    if value is not None:
                        latency.add_metric([job_id, quantile], _number(value))
                buckets = latency_buckets(counts)
                if buckets is not None:
                    histogram.add_metric([job_id], buckets, _number(latency_sum))
        jobs = GaugeMetricFamily("vosd_jobs", "Jobs per state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], states[state.value])
        frames.add_metric([], total_frames)
        dropped.add_metric([], total_dropped)
        yield jobs
        yield GaugeMetricFamily(
            "vosd_queue_depth", "Jobs waiting to be claimed.", value=states[JobState.QUEUED.value]
        )
        yield GaugeMetricFamily(
            "vosd_oldest_queued_job_age_seconds",
            "Age of the oldest queued job; 0 when none waits.",
            value=oldest_queued or 0.0,
        )
        yield from (frames, dropped, job_frames, job_dropped, job_fps, latency, histogram)

    def _daemons(self, queue: JobQueue) -> Iterator[Metric]:
        running = GaugeMetricFamily("vosd_daemon_running_jobs", "Jobs a daemon runs.", labels=["daemon"])
        capacity = GaugeMetricFamily("vosd_daemon_capacity", "Jobs a daemon can hold now.", labels=["daemon"])
        live = 0
        for name, load in sorted(queue.daemon_loads().items()):
            if load is not None and load.fresh(queue.visibility_timeout_s):
                live += 1
                running.add_metric([name], load.running)
                capacity.add_metric([name], load.capacity)
        outages = CounterMetricFamily(
            "vosd_daemon_redis_outages", "Redis outages a daemon rode out.", labels=["daemon"]
        )
        restarts = CounterMetricFamily(
            "vosd_daemon_child_restarts",
            "Restarts of a daemon's worker and writer processes.",
            labels=["daemon", "process"],
        )
        model_fps = GaugeMetricFamily(
            "vosd_worker_model_fps",
            "Frames per second of model time of a worker since its previous heartbeat.",
            labels=["daemon", "process"],
        )
        rss = GaugeMetricFamily(
            "vosd_process_rss_bytes",
            "Resident memory of a daemon's worker or writer.",
            labels=["daemon", "process"],
        )
        gpu = GaugeMetricFamily(
            "vosd_worker_gpu_memory_bytes",
            "GPU memory torch has allocated in a CUDA worker.",
            labels=["daemon", "process"],
        )
        per_process = {"model_fps:": model_fps, "rss:": rss, "gpu_memory:": gpu}
        for daemon, fields in queue.daemon_statuses().items():
            for name, value in fields.items():
                for prefix, family in per_process.items():
                    if name.startswith(prefix):
                        family.add_metric([daemon, name.removeprefix(prefix)], _number(value))
            outages.add_metric([daemon], _number(fields.get("redis_outages")))
            for name, value in fields.items():
                if name.startswith("restarts:"):
                    restarts.add_metric([daemon, name.removeprefix("restarts:")], _number(value))
        yield GaugeMetricFamily("vosd_daemons", "Daemons that published their load recently.", value=live)
        yield from (running, capacity, outages, restarts, model_fps, rss, gpu)


def registry_for(ctx: ApiContext) -> CollectorRegistry:
    """A registry of its own: only fleet figures, no process defaults of whoever imports prometheus_client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(ctx))
    return registry


@router.get(
    "/metrics",
    dependencies=[Depends(require_token)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus text format; see FleetCollector for the series."""
    if ctx.registry is None:
        ctx.registry = registry_for(ctx)
    body = await run_in_threadpool(generate_latest, ctx.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process answers: the liveness probe."""
    return {"status": "alive"}


@router.get("/readyz", response_model=None)
def readyz(ctx: Ctx) -> dict[str, object] | JSONResponse:
    """Ready when Redis answers and at least one daemon published capacity > 0 recently (its workers loaded
    their model and its writer runs): the readiness probe."""
    queue = ctx.queue()
    queue.redis.ping()
    ready = [
        name
        for name, load in queue.daemon_loads().items()
        if load is not None and load.capacity > 0 and load.fresh(queue.visibility_timeout_s)
    ]
    if not ready:
        return error_response(
            503, "no daemon with capacity: workers still loading their model, or none running"
        )
    return {"status": "ready", "daemons": sorted(ready)}
