"""Unsupervised VOS evaluation (TMO): datasets without a first mask, the runner, and the scoring.

Layouts (sequence names may hold one `/`, e.g. YouTube-Objects `<class>/<video>`):
* D16: DAVIS 2016 ``JPEGImages/480p/<seq>``, ``Annotations/480p/<seq>``; ``ImageSets/2016/val.txt`` if any.
* FBMS: the FBMS-59 release (``Testset/<seq>/*.jpg``, ``Testset/<seq>/GroundTruth/<frame>_gt.pgm|ppm|png``)
  or the converted ``JPEGImages/<seq>`` + ``Annotations/<seq>`` layout; annotations are sparse.
* YTO: YouTube-Objects ``JPEGImages/<class>/<video>`` + ``Annotations/<class>/<video>`` (sparse), or flat.
* LV: Long-Videos ``JPEGImages/<seq>`` + ``Annotations/<seq>`` (or under ``long_video_set``).
* generic: ``JPEGImages/<seq>``, annotations optional (needed only for scoring).
Annotations are binary: any non-zero pixel is foreground (TMO segments the primary object(s) as one).
Scoring runs over every annotated frame: J&F (DAVIS definitions) for D16, LV and generic; mean IoU (J)
for FBMS and YouTube-Objects, as TMO reports them. YouTube-Objects' summary J is the mean over classes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from streamer.masks import read_index_mask, write_index_mask
from workers.evaluation.datasets import (
    FRAME_SUFFIXES,
    DatasetLayoutError,
    DatasetName,
    frame_files,
    subfolders,
)
from workers.evaluation.metrics import boundary_f_measure, disk, region_similarity, tolerance_radius


class FrameSegmenter(Protocol):
    """A per-video session of a mask-free method: TMOSession, or auto mode's AutoSession. Its `step`
    returns an object with `index_mask` (uint8 (H, W)) and `used_flow` (bool)."""

    def step(self, frame: np.ndarray) -> Any: ...

UNSUPERVISED_DATASETS = (DatasetName.D16, DatasetName.FBMS, DatasetName.YTO, DatasetName.LV,
                         DatasetName.generic)
IOU_ONLY = (DatasetName.FBMS, DatasetName.YTO)
"""Datasets TMO scores by mean IoU alone."""
MASK_SUFFIXES = (".png", ".pgm", ".ppm", ".bmp")
REPORT_FILE = "eval_report.json"


@dataclass(frozen=True)
class UnsupervisedSequence:
    """One video: frames in order and the annotation file of each annotated frame (by frame index)."""

    name: str
    frames: tuple[Path, ...]
    annotations: dict[int, Path]


def find_annotation(folder: Path, stem: str) -> Path | None:
    """``<stem>.<ext>`` or FBMS's ``<stem>_gt.<ext>`` in `folder`."""
    for name in (stem, f"{stem}_gt"):
        for suffix in MASK_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None


def make_sequence(name: str, frame_dir: Path, mask_dir: Path | None) -> UnsupervisedSequence:
    frames = frame_files(frame_dir)
    if not frames:
        raise DatasetLayoutError(f"no frames in {frame_dir}")
    annotations = {}
    if mask_dir is not None and mask_dir.is_dir():
        for index, frame in enumerate(frames):
            found = find_annotation(mask_dir, frame.stem)
            if found is not None:
                annotations[index] = found
    return UnsupervisedSequence(name, frames, annotations)


def holds_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in FRAME_SUFFIXES for p in folder.iterdir())


def nested_sequences(image_root: Path, mask_root: Path) -> list[UnsupervisedSequence]:
    """Sequence folders one or two levels below `image_root` (two: `<group>/<video>`)."""
    sequences = []
    for top in subfolders(image_root):
        if holds_frames(image_root / top):
            sequences.append(make_sequence(top, image_root / top, mask_root / top))
            continue
        for video in subfolders(image_root / top):
            name = f"{top}/{video}"
            sequences.append(make_sequence(name, image_root / name, mask_root / name))
    return sequences


def load_unsupervised(name: DatasetName | str, root: str | Path) -> tuple[UnsupervisedSequence, ...]:
    """The sequences of dataset `name` under `root`, with errors that say which folder is missing."""
    name, root = DatasetName(name), Path(root)
    if name not in UNSUPERVISED_DATASETS:
        raise DatasetLayoutError(f"--method tmo reads {', '.join(d.value for d in UNSUPERVISED_DATASETS)}; "
                                 f"got {name.value}")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder not found: {root}")
    if name is DatasetName.D16:
        image_root, mask_root = root / "JPEGImages" / "480p", root / "Annotations" / "480p"
        imageset = root / "ImageSets" / "2016" / "val.txt"
        if not image_root.is_dir():
            raise DatasetLayoutError(f"{root} is not a DAVIS folder: {image_root} is missing")
        names = ([line.strip() for line in imageset.read_text().splitlines() if line.strip()]
                 if imageset.is_file() else subfolders(image_root))
        sequences = [make_sequence(seq, image_root / seq, mask_root / seq) for seq in names]
    elif name is DatasetName.FBMS and (root / "Testset").is_dir():
        test = root / "Testset"
        sequences = [make_sequence(seq, test / seq, test / seq / "GroundTruth") for seq in subfolders(test)]
    else:
        if name is DatasetName.LV and (root / "long_video_set").is_dir():
            root = root / "long_video_set"
        image_root = root / "JPEGImages"
        if not image_root.is_dir():
            raise DatasetLayoutError(f"{root} needs JPEGImages/<sequence> and Annotations/<sequence> folders")
        sequences = nested_sequences(image_root, root / "Annotations")
    if not sequences:
        raise DatasetLayoutError(f"no sequences found under {root}")
    return tuple(sequences)


def read_frame(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_binary(path: Path) -> np.ndarray:
    """Any non-zero value (in any channel) is foreground."""
    with Image.open(path) as image:
        values = np.asarray(image)
    return np.asarray(values.reshape(*values.shape[:2], -1).any(axis=-1))


@dataclass(frozen=True)
class RunReport:
    sequences: int
    frames: int
    seconds: float
    flow_frames: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run_unsupervised(session_factory: Callable[[], FrameSegmenter],
                     sequences: tuple[UnsupervisedSequence, ...], output: str | Path) -> RunReport:
    """Segment every frame of every sequence with a fresh session each; masks go to ``<output>/<seq>/``.

    `session_factory()` returns a new TMOSession or AutoSession (one per video: flow and memory never
    cross from one video to the next). Multi-object masks are written as they are; scoring binarises them.
    """
    output = Path(output)
    frames = flow_frames = 0
    seconds = 0.0
    for sequence in sequences:
        session = session_factory()
        folder = output / sequence.name
        folder.mkdir(parents=True, exist_ok=True)
        for path in sequence.frames:
            frame = read_frame(path)
            start = time.perf_counter()
            result = session.step(frame)
            seconds += time.perf_counter() - start
            write_index_mask(folder / f"{path.stem}.png", result.index_mask)
            frames += 1
            flow_frames += int(result.used_flow)
    report = RunReport(len(sequences), frames, seconds, flow_frames)
    (output / REPORT_FILE).write_text(json.dumps({"sequences": report.sequences, "frames": report.frames,
                                                  "fps": report.fps, "flow_frames": flow_frames}, indent=2))
    return report


@dataclass(frozen=True)
class SequenceScore:
    """Mean J and F of one sequence over its annotated frames (F is None when only IoU is scored)."""

    name: str
    j: float
    f: float | None
    frames: int


@dataclass(frozen=True)
class UnsupervisedScores:
    """Per-sequence scores and the dataset means; `j` is over classes when sequences are `<class>/<video>`."""

    sequences: list[SequenceScore]
    j: float
    f: float | None

    @property
    def jf(self) -> float | None:
        return None if self.f is None else (self.j + self.f) / 2


def score_sequence(sequence: UnsupervisedSequence, pred_dir: Path, *, boundary: bool) -> SequenceScore | None:
    """J (and F) over the annotated frames; None for a sequence without annotations."""
    if not sequence.annotations:
        return None
    js, fs = [], []
    for index, gt_path in sorted(sequence.annotations.items()):
        pred_path = pred_dir / f"{sequence.frames[index].stem}.png"
        if not pred_path.is_file():
            raise FileNotFoundError(f"missing prediction {pred_path} for ground truth {gt_path}")
        gt, pred = read_binary(gt_path), read_index_mask(pred_path) > 0
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred_path} is {pred.shape}, its ground truth {gt.shape}")
        js.append(region_similarity(pred, gt))
        if boundary:
            fs.append(boundary_f_measure(pred, gt, disk(tolerance_radius(gt.shape))))
    return SequenceScore(sequence.name, float(np.mean(js)), float(np.mean(fs)) if boundary else None, len(js))


def score_unsupervised(name: DatasetName | str, root: str | Path,
                       pred_root: str | Path) -> UnsupervisedScores:
    """Score the predictions in ``<pred_root>/<seq>/<frame>.png`` against dataset `name` at `root`."""
    name, pred_root = DatasetName(name), Path(pred_root)
    boundary = name not in IOU_ONLY
    scores = [s for seq in load_unsupervised(name, root)
              if (s := score_sequence(seq, pred_root / seq.name, boundary=boundary)) is not None]
    if not scores:
        raise ValueError(f"no annotated frames in {root}")
    groups: dict[str, list[float]] = {}
    for score in scores:
        groups.setdefault(score.name.split("/")[0] if "/" in score.name else score.name, []).append(score.j)
    j = float(np.mean([np.mean(values) for values in groups.values()]))
    f = float(np.mean([s.f for s in scores])) if boundary else None
    return UnsupervisedScores(scores, j, f)
