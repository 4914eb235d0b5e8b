"""Engine speed and memory on one DAVIS sequence: FPS and peak memory after 25, 50, 100, ... frames.

Runs VideoSession at size 480 with one object (the first annotation's objects merged into object 1), as
XMem's single-object DAVIS 2016 setting, on a checkpoint or on a calibrated random full-size network (same
shapes and cost as the released model). `--length` plays the sequence back and forth to make a longer video,
which shows whether memory stays bounded. Timing covers `VideoSession.step` (preprocessing, the core and
the output resize), not JPEG decoding.

    python benchmarks/engine.py [--root DAVIS] [--sequence dog] [--checkpoint XMem.pth] [--length 500]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from streamer.masks import read_index_mask
from workers.evaluation.datasets import EvalSequence, load_dataset
from workers.evaluation.runner import read_frame
from workers.xmem.config import InferenceConfig
from workers.xmem.session import VideoSession

DEFAULT_ROOT = Path("/work/shared/data/davis16-dev")
REPORT_AT = (25, 50, 100, 200, 500, 1000, 2000, 5000)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="DAVIS folder (JPEGImages/480p, ...)")
    parser.add_argument("--sequence", help="sequence name (default: the longest)")
    parser.add_argument("--checkpoint", type=Path, help="XMem checkpoint (default: random full-size network)")
    parser.add_argument("--length", type=int, help="frames to run (default: the sequence once); longer "
                                                   "values play it back and forth")
    parser.add_argument("--size", type=int, default=480, help="shorter side (480 as eval.py)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision")
    return parser.parse_args()


def frame_order(count: int, length: int) -> list[int]:
    """Indices 0..count-1 played forwards then backwards (without repeating the turning frames) up to
    length."""
    cycle = list(range(count)) + list(range(count - 2, 0, -1)) if count > 1 else [0]
    return [cycle[i % len(cycle)] for i in range(length)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_model(checkpoint: Path | None, device: torch.device) -> torch.nn.Module:
    if checkpoint is not None:
        from workers.xmem.checkpoint import load_network

        return load_network(checkpoint, device=device)
    from workers.xmem.network import NetworkSpec
    from workers.xmem.random_init import make_random_network

    return make_random_network(NetworkSpec.official(), seed=0).to(device)


def pick_sequence(root: Path, name: str | None) -> EvalSequence:
    sequences = load_dataset("D17", root).sequences
    if name is None:
        return max(sequences, key=lambda s: len(s.frames))
    for sequence in sequences:
        if sequence.name == name:
            return sequence
    raise SystemExit(f"no sequence {name!r} in {root}; have {', '.join(s.name for s in sequences)}")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    sequence = pick_sequence(args.root, args.sequence)
    order = frame_order(len(sequence.frames), args.length or len(sequence.frames))
    network = load_model(args.checkpoint, device)
    first_mask = (read_index_mask(sequence.first_annotation) > 0).astype(np.uint8)
    session = VideoSession(network, InferenceConfig(), size=args.size, amp=args.amp, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = psutil.Process().memory_info().rss / 2**20
    print(f"{sequence.name}: {len(order)} frames, size {args.size}, device {device}, amp {args.amp}, "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random full-size network'}; "
          f"RSS before {rss_before:.0f} MB")
    seconds = 0.0
    for count, index in enumerate(order, start=1):
        frame = read_frame(sequence.frames[index])
        start = time.perf_counter()
        session.step(frame, first_mask if count == 1 else None, end=count == len(order))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        if count in REPORT_AT or count == len(order):
            cuda = (f", CUDA peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"
                    if device.type == "cuda" else "")
            stats = session.memory_stats()
            print(f"after {count:5d} frames: {count / seconds:6.2f} FPS, "
                  f"peak RSS {peak_rss_mb():.0f} MB{cuda}, memory {stats}")


if __name__ == "__main__":
    main()
