"""J&F of a checkpoint on DAVIS-2016 sequences against the copy-first-mask baseline.

The baseline predicts the first frame's mask on every frame: a model that does not beat it has learnt
nothing about following objects. Scoring is DAVIS's (first and last frames skipped, objects merged into
one as in DAVIS-2016), with the output at the annotation size. Use it on sequences the checkpoint was not
trained on (the bundled model held out dog, camel and car-roundabout).

    python benchmarks/heldout.py [--root DAVIS] [--sequences dog,camel,car-roundabout]
                                 [--checkpoint PATH (default: the bundled model)] [--size 480]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from streamer.masks import read_index_mask
from workers.evaluation.metrics import ObjectScore, SequenceTally, summarise
from workers.evaluation.runner import read_frame
from workers.training.weights import default_model_path
from workers.xmem.checkpoint import load_network
from workers.xmem.config import InferenceConfig
from workers.xmem.session import VideoSession

DEFAULT_ROOT = Path("/work/shared/data/davis16-dev")
HELD_OUT = "dog,camel,car-roundabout"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="DAVIS folder (JPEGImages/480p, ...)")
    parser.add_argument("--sequences", default=HELD_OUT, help="comma-separated sequence names")
    parser.add_argument("--checkpoint", type=Path, help="XMem checkpoint (default: the bundled model)")
    parser.add_argument("--size", type=int, default=480, help="shorter side the model runs at (-1: native)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


def sequence_files(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """Frames and their annotations (DAVIS-2016 annotates every frame)."""
    frames = sorted((root / "JPEGImages" / "480p" / name).glob("*.jpg"))
    masks = sorted((root / "Annotations" / "480p" / name).glob("*.png"))
    if not frames or len(frames) != len(masks):
        raise SystemExit(f"{name}: {len(frames)} frames but {len(masks)} annotations under {root}")
    return frames, masks


def single_object(path: Path) -> np.ndarray:
    """DAVIS-2016 setting: every annotated pixel is object 1."""
    return (read_index_mask(path) > 0).astype(np.uint8)


def score_sequence(network, config: InferenceConfig, root: Path, name: str, size: int
                   ) -> tuple[list[ObjectScore], list[ObjectScore], float]:
    """(model scores, copy-first scores, model frames per second) for one sequence."""
    frames, masks = sequence_files(root, name)
    first = single_object(masks[0])
    session = VideoSession(network, config, size=size)
    model, baseline = SequenceTally(name), SequenceTally(name)
    elapsed = 0.0
    for index, (frame_path, mask_path) in enumerate(zip(frames, masks, strict=True)):
        frame, truth = read_frame(frame_path), single_object(mask_path)
        started = time.perf_counter()
        result = session.step(frame, first if index == 0 else None, end=index == len(frames) - 1)
        elapsed += time.perf_counter() - started
        if index in (0, len(frames) - 1):
            model.add_labels(truth)
            baseline.add_labels(truth)
            continue
        model.add_frame(result.index_mask, truth)
        baseline.add_frame(first, truth)
    return model.scores(), baseline.scores(), len(frames) / elapsed


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or default_model_path()
    network = load_network(checkpoint)
    config = InferenceConfig()
    print(f"checkpoint {checkpoint} ({network.spec.variant}), size {args.size}, root {args.root}")
    print(f"{'sequence':<18}{'J':>7}{'F':>7}{'J&F':>7}   {'copy-first J&F':>14}{'fps':>7}")
    all_model, all_baseline = [], []
    for name in [n.strip() for n in args.sequences.split(",") if n.strip()]:
        model, baseline, fps = score_sequence(network, config, args.root, name, args.size)
        all_model += model
        all_baseline += baseline
        m, b = summarise(model), summarise(baseline)
        print(f"{name:<18}{100 * m.j:7.1f}{100 * m.f:7.1f}{100 * m.jf:7.1f}   {100 * b.jf:14.1f}{fps:7.2f}",
              flush=True)
    m, b = summarise(all_model), summarise(all_baseline)
    print(f"{'mean':<18}{100 * m.j:7.1f}{100 * m.f:7.1f}{100 * m.jf:7.1f}   {100 * b.jf:14.1f}")


if __name__ == "__main__":
    main()
