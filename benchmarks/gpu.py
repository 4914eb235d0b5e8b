"""The GPU benchmark set of issue #10 in one command, writing a results JSON.

1. One stream, every variant in lockstep on the same frames (so each frame's outputs can be compared):
   reference (`load_network(fast=False)` + `VideoSession(fast=False)`, float32), fast float32, fast with
   channels_last, fast under float16 autocast, fast under bfloat16 autocast. Per variant: median and mean
   s/frame, FPS, ratio to the reference, largest probability difference to the reference.
2. N concurrent live streams (default 8 at 25 fps) on one worker with one network, each stream its own
   session and memory: frames arrive on the streams' clocks (staggered) and are segmented in arrival order,
   one at a time (the key encoder and decoder of several jobs are not batched yet); per-frame latency =
   mask ready - frame arrival. Reports aggregate FPS, p50 / p99 latency in ms and in frame intervals.

    python benchmarks/gpu.py [--device cuda] [--checkpoint XMem.pth] [--frames DIR] [--count 60]
                             [--streams 8] [--fps 25] [--output results.json]
    python benchmarks/gpu.py --device cpu --smoke     # seconds: tiny network and frames, checks the script

Without --checkpoint the network is a calibrated random full-size XMem (seed 0).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from workers.xmem.acceleration import Acceleration, accelerate
from workers.xmem.config import InferenceConfig
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import InitOptions, make_random_network
from workers.xmem.session import VideoSession

DEFAULT_FRAMES = Path("/work/shared/data/davis16-dev/JPEGImages/480p/dog")
VARIANTS = ("reference", "fast", "fast_channels_last", "fast_fp16", "fast_bf16")
SMOKE_SIZE = (96, 128)


@dataclass
class Variant:
    name: str
    session: VideoSession
    autocast: Callable[[], AbstractContextManager[Any]]
    seconds: list[float] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", type=Path, help="XMem checkpoint (default: random full-size)")
    parser.add_argument("--frames", type=Path, default=DEFAULT_FRAMES,
                        help="folder of frames (synthetic frames when missing)")
    parser.add_argument("--count", type=int, default=60, help="frames per stream")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--streams", type=int, default=8, help="concurrent live streams")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of each live stream")
    parser.add_argument("--stream-variant", default="fast_fp16", choices=VARIANTS,
                        help="variant used for the concurrent streams")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated single-stream variants")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny random network, 96x128 synthetic frames, 3 frames, 2 streams at 4 fps")
    parser.add_argument("--output", type=Path,
                        help="results JSON (default benchmarks/results/gpu-<time>.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.count, args.streams, args.fps, args.size = min(args.count, 3), min(args.streams, 2), 4.0, -1
    return args


def load_frames(args: argparse.Namespace) -> list[np.ndarray]:
    folder: Path = args.frames
    if not args.smoke and folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        frames = []
        for path in paths[: args.count]:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        if frames:
            return frames
    height, width = SMOKE_SIZE if args.smoke else (480, 854)
    generator = np.random.default_rng(0)
    texture = generator.integers(0, 256, (height + args.count, width + args.count, 3), dtype=np.uint8)
    return [texture[t : t + height, t : t + width].copy() for t in range(args.count)]


def first_mask(frame: np.ndarray) -> np.ndarray:
    mask = np.zeros(frame.shape[:2], dtype=np.uint8)
    height, width = mask.shape
    mask[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 1
    return mask


def reference_network(args: argparse.Namespace, device: torch.device) -> XMemNetwork:
    if args.checkpoint is not None:
        from workers.xmem.checkpoint import load_network

        return load_network(args.checkpoint, device=device, fast=False)
    if args.smoke:
        options = InitOptions(batches=1, batch_size=1, image_size=(48, 64))
        return make_random_network(NetworkSpec.small(), seed=0, options=options).to(device).eval()
    return make_random_network(NetworkSpec.official(), seed=0).to(device).eval()


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def make_variant(name: str, reference: XMemNetwork, args: argparse.Namespace,
                 device: torch.device) -> Variant:
    config = InferenceConfig()
    if name == "reference":
        session = VideoSession(reference, config, size=args.size, device=device, fast=False)
        return Variant(name, session, nullcontext)
    options = Acceleration(channels_last=name == "fast_channels_last")
    network = accelerate(copy.deepcopy(reference), options)
    dtype = {"fast_fp16": torch.float16, "fast_bf16": torch.bfloat16}.get(name)
    session = VideoSession(network, config, size=args.size, device=device, fast=True)
    return Variant(name, session, autocast_factory(device, dtype))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(variant: Variant, device: torch.device, frame: np.ndarray, mask: np.ndarray | None,
               end: bool) -> tuple[float, np.ndarray]:
    synchronize(device)
    start = time.perf_counter()
    with variant.autocast():
        result = variant.session.step(frame, mask, end=end, keep_probabilities=True)
    synchronize(device)
    assert result.probabilities is not None
    return time.perf_counter() - start, result.probabilities


def single_stream(args: argparse.Namespace, reference: XMemNetwork, frames: list[np.ndarray],
                  device: torch.device) -> dict[str, Any]:
    names = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "reference" not in names:
        raise SystemExit(f"--variants must include reference and name only {list(VARIANTS)}; got {names}")
    variants = [make_variant(name, reference, args, device) for name in names]
    mask = first_mask(frames[0])
    for index, frame in enumerate(frames):
        order = variants if index % 2 == 0 else list(reversed(variants))
        outputs = {}
        for variant in order:
            seconds, probabilities = timed_step(variant, device, frame, mask if index == 0 else None,
                                                end=index == len(frames) - 1)
            outputs[variant.name] = probabilities
            if index:
                variant.seconds.append(seconds)
        for variant in variants:
            variant.diffs.append(float(np.abs(outputs[variant.name] - outputs["reference"]).max()))
    reference_median = statistics.median(variants[names.index("reference")].seconds)
    results = {}
    for variant in variants:
        median = statistics.median(variant.seconds)
        results[variant.name] = {
            "median_s": median, "mean_s": statistics.fmean(variant.seconds), "fps": 1 / median,
            "ratio_to_reference": reference_median / median, "max_prob_diff": max(variant.diffs),
        }
        print(f"{variant.name:>20}: {median * 1000:8.2f} ms/frame, {1 / median:7.2f} FPS, "
              f"{reference_median / median:5.2f}x reference, max prob diff {max(variant.diffs):.2e}")
    return results


def concurrent_streams(args: argparse.Namespace, reference: XMemNetwork, frames: list[np.ndarray],
                       device: torch.device) -> dict[str, Any]:
    """Live streams on one worker: frames segmented in arrival order, latency from arrival to mask."""
    variant = make_variant(args.stream_variant, reference, args, device)
    network = variant.session.core.network
    sessions = [VideoSession(network, InferenceConfig(), size=args.size, device=device,
                             fast=args.stream_variant != "reference") for _ in range(args.streams)]
    interval = 1 / args.fps
    mask = first_mask(frames[0])
    # warm up (first frames with their masks) before the clock starts: a live job starts with its mask
    for session in sessions:
        with variant.autocast():
            session.step(frames[0], mask)
    arrivals = sorted((index * interval + stream * interval / args.streams, stream, index)
                      for stream in range(args.streams) for index in range(1, len(frames)))
    latencies = []
    synchronize(device)
    start = time.perf_counter()
    for arrival, stream, index in arrivals:
        wait = arrival - (time.perf_counter() - start)
        if wait > 0:
            time.sleep(wait)
        with variant.autocast():
            sessions[stream].step(frames[index], end=index == len(frames) - 1)
        synchronize(device)
        latencies.append(time.perf_counter() - start - arrival)
    elapsed = time.perf_counter() - start
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
    result = {
        "variant": args.stream_variant, "streams": args.streams, "fps_per_stream": args.fps,
        "frames_per_stream": len(frames) - 1, "batched": False,
        "aggregate_fps": len(latencies) / elapsed,
        "p50_latency_ms": p50 * 1000, "p99_latency_ms": p99 * 1000,
        "p99_latency_frame_intervals": p99 / interval,
        "kept_up": p99 <= 3 * interval,
    }
    print(f"{args.streams} streams x {args.fps:g} fps ({args.stream_variant}, sequential): "
          f"{result['aggregate_fps']:.1f} FPS in all, latency p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms "
          f"= {p99 / interval:.2f} frame intervals")
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames = load_frames(args)
    reference = reference_network(args, device)
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"{device_name(device)}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, size "
          f"{args.size}, {args.checkpoint or ('small random network' if args.smoke else 'random full-size')}")
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "device": device_name(device),
        "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
        "single_stream": single_stream(args, reference, frames, device),
        "concurrent": concurrent_streams(args, reference, frames, device),
        "wall_s": None,
    }
    results["wall_s"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    output = args.output or Path(__file__).parent / "results" / f"gpu-{started:%Y%m%dT%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print(f"results: {output}")
    return results


if __name__ == "__main__":
    main()
