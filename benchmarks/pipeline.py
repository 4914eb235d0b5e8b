"""The daemon's pipeline against the bare model: end-to-end FPS ratio, peak RSS, live latency percentiles.

Runs the real processes of `vosd serve` (decoder, worker, writer, spawned with their settings) with this
script as the supervisor, without Redis (job bookkeeping is not on the frame path):

1. ratio: one synthetic H.264 clip through `VideoSession.step` in this process (frames decoded
   beforehand, so only the model is timed), through `vosd segment` (`segment_video`: reader, model and
   writer threads, the same outputs as a daemon job) and through decoder -> worker -> writer. Pipeline
   FPS is taken between the first and last written frame; the ratios are pipeline FPS / segment FPS (the
   goal: at least 0.95) and pipeline FPS / model FPS. `--threads` applies to both the worker and here.
2. memory: a long clip through the pipeline; peak RSS of every process, sampled, and the RSS of the
   worker after 10 % vs at the end (what grows with video length should be nothing).
3. latency: a live MPEG-TS stream on 127.0.0.1 (tests/videos.py); per frame, the time from the decoder
   having the picture to its mask being written, as p50/p90/p99 and the drop count.

    python benchmarks/pipeline.py [--checkpoint XMem.pth] [--device cuda:0] [--size 480] [--frames 240]
                                  [--long-frames 3000] [--live-seconds 20] [--resolution 640x480]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.context
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from streamer.config import TransportConfig, WorkersConfig
from streamer.ingest.decoder import DecoderSettings, run_decoder
from streamer.output.writer_process import WriterSettings, run_writer
from streamer.transport.messages import ErrorMessage, Heartbeat, OutputsComplete, Progress, Shutdown
from streamer.transport.sockets import ResultCollector, ResultSender, send_control
from workers.worker import WorkerSettings, run_worker

# The repository root too: without a regular streamer/ on sys.path, tests/streamer/ (a namespace
# directory of the test tree) would be imported as `streamer` in spawned children.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from videos import LiveServer, free_port, write_first_mask, write_moving_shape_video

SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Run:
    """What one job through the pipeline produced."""

    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    written_at: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)
    worker_rss: list[tuple[int, int]] = field(default_factory=list)
    """(frames written, worker RSS) samples."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU time (user + system) each process spent during the job, last sample."""


class Pipeline:
    """Writer and worker processes started once; one decoder per job, as the daemon does."""

    def __init__(self, directory: Path, args: argparse.Namespace, checkpoint: Path) -> None:
        self.directory = directory
        self.transport = TransportConfig()
        self.queues = self.transport.queues()
        self.context = zmq.Context()
        self.events = ResultCollector(self.context, f"ipc://{directory}/events.sock", self.queues)
        self.writer_endpoint = f"ipc://{directory}/writer.sock"
        self.worker_endpoint = f"ipc://{directory}/worker.sock"
        self.writer_tx = ResultSender(self.context, self.writer_endpoint, self.queues)
        self.args = args
        writer = WriterSettings(
            self.writer_endpoint, self.events.endpoint, self.transport, progress_interval_s=0.0
        )
        worker = WorkerSettings(
            name="worker-0",
            device=args.device,
            checkpoint=str(checkpoint),
            inbox_endpoint=self.worker_endpoint,
            writer_endpoint=self.writer_endpoint,
            events_endpoint=self.events.endpoint,
            transport=self.transport,
            workers=WorkersConfig(size=args.size),
            threads=args.threads if args.worker_threads is None else args.worker_threads,
        )
        self.processes = {
            "writer": self._spawn(run_writer, writer),
            "worker": self._spawn(run_worker, worker),
        }
        ready: set[str] = set()
        while ready != {"writer", "worker-0"}:
            message = self.events.receive(timeout_s=120)
            if message is None:
                raise RuntimeError("worker or writer did not start")
            if isinstance(message, Heartbeat):
                ready.add(message.process)

    def _spawn(self, target: Callable[[Any], None], settings: Any) -> multiprocessing.context.SpawnProcess:
        process = SPAWN.Process(target=target, args=(settings,), daemon=True)
        process.start()
        return process

    def run(
        self, job_id: str, source: str, mask: Path, *, live: bool = False, max_frames: int | None = None
    ) -> Run:
        settings = DecoderSettings(
            job_id=job_id,
            source=source,
            mask_path=str(mask),
            live=live,
            worker_endpoint=self.worker_endpoint,
            writer_endpoint=self.writer_endpoint,
            events_endpoint=self.events.endpoint,
            max_objects=WorkersConfig().max_objects,
            transport=self.transport,
            outputs={"dir": str(self.directory / job_id)},
            max_frames=max_frames,
        )
        started = time.monotonic()
        processes = {**self.processes, "decoder": self._spawn(run_decoder, settings)}
        watched = {name: psutil.Process(p.pid) for name, p in processes.items()}
        cpu_before = {name: sum(process.cpu_times()[:2]) for name, process in watched.items()}
        run = Run()
        last_sample = 0.0
        while True:
            message = self.events.receive(timeout_s=0.05)
            now = time.monotonic()
            if now - last_sample > 0.2:
                last_sample = now
                for name, process in watched.items():
                    try:
                        rss = process.memory_info().rss
                        cpu = sum(process.cpu_times()[:2]) - cpu_before.get(name, 0.0)
                    except psutil.NoSuchProcess:
                        continue
                    run.cpu_seconds[name] = round(cpu, 2)
                    run.peak_rss[name] = max(run.peak_rss.get(name, 0), rss)
                    if name == "worker":
                        run.worker_rss.append((run.frames, rss))
            if isinstance(message, Progress) and message.job_id == job_id:
                if message.frames_done > run.frames:
                    run.frames = message.frames_done
                    run.written_at.append(now)
                    if message.latency_s is not None:
                        run.latencies.append(message.latency_s)
                run.dropped = message.frames_dropped
            elif isinstance(message, OutputsComplete) and message.job_id == job_id:
                run.frames, run.dropped = message.frames_written, message.frames_dropped
                run.seconds = now - started
                processes["decoder"].join(10)
                return run
            elif isinstance(message, ErrorMessage) and message.job_id == job_id:
                raise RuntimeError(f"{job_id} failed: {message.code}: {message.message}")

    def close(self) -> None:
        send_control(self.context, self.worker_endpoint, Shutdown(reason="benchmark over", drain=False))
        self.writer_tx.send(Shutdown(reason="benchmark over", drain=False))
        for process in self.processes.values():
            process.join(10)
        self.writer_tx.close()
        self.events.close()
        self.context.term()


def _session(checkpoint: Path, args: argparse.Namespace) -> Any:
    import torch

    from workers.xmem.checkpoint import load_network
    from workers.xmem.config import InferenceConfig
    from workers.xmem.session import VideoSession

    if args.threads:
        torch.set_num_threads(args.threads)
    network = load_network(str(checkpoint), device=args.device)
    return VideoSession(network, InferenceConfig(), size=args.size, device=args.device)


def model_fps(checkpoint: Path, clip: Path, mask: np.ndarray, args: argparse.Namespace) -> float:
    """Bare `VideoSession.step` on the source frames of `clip`, decoded beforehand."""
    import torch

    from streamer.ingest.sources import open_source

    with open_source(clip, live=False) as source:
        frames = [frame.image for frame in source]
    session = _session(checkpoint, args)
    session.step(frames[0], mask)
    started = time.perf_counter()
    for frame in frames[1:]:
        session.step(frame)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return (len(frames) - 1) / (time.perf_counter() - started)


def segment_fps(checkpoint: Path, clip: Path, mask: np.ndarray, args: argparse.Namespace, out: Path) -> float:
    """`vosd segment` on `clip`, writing the outputs a daemon job writes (overlay, PNGs, RLE)."""
    from streamer.ingest.sources import open_source
    from streamer.output.writer import OutputWriter
    from streamer.segment import segment_video

    session = _session(checkpoint, args)
    with open_source(clip, live=False) as source:
        info = source.info
        writer = OutputWriter(fps=info.fps, source_size=(info.width, info.height),
                              overlay_path=out / "overlay.mp4", masks_dir=out / "masks",
                              rle_path=out / "masks.jsonl")
        return segment_video(source, mask, session, writer).fps


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, help="XMem checkpoint (default: a random full-size network)"
    )
    parser.add_argument("--small", action="store_true", help="random small network instead of full size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=480, help="working size (shorter side)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--worker-threads", type=int, help="the worker's torch threads (default: --threads)")
    parser.add_argument("--resolution", default="640x480", help="source video size WxH")
    parser.add_argument("--frames", type=int, default=240, help="frames of the ratio clip")
    parser.add_argument("--long-frames", type=int, default=3000, help="frames of the memory clip (0: skip)")
    parser.add_argument("--live-seconds", type=float, default=20.0, help="live latency run (0: skip)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.resolution.split("x"))
    directory = Path(tempfile.mkdtemp(prefix="vosd-bench-"))
    report: dict[str, object] = {"device": args.device, "size": args.size, "resolution": args.resolution}
    try:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from workers.xmem.network import NetworkSpec
            from workers.xmem.random_init import write_random_checkpoint

            spec = NetworkSpec.small() if args.small else NetworkSpec()
            checkpoint = write_random_checkpoint(directory / "random.pth", spec)
        clip = directory / "clip.mp4"
        masks = write_moving_shape_video(clip, frames=args.frames, size=(width, height), objects=2)
        mask = write_first_mask(directory / "first.png", masks[0])
        bare = model_fps(checkpoint, clip, masks[0], args)
        local = segment_fps(checkpoint, clip, masks[0], args, directory / "segment")
        pipeline = Pipeline(directory, args, checkpoint)
        try:
            batch = pipeline.run("ratio", str(clip), mask)
            steady = (len(batch.written_at) - 1) / (batch.written_at[-1] - batch.written_at[0])
            report.update(
                model_fps=round(bare, 2),
                segment_fps=round(local, 2),
                pipeline_fps=round(steady, 2),
                ratio_to_segment=round(steady / local, 3),
                ratio=round(steady / bare, 3),
                pipeline_fps_with_startup=round(batch.frames / batch.seconds, 2),
                pipeline_cpu_s=batch.cpu_seconds,
            )
            if args.long_frames:
                long_clip = directory / "long.mp4"
                write_moving_shape_video(long_clip, frames=args.long_frames, size=(width, height), objects=2)
                long = pipeline.run("long", str(long_clip), mask)
                tenth = [rss for done, rss in long.worker_rss if done >= args.long_frames // 10]
                report["memory"] = {
                    "frames": long.frames,
                    "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in long.peak_rss.items()},
                    "worker_rss_mib_at_10pct": round(tenth[0] / 2**20, 1) if tenth else None,
                    "worker_rss_mib_at_end": round(long.worker_rss[-1][1] / 2**20, 1),
                }
            if args.live_seconds:
                with LiveServer(
                    "tcp", free_port(), fps=24, size=(width, height), lifetime=args.live_seconds + 30
                ) as server:
                    time.sleep(1.0)
                    live = pipeline.run(
                        "live", server.url, mask, live=True, max_frames=int(args.live_seconds * 24)
                    )
                report["live"] = {
                    "frames_written": live.frames,
                    "frames_dropped": live.dropped,
                    "latency_ms": {
                        f"p{q}": round(percentile(live.latencies, q) * 1000, 1) for q in (50, 90, 99)
                    },
                }
        finally:
            pipeline.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
