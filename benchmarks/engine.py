"""Reference vs fast XMem engine, side by side: per-frame times, their ratio, the largest probability
difference, and a per-module profile.

Both paths run in one process on the same checkpoint and frames, interleaved frame by frame (the order
alternates, so a load change on a shared machine hits both alike): the reference is
`load_network(fast=False)` + `VideoSession(fast=False)` (the eager float32 path, operation for operation the
official code's), the fast path is what `load_network` + `VideoSession` give by default, or the network
rewrites chosen with --fold-batchnorm / --channels-last. Timing covers `VideoSession.step` (preprocessing,
the core, the output); JPEG decoding is done before. The first frame (the mask) is not timed.

    python benchmarks/engine.py [--frames DIR] [--mask PNG] [--checkpoint XMem.pth] [--threads 2]
                                [--count 20] [--fold-batchnorm] [--channels-last] [--amp] [--json FILE]

Without --checkpoint the network is a calibrated random full-size XMem (ResNet-50 / ResNet-18, seed 0).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from streamer.masks import read_index_mask
from workers.xmem.acceleration import DEFAULT_ACCELERATION, Acceleration, accelerate
from workers.xmem.config import InferenceConfig
from workers.xmem.network import XMemNetwork
from workers.xmem.session import VideoSession

DEFAULT_FRAMES = Path("/work/shared/data/davis16-dev/JPEGImages/480p/dog")
MODULES = ("key_encoder", "key_proj", "value_encoder", "decoder")
"""Network parts timed through forward hooks; the memory read-out is timed around match_memory."""
PARTS = (*MODULES, "memory_readout", "other")
"""'other' = the rest of the step: pre/post-processing, aggregation, memory writes."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=Path, default=DEFAULT_FRAMES, help="folder of JPEG/PNG frames")
    parser.add_argument("--mask", type=Path, help="first-frame index mask (default: the DAVIS annotation "
                                                 "of the first frame; objects merged into one)")
    parser.add_argument("--checkpoint", type=Path, help="XMem checkpoint (default: random full-size network)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--count", type=int, default=20, help="frames to run (the first carries the mask)")
    parser.add_argument("--size", type=int, default=480, help="shorter side the network sees")
    parser.add_argument("--fold-batchnorm", action="store_true", default=DEFAULT_ACCELERATION.fold_batchnorm,
                        help="fast path: fold BatchNorm into the convs")
    parser.add_argument("--channels-last", action="store_true", default=DEFAULT_ACCELERATION.channels_last,
                        help="fast path: channels_last weights")
    parser.add_argument("--amp", action="store_true", help="fast path under bfloat16 autocast (CPU) / "
                                                          "float16 (CUDA): the optional looser mode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def read_frames(folder: Path, count: int) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if not paths:
        raise SystemExit(f"no frames in {folder}")
    frames = []
    for path in paths:
        with Image.open(path) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return frames


def first_mask(args: argparse.Namespace, frame: np.ndarray) -> np.ndarray:
    """One object: the given mask or DAVIS's first annotation (all objects merged), else a centred box."""
    path = args.mask
    if path is None:
        guess = Path(str(args.frames).replace("JPEGImages", "Annotations"))
        candidates = sorted(guess.glob("*.png")) if guess.is_dir() else []
        path = candidates[0] if candidates else None
    if path is not None:
        return (read_index_mask(path) > 0).astype(np.uint8)
    mask = np.zeros(frame.shape[:2], dtype=np.uint8)
    height, width = mask.shape
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    return mask


def load_reference(checkpoint: Path | None, device: torch.device) -> XMemNetwork:
    if checkpoint is not None:
        from workers.xmem.checkpoint import load_network

        return load_network(checkpoint, device=device, fast=False)
    from workers.xmem.network import NetworkSpec
    from workers.xmem.random_init import make_random_network

    return make_random_network(NetworkSpec.official(), seed=0).to(device).eval()


class ModuleClock:
    """Seconds spent in each network part during one step (forward hooks and a match_memory wrapper)."""

    def __init__(self, session: VideoSession) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.session = session
        network = session.core.network
        self.sync: Callable[[], None] = (
            torch.cuda.synchronize if session.device.type == "cuda" else (lambda: None))
        for name in MODULES:
            module = getattr(network, name)
            module.register_forward_pre_hook(self.pre_hook(name))
            module.register_forward_hook(self.post_hook(name))
        self.started: dict[str, float] = {}

    def pre_hook(self, name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            self.sync()
            self.started[name] = time.perf_counter()
        return hook

    def post_hook(self, name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            self.sync()
            self.seconds[name] += time.perf_counter() - self.started[name]
        return hook

    @contextmanager
    def step(self) -> Iterator[dict[str, float]]:
        """Times one session step; yields the per-part seconds (filled when the block ends)."""
        self.seconds.clear()
        memory = self.session.core.memory
        original = memory.match_memory

        def timed(*args: Any) -> torch.Tensor:
            self.sync()
            start = time.perf_counter()
            result = original(*args)
            self.sync()
            self.seconds["memory_readout"] += time.perf_counter() - start
            return result

        memory.match_memory = timed  # type: ignore[method-assign]
        result: dict[str, float] = {}
        start = time.perf_counter()
        try:
            yield result
        finally:
            self.sync()
            total = time.perf_counter() - start
            del memory.match_memory
            result.update({part: self.seconds.get(part, 0.0) for part in PARTS[:-1]})
            result["other"] = total - sum(result.values())
            result["total"] = total


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames = read_frames(args.frames, args.count)
    mask = first_mask(args, frames[0])
    reference_net = load_reference(args.checkpoint, device)
    options = Acceleration(fold_batchnorm=args.fold_batchnorm, channels_last=args.channels_last)
    fast_net = accelerate(copy.deepcopy(reference_net), options)
    config = InferenceConfig()
    sessions = {
        "reference": VideoSession(reference_net, config, size=args.size, device=device, fast=False),
        "fast": VideoSession(fast_net, config, size=args.size, device=device, fast=True, amp=args.amp),
    }
    clocks = {name: ModuleClock(session) for name, session in sessions.items()}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in sessions}
    diffs = []
    source = args.checkpoint or "random full-size network (seed 0)"
    print(f"{len(frames)} frames of {args.frames} ({frames[0].shape[1]}x{frames[0].shape[0]}), size "
          f"{args.size}, {source}, {args.threads} threads, device {device}, fast path {options}"
          f"{', amp' if args.amp else ''}")
    print(f"{'frame':>5} {'ref s':>7} {'fast s':>7} {'ratio':>6} {'max |dp|':>9}")
    for index, frame in enumerate(frames):
        order = list(sessions) if index % 2 == 0 else list(reversed(sessions))
        probabilities = {}
        for name in order:
            with clocks[name].step() as seconds:
                result = sessions[name].step(frame, mask if index == 0 else None,
                                             end=index == len(frames) - 1, keep_probabilities=True)
            probabilities[name] = result.probabilities
            if index:
                times[name].append(seconds)
        assert probabilities["reference"] is not None and probabilities["fast"] is not None
        diff = float(np.abs(probabilities["reference"] - probabilities["fast"]).max())
        diffs.append(diff)
        if index:
            ref, fast = times["reference"][-1]["total"], times["fast"][-1]["total"]
            print(f"{index:5d} {ref:7.3f} {fast:7.3f} {ref / fast:6.2f} {diff:9.2e}")
    medians = {name: {part: statistics.median(t[part] for t in rows) for part in (*PARTS, "total")}
               for name, rows in times.items()}
    ratio = medians["reference"]["total"] / medians["fast"]["total"]
    print(f"\nmedian s/frame: reference {medians['reference']['total']:.3f}, fast "
          f"{medians['fast']['total']:.3f}; ratio {ratio:.2f}x (FPS {1 / medians['reference']['total']:.3f}"
          f" -> {1 / medians['fast']['total']:.3f}); max prob diff {max(diffs):.2e}")
    print("\nper-module median seconds per frame (memory frames every 5th frame run value_encoder):")
    print(f"{'part':>15} {'reference':>10} {'fast':>10}")
    for part in (*PARTS, "total"):
        print(f"{part:>15} {medians['reference'][part]:10.3f} {medians['fast'][part]:10.3f}")
    means = {name: {part: statistics.fmean(t[part] for t in rows) for part in (*PARTS, "total")}
             for name, rows in times.items()}
    return {
        "frames": str(args.frames), "count": len(frames), "checkpoint": str(source), "threads": args.threads,
        "size": args.size, "device": str(device), "fast_options": vars(options) | {"amp": args.amp},
        "median_s": medians, "mean_s": means, "ratio_of_medians": ratio,
        "ratio_of_means": means["reference"]["total"] / means["fast"]["total"],
        "max_prob_diff": max(diffs), "prob_diff_per_frame": diffs,
        "per_frame_s": {name: [t["total"] for t in rows] for name, rows in times.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    figures = run(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
