"""Size and cost of a job checkpoint (the session state a re-run resumes from) at 480p on a DAVIS sequence.

For the full-size network (calibrated random weights: same shapes, so the same memory sizes as the released
model) and the bundled lite model, runs a VideoSession with XMem's default options and, every `--every`
frames, saves its state as the worker does (`state_dict` + atomic `save_state`), then loads it into a fresh
session as a resumed worker does (`load_state` + `load_state_dict`), checking that the next frame comes out
identical. Prints bytes, ms to save and ms to load (median of `--repeat`), and the memory element counts:
the checkpoint is bounded because the memory is (working memory <= max_mid_term_frames frames, long-term
<= max_long_term_elements).

    python benchmarks/checkpoint.py [--root DAVIS] [--sequence dog] [--frames 60] [--every 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamer.masks import read_index_mask
from workers.evaluation.runner import read_frame
from workers.xmem.checkpoint import load_network
from workers.xmem.config import InferenceConfig
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import write_random_checkpoint
from workers.xmem.session import VideoSession, load_state, save_state

DEFAULT_ROOT = Path("/work/shared/data/davis16-dev")
LITE = Path(__file__).resolve().parents[1] / "workers" / "weights" / "vosd-lite.pth"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="DAVIS folder (JPEGImages/480p, ...)")
    parser.add_argument("--sequence", default="dog")
    parser.add_argument("--frames", type=int, default=60, help="frames to segment")
    parser.add_argument("--every", type=int, default=15, help="checkpoint after this many frames, repeatedly")
    parser.add_argument("--repeat", type=int, default=3, help="saves and loads per measurement")
    parser.add_argument("--models", nargs="+", default=["full", "lite"], choices=["full", "lite"])
    return parser.parse_args()


def measure(name: str, network: torch.nn.Module, frames: list[Path], first_mask: np.ndarray,
            args: argparse.Namespace, folder: Path) -> None:
    config = InferenceConfig()
    session = VideoSession(network, config, size=480)
    path = folder / f"{name}.pt"
    print(f"{name}: {network.spec}")
    for count, frame_path in enumerate(frames[: args.frames], start=1):
        session.step(read_frame(frame_path), first_mask if count == 1 else None)
        if count % args.every:
            continue
        saves, loads = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            size = save_state({"job_id": "bench", "frame": count, "session": session.state_dict()}, path)
            saves.append(time.perf_counter() - started)
            fresh = VideoSession(network, config, size=480)
            started = time.perf_counter()
            fresh.load_state_dict(load_state(path)["session"])
            loads.append(time.perf_counter() - started)
        same = identical(session.state_dict(), fresh.state_dict())
        session = fresh  # continue with the restored one: the next checkpoint is a checkpoint of a resume
        save_ms, load_ms = (1000 * statistics.median(times) for times in (saves, loads))
        print(f"  after {count:4d} frames: {size:11,d} bytes ({size / 2**20:5.1f} MiB), "
              f"save {save_ms:6.1f} ms, load {load_ms:6.1f} ms, restored state identical {same}, "
              f"memory {session.memory_stats()}")


def identical(a: object, b: object) -> bool:
    """Whether two state dicts hold the same values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(identical, a, b))
    return a == b


def main() -> None:
    args = parse_args()
    torch.set_grad_enabled(False)
    sequence = args.root / "JPEGImages" / "480p" / args.sequence
    frames = sorted(sequence.glob("*.jpg"))
    annotation = args.root / "Annotations" / "480p" / args.sequence / "00000.png"
    first_mask = (read_index_mask(annotation) > 0).astype(np.uint8)
    print(f"{args.sequence}: {len(frames)} frames of {read_frame(frames[0]).shape}, size 480, CPU, "
          f"{torch.get_num_threads()} threads, XMem default options")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            if name == "full":
                weights = write_random_checkpoint(folder / "full.pth", NetworkSpec.official(), seed=0)
            else:
                weights = LITE
            measure(name, load_network(weights), frames, first_mask, args, folder)


if __name__ == "__main__":
    main()
