"""Where a frame's time goes in VideoSession.step on CPU: pre-processing, key encoder, memory read, decoder,
value encoder, post-processing, at one or more working sizes.

Module forward hooks time the network's parts (key encoder trunk and projection, decoder blocks, value
encoder trunk, fuser and hidden reinforcer) without changing the network; the memory read is timed by
wrapping the memory manager's ``match_memory``; pre-processing is ``VideoSession.image_tensor`` and
post-processing is what remains of ``step`` outside the core (resize of the probabilities to the frame size,
argmax, label mapping, copy to numpy). Frames are a DAVIS sequence at its 854x480 size, as a 480p camera
sends them.

    python benchmarks/lite_profile.py [--checkpoint PATH] [--sequence dog] [--size 240 --size 480]
                                      [--threads 2] [--frames 60] [--mem-every 5]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamer.masks import read_index_mask
from workers.evaluation.runner import read_frame
from workers.training.weights import default_model_path
from workers.xmem.checkpoint import load_network
from workers.xmem.config import InferenceConfig
from workers.xmem.network import XMemNetwork
from workers.xmem.session import VideoSession

DEFAULT_ROOT = Path("/work/shared/data/davis16-dev")


class Timer:
    """Seconds per named part, summed over frames; parts may nest (a parent includes its children)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.calls[name] += 1

    def hook(self, module: nn.Module, name: str) -> None:
        """Time ``module``'s forward under ``name``."""
        started: list[float] = []

        def before(*_: Any) -> None:
            started.append(time.perf_counter())

        def after(*_: Any) -> None:
            self.add(name, time.perf_counter() - started.pop())

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Time calls of the bound method ``owner.attribute`` under ``name``."""
        method: Callable[..., Any] = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        setattr(owner, attribute, timed)


def instrument(network: XMemNetwork, timer: Timer) -> None:
    """Hooks on the parts of the network whose cost matters for the lite design."""
    timer.hook(network.key_encoder, "key encoder")
    timer.hook(network.key_proj, "key projection")
    decoder = network.decoder
    for name in ("fuser", "hidden_update", "up_16_8", "up_8_4", "pred"):
        part = getattr(decoder, name, None)
        if part is not None:
            timer.hook(part, f"decoder.{name}")
    timer.hook(decoder, "decoder")
    value = network.value_encoder
    timer.wrap(value, "trunk", "value_encoder.trunk (ResNet-18 to stride 16)")
    timer.hook(value.fuser, "value_encoder.fuser")
    if value.hidden_reinforce is not None:
        timer.hook(value.hidden_reinforce, "value_encoder.hidden_reinforce")
    timer.hook(value, "value encoder")


def profile(network: XMemNetwork, timer: Timer, frames: list[np.ndarray], first_mask: np.ndarray, size: int,
            config: InferenceConfig) -> float:
    """Run one session over ``frames`` (``network`` instrumented with ``timer``); returns the seconds of
    ``step`` in all."""
    session = VideoSession(network, config, size=size)
    timer.wrap(session, "image_tensor", "pre-processing")
    timer.wrap(session, "mask_tensor", "mask input")
    timer.wrap(session.core, "step", "core")
    timer.wrap(session.core.memory, "match_memory", "memory read")
    total = 0.0
    for index, frame in enumerate(frames):
        started = time.perf_counter()
        session.step(frame, first_mask if index == 0 else None, end=index == len(frames) - 1)
        total += time.perf_counter() - started
    return total


def report(timer: Timer, total: float, frames: int, size: int) -> None:
    seconds = dict(timer.seconds)
    core = seconds.get("core", 0.0)
    parts = {
        "pre-processing (normalise, resize)": seconds.get("pre-processing", 0.0),
        "key encoder trunk": seconds.get("key encoder", 0.0),
        "key projection": seconds.get("key projection", 0.0),
        "memory read": seconds.get("memory read", 0.0),
        "decoder": seconds.get("decoder", 0.0),
        "value encoder": seconds.get("value encoder", 0.0),
    }
    parts["core, other (padding, memory writes)"] = core - sum(
        parts[name] for name in ("key encoder trunk", "key projection", "memory read", "decoder",
                                 "value encoder"))
    parts["post-processing (upsample, argmax, to numpy)"] = (
        total - core - seconds.get("pre-processing", 0.0) - seconds.get("mask input", 0.0))
    print(f"\nsize {size}: {frames} frames, {1000 * total / frames:.1f} ms/frame = {frames / total:.2f} fps, "
          f"{torch.get_num_threads()} thread(s)")
    for name, value in parts.items():
        print(f"  {name:<46}{1000 * value / frames:8.1f} ms/frame {100 * value / total:6.1f} %")
    print("  parts (ms per call, calls):")
    for name in sorted(seconds):
        if "." in name:
            print(f"    {name:<44}{1000 * seconds[name] / timer.calls[name]:8.1f} {timer.calls[name]:5d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="XMem checkpoint (default: the bundled model)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--sequence", default="dog")
    parser.add_argument("--size", type=int, action="append", help="working size; repeatable (default 240)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=60, help="frames of the sequence to run")
    parser.add_argument("--mem-every", type=int, default=InferenceConfig().mem_every)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame_paths = sorted((args.root / "JPEGImages" / "480p" / args.sequence).glob("*.jpg"))[:args.frames]
    mask_path = sorted((args.root / "Annotations" / "480p" / args.sequence).glob("*.png"))[0]
    frames = [read_frame(path) for path in frame_paths]
    first_mask = (read_index_mask(mask_path) > 0).astype(np.uint8)
    config = InferenceConfig(mem_every=args.mem_every)
    for size in args.size or [240]:
        network = load_network(args.checkpoint or default_model_path())
        timer = Timer()
        instrument(network, timer)
        profile(network, timer, frames[:3], first_mask, size, config)  # warm-up
        timer.seconds.clear()
        timer.calls.clear()
        total = profile(network, timer, frames, first_mask, size, config)
        report(timer, total, len(frames), size)


if __name__ == "__main__":
    main()
