"""Auto mode against its parts on held-out DAVIS-2016 clips: J&F, temporal stability and FPS of

* tmo:         TMO-lite alone (every frame, DIS flow);
* auto-reset:  auto mode, re-seeds clear XMem's memory (the default);
* auto-memory: auto mode, re-seeds add TMO's mask as an anchor memory frame;
* xmem-gt:     XMem given the true first-frame mask (the upper bound auto mode aims at).

Frames and ground truth are resized so the shorter side is `--size` (240 by default: the 2-core machines),
and every method sees those frames; J and F are the DAVIS definitions over every annotated frame, binary
(any object = foreground). Stability is the mean IoU between consecutive predicted masks (1 = no flicker).
FPS counts model time only (decoding excluded). Bundled weights: vosd-lite.pth and vosd-tmo-lite.pth.

    nice python benchmarks/auto_compare.py [--root DAVIS] [--sequences camel,car-roundabout,dog]
                                           [--size 240] [--threads 1] [--methods tmo,auto-reset,...]
                                           [--auto drift_iou=0.6 --auto drift_checks=1 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from workers.auto.build import load_tmo, mask_free_session, tmo_session
from workers.auto.config import AutoConfig
from workers.evaluation.metrics import boundary_f_measure, disk, region_similarity, tolerance_radius
from workers.evaluation.unsupervised import load_unsupervised, read_binary
from workers.training.weights import default_model_path
from workers.xmem.checkpoint import load_network
from workers.xmem.config import InferenceConfig
from workers.xmem.session import VideoSession

DEFAULT_ROOT = Path("/work/shared/data/davis16-dev")
HELD_OUT = "camel,car-roundabout,dog"
METHODS = ("tmo", "auto-reset", "auto-memory", "xmem-gt")


def resized(image: np.ndarray, size: int, *, nearest: bool) -> np.ndarray:
    height, width = image.shape[:2]
    scale = size / min(height, width)
    target = (round(width * scale), round(height * scale))
    return cv2.resize(image, target, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def load_clip(sequence, size: int) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    frames = [resized(np.asarray(Image.open(p).convert("RGB")), size, nearest=False) for p in sequence.frames]
    truth = {i: resized(read_binary(p).astype(np.uint8), size, nearest=True) > 0
             for i, p in sequence.annotations.items()}
    return frames, truth


def run_method(method: str, frames: list[np.ndarray], truth: dict[int, np.ndarray], networks: dict,
               overrides: dict[str, Any]) -> tuple[list[np.ndarray], float, int]:
    """(binary masks, model seconds, seeds) of one method on one clip."""
    session: Any
    if method == "tmo":
        session = tmo_session(networks["tmo"], "dis", "cpu")
    elif method.startswith("auto-"):
        auto = AutoConfig.from_mapping({**overrides, "reseed": method.removeprefix("auto-")})
        session = mask_free_session("auto", tmo=networks["tmo"], flow="dis", device="cpu",
                                    xmem=networks["xmem"], inference=InferenceConfig(), auto=auto, size=-1)
    else:
        session = VideoSession(networks["xmem"], InferenceConfig(), size=-1, device="cpu")
    masks, seconds = [], 0.0
    for index, frame in enumerate(frames):
        started = time.perf_counter()
        if method == "xmem-gt":
            first = truth[0].astype(np.uint8) if index == 0 else None
            result = session.step(frame, first, end=index == len(frames) - 1)
        elif method == "tmo":
            result = session.step(frame)
        else:
            result = session.step(frame, end=index == len(frames) - 1)
        seconds += time.perf_counter() - started
        masks.append(result.index_mask > 0)
    return masks, seconds, getattr(session, "seeds", 0)


def scores(masks: list[np.ndarray], truth: dict[int, np.ndarray]) -> tuple[float, float, float]:
    """(J, F, stability) of one clip."""
    js = [region_similarity(masks[i], gt) for i, gt in truth.items()]
    fs = [boundary_f_measure(masks[i], gt, disk(tolerance_radius(gt.shape))) for i, gt in truth.items()]
    stability = [region_similarity(a, b) for a, b in itertools.pairwise(masks)]
    return float(np.mean(js)), float(np.mean(fs)), float(np.mean(stability))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--sequences", default=HELD_OUT)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--auto", action="append", default=[], metavar="NAME=VALUE",
                        help="an AutoConfig field for the auto methods (repeatable), e.g. drift_iou=0.6")
    args = parser.parse_args()
    fields = {f.name: f.type for f in dataclasses.fields(AutoConfig)}
    overrides: dict[str, Any] = {}
    for item in args.auto:
        name, _, value = item.partition("=")
        kind = fields[name]
        overrides[name] = int(value) if kind == "int" else float(value) if kind == "float" else value
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    names = args.sequences.split(",")
    sequences = [s for s in load_unsupervised("D16", args.root) if s.name in names]
    networks = {"tmo": load_tmo(None, "cpu"), "xmem": load_network(default_model_path(), device="cpu")}
    clips = {s.name: load_clip(s, args.size) for s in sequences}
    methods = args.methods.split(",")
    header = (f"{'method':<12}" + "".join(f"{n:>16}" for n in clips)
              + f"{'J&F':>8}{'J':>7}{'F':>7}{'stab':>7}{'FPS':>7}")
    lines = [header]
    for method in methods:
        cells, jf, j, f, stab, frames, seconds, seeds = [], [], [], [], [], 0, 0.0, []
        for images, truth in clips.values():
            masks, spent, seeded = run_method(method, images, truth, networks, overrides)
            sj, sf, ss = scores(masks, truth)
            cells.append(f"{100 * (sj + sf) / 2:.1f} ({seeded})" if method.startswith("auto") else
                         f"{100 * (sj + sf) / 2:.1f}")
            jf.append((sj + sf) / 2)
            j.append(sj)
            f.append(sf)
            stab.append(ss)
            seeds.append(seeded)
            frames += len(images)
            seconds += spent
        row = (f"{method:<12}" + "".join(f"{c:>16}" for c in cells) + f"{100 * np.mean(jf):8.1f}"
               f"{100 * np.mean(j):7.1f}{100 * np.mean(f):7.1f}{np.mean(stab):7.3f}{frames / seconds:7.2f}")
        lines.append(row)
        print(row, flush=True)
    print(f"\nDAVIS-2016 {', '.join(clips)} at {args.size}p, {args.threads} torch thread(s); per-clip J&F "
          f"(seeds and re-seeds in brackets for auto); auto options {overrides or 'defaults'}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
